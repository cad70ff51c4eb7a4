rule normalize:
    input:
        f"{OUT}/data/imported.h5ad",
    output:
        f"{OUT}/data/normalized.h5ad",
    log:
        f"{LOGS}/normalize.log",
    params:
        steps=config["normalize"]["steps"],
    threads: res("normalize", "threads")
    resources:
        mem_mb=res("normalize", "mem_mb"),
        runtime=res("normalize", "runtime"),
    conda:
        "../envs/omixed.yaml"
    shell:
        "omixed normalize {input:q} --steps {params.steps:q} -o {output:q} 2> {log:q}"
