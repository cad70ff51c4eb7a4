# Scatter the features over `chunks` jobs and gather the fits: the engine is chunk-invariant,
# so the merged fit equals one fit of all features.


rule split:
    input:
        "results/data/normalized.h5ad",
    output:
        temp(expand("results/chunks/{chunk}.h5ad", chunk=chunk_ids())),
    log:
        "logs/split.log",
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
        "results/chunks/{chunk}.h5ad",
    output:
        temp("results/fit/{chunk}.h5ad"),
    log:
        "logs/fit/{chunk}.log",
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
        data="results/data/normalized.h5ad",
        chunks=expand("results/fit/{chunk}.h5ad", chunk=chunk_ids()),
    output:
        "results/fit/fitted.h5ad",
    log:
        "logs/merge.log",
    threads: res("merge", "threads")
    resources:
        mem_mb=res("merge", "mem_mb"),
        runtime=res("merge", "runtime"),
    conda:
        "../envs/omixed.yaml"
    shell:
        "omixed merge --data {input.data} {input.chunks} -o {output} 2> {log}"
