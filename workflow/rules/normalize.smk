rule normalize:
    input:
        "results/data/imported.h5ad",
    output:
        "results/data/normalized.h5ad",
    log:
        "logs/normalize.log",
    params:
        steps=config["normalize"]["steps"],
    threads: res("normalize", "threads")
    resources:
        mem_mb=res("normalize", "mem_mb"),
        runtime=res("normalize", "runtime"),
    conda:
        "../envs/omixed.yaml"
    shell:
        "omixed normalize {input} --steps {params.steps} -o {output} 2> {log}"
