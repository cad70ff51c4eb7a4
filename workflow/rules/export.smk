if PROTEINS:
    pass  # summarize removed the terms: its proteins carry the corrected layer

elif config["mode"] == "fit":

    rule correct:
        input:
            f"{OUT}/fit/fitted.h5ad",
        output:
            f"{OUT}/fit/corrected.h5ad",
        log:
            f"{LOGS}/correct.log",
        params:
            terms=config["model"]["remove"],
            method=config["model"]["method"],
        threads: res("correct", "threads")
        resources:
            mem_mb=res("correct", "mem_mb"),
            runtime=res("correct", "runtime"),
        conda:
            "../envs/omixed.yaml"
        shell:
            "omixed correct {input:q} --remove {params.terms:q} --method {params.method:q}"
            " -o {output:q} 2> {log:q}"

else:  # transform: correct the new samples with a saved fit, no refit

    rule transform:
        input:
            data=f"{OUT}/data/normalized.h5ad",
            reference=config["reference"],
        output:
            f"{OUT}/fit/corrected.h5ad",
        log:
            f"{LOGS}/transform.log",
        params:
            terms=config["model"]["remove"],
        threads: res("correct", "threads")
        resources:
            mem_mb=res("correct", "mem_mb"),
            runtime=res("correct", "runtime"),
        conda:
            "../envs/omixed.yaml"
        shell:
            "omixed transform {input.data:q} --reference {input.reference:q}"
            " --remove {params.terms:q} -o {output:q} 2> {log:q}"


rule export:
    input:
        fitted(),
    output:
        h5ad=f"{OUT}/corrected.h5ad",
        corrected=f"{OUT}/corrected.tsv",
        fit=f"{OUT}/fit.tsv",
        varpart=f"{OUT}/variance_partition.tsv",
        # provenance of each table (omixed_run of the h5ad), written beside it by `omixed export`
        provenance=[f"{OUT}/{name}.tsv.json" for name in ("corrected", "fit", "variance_partition")],
    log:
        f"{LOGS}/export.log",
    threads: res("export", "threads")
    resources:
        mem_mb=res("export", "mem_mb"),
        runtime=res("export", "runtime"),
    conda:
        "../envs/omixed.yaml"
    shell:
        "omixed export {input:q} --h5ad {output.h5ad:q} --corrected-tsv {output.corrected:q}"
        " --fit-tsv {output.fit:q} --varpart-tsv {output.varpart:q} 2> {log:q}"
