rule plot:
    input:
        f"{OUT}/corrected.h5ad",
    output:
        varpart=report(
            f"{OUT}/plots/variance_partition.png",
            caption="../report/variance_partition.rst",
            category="Batch correction",
        ),
        pca=report(
            f"{OUT}/plots/pca.png",
            caption="../report/pca.rst",
            category="Batch correction",
        ),
    log:
        f"{LOGS}/plot.log",
    threads: res("plot", "threads")
    resources:
        mem_mb=res("plot", "mem_mb"),
        runtime=res("plot", "runtime"),
    conda:
        "../envs/omixed.yaml"
    shell:
        "omixed plot {input:q} --varpart {output.varpart:q} --pca {output.pca:q} 2> {log:q}"
