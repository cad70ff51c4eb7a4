# Configuration and sample-sheet validation, and the input functions of the other rules.
# Everything here runs while Snakemake reads the workflow, so a bad configuration stops the run
# before any job starts.

import inspect
import json
import shlex
from pathlib import Path

import pandas as pd
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

# Imported after the schema check, which then fails without waiting for the package to load.
import omixed

if config["proteins"]["enabled"]:
    raise WorkflowError(
        "config: proteins.enabled is true, but protein summarization "
        "(omixed.tl.summarize_proteins) is not wired into the workflow yet; set it to false"
    )


def _reader_options():
    """Check input.options against the reader's keyword arguments (typos fail here, not in a job)."""
    kind, options = config["input"]["type"], config["input"]["options"]
    if kind in ("example", "h5ad"):
        if options:
            raise WorkflowError(f"config: input.options must be empty for input type {kind!r}")
        return
    reader = getattr(omixed.io, f"read_{kind}")
    known = list(inspect.signature(reader).parameters)[1:]  # all but the file
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise WorkflowError(
            f"config: input.options {unknown} are not options of omixed.io.read_{kind} "
            f"(available: {', '.join(known)})"
        )


def _sample_table():
    """The sample annotations the model will see: the sheet, or the obs of example/h5ad input."""
    kind, sheet = config["input"]["type"], config["samples"]
    if sheet:
        _require_file(sheet, "samples")
        sep = "," if Path(sheet).suffix.lower() == ".csv" else "\t"
        table = pd.read_csv(sheet, sep=sep, dtype={"sample": str})
        validate(table, schema="../schemas/samples.schema.yaml")
        return table
    if kind == "example":
        return omixed.datasets.example().obs
    if kind == "h5ad":
        import anndata

        return anndata.read_h5ad(config["input"]["path"], backed="r").obs.copy()
    raise WorkflowError(f"config: input type {kind!r} needs a sample sheet (samples: path/to/samples.tsv)")


def _check_model(samples):
    """The model on the sample sheet and the removal, checked by the library itself."""
    model = config["model"]
    try:
        spec = omixed.lmm.build_spec(samples, model["formula"]).specification
    except (ValueError, KeyError) as err:
        raise WorkflowError(f"config: model.formula {model['formula']!r} does not fit the sample sheet: {err}")
    try:
        omixed.lmm.check_removal(spec, model["remove"], method=model["method"])
    except ValueError as err:
        raise WorkflowError(f"config: model.remove / model.method: {err}")


def _require_file(path, option):
    if not Path(path).is_file():
        raise WorkflowError(f"config: {option} {path!r} is not a file")


if config["input"]["type"] != "example":
    _require_file(config["input"]["path"], "input.path")
if config["mode"] == "transform":
    _require_file(config["reference"], "reference (transform mode)")
_reader_options()
_check_model(_sample_table())


def res(rule, key):
    """Resource ``key`` of ``rule``: its own entry in config resources, else the default."""
    own = config["resources"].get(rule) or {}
    return own.get(key, config["resources"]["default"][key])


def chunk_ids():
    """Chunk names carry the chunk count, so changing `chunks` never reuses an old split."""
    n = config["chunks"]
    return [f"{i}-of-{n}" for i in range(1, n + 1)]


def import_input(wildcards):
    files = {}
    if config["input"]["type"] != "example":
        files["data"] = config["input"]["path"]
    if config["samples"]:
        files["samples"] = config["samples"]
    return files


def import_args(wildcards, input):
    """Arguments of `omixed import` after the input type."""
    args = [input.data] if "data" in input.keys() else []
    if "samples" in input.keys():
        args += ["--samples", input.samples]
    return shlex.join(args)


def final_outputs():
    return [
        "results/corrected.h5ad",
        "results/corrected.tsv",
        "results/fit.tsv",
        "results/variance_partition.tsv",
        "results/plots/variance_partition.png",
        "results/plots/pca.png",
    ]
