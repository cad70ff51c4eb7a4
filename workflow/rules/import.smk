rule import_data:
    input:
        unpack(import_input),
    output:
        f"{OUT}/data/imported.h5ad",
    log:
        f"{LOGS}/import.log",
    params:
        type=config["input"]["type"],
        args=import_args,
        options=json.dumps(config["input"]["options"], sort_keys=True),
    threads: res("import", "threads")
    resources:
        mem_mb=res("import", "mem_mb"),
        runtime=res("import", "runtime"),
    conda:
        "../envs/omixed.yaml"
    shell:
        "omixed import {params.type:q} {params.args} --options {params.options:q} -o {output:q}"
        " 2> {log:q}"
