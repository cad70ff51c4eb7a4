if config["mode"] == "fit":

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
            "omixed correct {input} --remove {params.terms:q} --method {params.method}"
            " -o {output} 2> {log}"

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
            "omixed transform {input.data} --reference {input.reference}"
            " --remove {params.terms:q} -o {output} 2> {log}"


rule export:
    input:
        f"{OUT}/fit/corrected.h5ad",
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
        "omixed export {input} --h5ad {output.h5ad} --corrected-tsv {output.corrected}"
        " --fit-tsv {output.fit} --varpart-tsv {output.varpart} 2> {log}"
