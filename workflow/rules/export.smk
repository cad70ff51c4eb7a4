if config["mode"] == "fit":

    rule correct:
        input:
            "results/fit/fitted.h5ad",
        output:
            "results/fit/corrected.h5ad",
        log:
            "logs/correct.log",
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
            data="results/data/normalized.h5ad",
            reference=config["reference"],
        output:
            "results/fit/corrected.h5ad",
        log:
            "logs/transform.log",
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
        "results/fit/corrected.h5ad",
    output:
        h5ad="results/corrected.h5ad",
        corrected="results/corrected.tsv",
        fit="results/fit.tsv",
        varpart="results/variance_partition.tsv",
    log:
        "logs/export.log",
    threads: res("export", "threads")
    resources:
        mem_mb=res("export", "mem_mb"),
        runtime=res("export", "runtime"),
    conda:
        "../envs/omixed.yaml"
    shell:
        "omixed export {input} --h5ad {output.h5ad} --corrected-tsv {output.corrected}"
        " --fit-tsv {output.fit} --varpart-tsv {output.varpart} 2> {log}"
