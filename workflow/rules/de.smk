# One differential test per entry of `contrasts`: a table sorted by p-value and a volcano plot,
# both in the report.  Protein fits are tested with their peptides (and the detection test).


rule test:
    input:
        unpack(test_input),
    output:
        table=report(
            f"{OUT}/de/{{contrast}}.tsv",
            caption="../report/de_table.rst",
            category="Differential tests",
            subcategory="{contrast}",
        ),
        provenance=f"{OUT}/de/{{contrast}}.tsv.json",
        volcano=report(
            f"{OUT}/plots/volcano_{{contrast}}.png",
            caption="../report/volcano.rst",
            category="Differential tests",
            subcategory="{contrast}",
        ),
    log:
        f"{LOGS}/de/{{contrast}}.log",
    params:
        contrast=lambda wildcards: config["contrasts"][wildcards.contrast],
        args=test_args,
    threads: res("test", "threads")
    resources:
        mem_mb=res("test", "mem_mb"),
        runtime=res("test", "runtime"),
    conda:
        "../envs/omixed.yaml"
    shell:
        "omixed test {input.fitted:q} --contrast {params.contrast:q} {params.args}"
        " --table {output.table:q} --volcano {output.volcano:q} 2> {log:q}"
