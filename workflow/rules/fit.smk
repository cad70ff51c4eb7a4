# Scatter the features over `chunks` jobs and gather the fits: the engine is chunk-invariant,
# so the merged fit equals one fit of all features.  Chunk files are temporary: once merged they
# are removed, and files of another chunk count are removed when a run starts (common.smk).


rule split:
    input:
        f"{OUT}/data/normalized.h5ad",
    output:
        temp(expand(f"{OUT}/chunks/{{chunk}}.h5ad", chunk=chunk_ids())),
    log:
        f"{LOGS}/split.log",
    threads: res("split", "threads")
    resources:
        mem_mb=res("split", "mem_mb"),
        runtime=res("split", "runtime"),
    conda:
        "../envs/omixed.yaml"
    shell:
        "omixed split {input} -o {output} 2> {log}"


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
        "omixed fit {input} --formula {params.formula:q} {params.method} --threads {threads}"
        " -o {output} 2> {log}"


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
        "omixed merge --data {input.data} {input.chunks} -o {output} 2> {log}"
