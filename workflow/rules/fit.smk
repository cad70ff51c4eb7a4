# Scatter the features over `chunks` jobs and gather the fits: the engine is chunk-invariant,
# so the merged fit equals one fit of all features.  With proteins.enabled the chunks hold whole
# proteins (all their peptides) and each job summarises its proteins with one peptide-level
# model per protein.  Chunk files are temporary: once merged they are removed, and files of
# another chunk count are removed when a run starts (common.smk).


rule split:
    input:
        f"{OUT}/data/normalized.h5ad",
    output:
        temp(expand(f"{OUT}/chunks/{{chunk}}.h5ad", chunk=chunk_ids())),
    log:
        f"{LOGS}/split.log",
    params:
        by=f"--by {shlex.quote(config['proteins']['protein_key'])}" if PROTEINS else "",
    threads: res("split", "threads")
    resources:
        mem_mb=res("split", "mem_mb"),
        runtime=res("split", "runtime"),
    conda:
        "../envs/omixed.yaml"
    shell:
        "omixed split {input:q} {params.by} -o {output:q} 2> {log:q}"


if PROTEINS:

    rule summarize:
        input:
            f"{OUT}/chunks/{{chunk}}.h5ad",
        output:
            temp(f"{OUT}/fit/{{chunk}}.h5ad"),  # merged into fit/proteins.h5ad, then removed
        log:
            f"{LOGS}/fit/{{chunk}}.log",
        params:
            args=summarize_args,
        threads: res("summarize", "threads")
        resources:
            mem_mb=res("summarize", "mem_mb"),
            runtime=res("summarize", "runtime"),
        conda:
            "../envs/omixed.yaml"
        shell:
            "omixed summarize {input:q} {params.args} --threads {threads} -o {output:q} 2> {log:q}"

    rule merge:
        input:
            chunks=expand(f"{OUT}/fit/{{chunk}}.h5ad", chunk=chunk_ids()),
        output:
            f"{OUT}/fit/proteins.h5ad",
        log:
            f"{LOGS}/merge.log",
        threads: res("merge", "threads")
        resources:
            mem_mb=res("merge", "mem_mb"),
            runtime=res("merge", "runtime"),
        conda:
            "../envs/omixed.yaml"
        shell:
            "omixed merge {input.chunks:q} -o {output:q} 2> {log:q}"

else:

    rule fit:
        input:
            f"{OUT}/chunks/{{chunk}}.h5ad",
        output:
            temp(f"{OUT}/fit/{{chunk}}.h5ad"),  # merged into fit/fitted.h5ad, then removed
        log:
            f"{LOGS}/fit/{{chunk}}.log",
        params:
            formula=config["model"]["formula"],
            method="" if config["model"]["reml"] else "--ml",
        threads: res("fit", "threads")
        resources:
            mem_mb=res("fit", "mem_mb"),
            runtime=res("fit", "runtime"),
        conda:
            "../envs/omixed.yaml"
        shell:
            "omixed fit {input:q} --formula {params.formula:q} {params.method} --threads {threads}"
            " -o {output:q} 2> {log:q}"

    rule merge:
        input:
            data=f"{OUT}/data/normalized.h5ad",
            chunks=expand(f"{OUT}/fit/{{chunk}}.h5ad", chunk=chunk_ids()),
        output:
            f"{OUT}/fit/fitted.h5ad",
        log:
            f"{LOGS}/merge.log",
        threads: res("merge", "threads")
        resources:
            mem_mb=res("merge", "mem_mb"),
            runtime=res("merge", "runtime"),
        conda:
            "../envs/omixed.yaml"
        shell:
            "omixed merge --data {input.data:q} {input.chunks:q} -o {output:q} 2> {log:q}"
