# Configuration and sample-sheet validation, and the input functions of the other rules.
# Everything here runs while Snakemake reads the workflow, so a bad configuration stops the run
# before any job starts.

import inspect
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pandas as pd
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

SCHEMAS = Path(workflow.current_basedir).parent / "schemas"  # also when included elsewhere
TYPES = {"integer": "a whole number", "string": "text", "object": "keys with values",
         "array": "a list", "boolean": "true or false", "number": "a number"}


def _problem(error):
    """One line for a schema violation: the key, its value and what is allowed."""
    key = ".".join(map(str, error.absolute_path))
    kind, rule, value = error.validator, error.validator_value, error.instance
    if kind == "additionalProperties":
        known = list(error.schema.get("properties", {}))
        unknown = sorted(set(value) - set(known))[0]
        return f"unknown key {f'{key}.' if key else ''}{unknown} (allowed: {', '.join(known)})"
    if kind == "required":
        missing = [name for name in rule if name not in value]
        return f"{', '.join(missing)} missing{f' in {key}' if key else ''} (required)"
    allowed = {
        "enum": lambda: "one of " + ", ".join(map(str, rule)),
        "type": lambda: (
            "keys " + ", ".join(error.schema["properties"])
            if rule == "object" and "properties" in error.schema
            else TYPES.get(rule, rule)
        ),
        "minimum": lambda: f"a number ≥ {rule}",
        "minLength": lambda: "non-empty text",
        "minItems": lambda: f"a list of at least {rule} item(s)",
        "pattern": lambda: f"text matching {rule!r}",
    }.get(kind, lambda: error.message)()
    return f"{key} is {json.dumps(value, default=str)}; allowed: {allowed}"


def _check(instance, schema_file, where):
    """Validate against a schema; the first problem stops the run as one line."""
    schema = yaml.safe_load((SCHEMAS / schema_file).read_text())
    errors = jsonschema.Draft202012Validator(schema).iter_errors(instance)
    error = jsonschema.exceptions.best_match(errors)
    if error is not None:
        raise WorkflowError(f"{where}: {_problem(error)}")


_check(config, "config.schema.yaml", "config")
validate(config, schema="../schemas/config.schema.yaml")  # fills in the defaults
config["chunks"] = int(config["chunks"])  # JSON Schema counts 2.0 as a whole number; so do we
OUT = config["output_dir"].rstrip("/")
LOGS = f"{OUT}/logs"

# Imported after the schema check, which then fails without waiting for the package to load.
import omixed

PROTEINS = config["proteins"]["enabled"]
if PROTEINS and config["mode"] == "transform":
    raise WorkflowError("config: mode transform corrects gene-level fits; set proteins.enabled: false")


def _reader_options():
    """Check input.options against the reader's keyword arguments (typos fail here, not in a job)."""
    kind, options = config["input"]["type"], config["input"]["options"]
    if kind in ("example", "example_peptides", "h5ad"):
        if options:
            raise WorkflowError(f"config: input.options must be empty for input type {kind!r}")
        return
    if kind == "auto":
        try:
            name, reader = omixed.io.reader_for(config["input"]["path"])
        except ValueError as err:
            raise WorkflowError(f"config: input.path: {err}")
    else:
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
    kind, sheet = config["input"]["type"], config["samples"]["path"]
    if sheet:
        _require_file(sheet, "samples.path")
        sep = "," if Path(sheet).suffix.lower() == ".csv" else "\t"
        table = pd.read_csv(sheet, sep=sep, dtype={"sample": str})
        for row, record in enumerate(table.to_dict("records"), start=2):
            present = {k: v for k, v in record.items() if not pd.isna(v)}
            _check(present, "samples.schema.yaml", f"{sheet}, line {row}")
        return table
    if kind == "example":
        return omixed.datasets.example().obs
    if kind == "example_peptides":
        return omixed.datasets.example_peptides().obs
    if kind == "h5ad":
        import anndata

        return anndata.read_h5ad(config["input"]["path"], backed="r").obs.copy()
    raise WorkflowError(f"config: input type {kind!r} needs a sample sheet (samples.path: path/to/samples.tsv)")


def _check_model(samples):
    """The model on the sample sheet, the removal and the contrasts, checked by the library."""
    if PROTEINS:
        proteins = config["proteins"]
        import anndata

        formula = proteins["formula"] or omixed.tl.protein_formula(anndata.AnnData(obs=samples))
        where = "proteins.formula"
        try:
            fixed = omixed.lmm.parse_formula(formula).fixed
            spec = omixed.lmm.build_spec(samples, f"~ {fixed}").specification
        except (ValueError, KeyError) as err:
            raise WorkflowError(f"config: {where} {formula!r} does not fit the sample sheet: {err}")
    else:
        model, where = config["model"], "model.formula"
        try:
            spec = omixed.lmm.build_spec(samples, model["formula"]).specification
        except (ValueError, KeyError) as err:
            raise WorkflowError(f"config: {where} {model['formula']!r} does not fit the sample sheet: {err}")
        try:
            omixed.lmm.check_removal(spec, model["remove"], method=model["method"])
        except ValueError as err:
            raise WorkflowError(f"config: model.remove / model.method: {err}")
    for name, expression in config["contrasts"].items():
        try:
            omixed.lmm.contrast_vector(expression, spec.fixed_names)
        except (ValueError, KeyError) as err:
            message = err.args[0] if isinstance(err, KeyError) else err
            raise WorkflowError(f"config: contrasts.{name}: {message}")


def _check_inputs_outside_outputs():
    """An input or reference inside output_dir could be rewritten by the run: refused."""
    out = Path(OUT).resolve()
    for option, path in (("input.path", config["input"]["path"]), ("reference", config["reference"])):
        if path and (Path(path).resolve() == out or out in Path(path).resolve().parents):
            raise WorkflowError(
                f"config: {option} {path!r} is inside output_dir {OUT!r}, which this run writes; "
                "copy it out of there or set output_dir to another folder"
            )


def _require_file(path, option):
    if not Path(path).is_file():
        raise WorkflowError(f"config: {option} {path!r} is not a file")


if config["input"]["type"] != "example":
    _require_file(config["input"]["path"], "input.path")
if config["mode"] == "transform":
    _require_file(config["reference"], "reference (transform mode)")
_check_inputs_outside_outputs()
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
    if config["samples"]["path"]:
        files["samples"] = config["samples"]["path"]
    return files


def import_args(wildcards, input):
    """Arguments of `omixed import` after the input type."""
    args = [input.data] if "data" in input.keys() else []
    if "samples" in input.keys():
        args += ["--samples", input.samples, "--how", config["samples"]["how"]]
    return shlex.join(args)


def summarize_args(wildcards):
    """Arguments of `omixed summarize` from the proteins section."""
    proteins = config["proteins"]
    args = ["--protein-key", proteins["protein_key"], "--min-peptides", str(proteins["min_peptides"])]
    if proteins["formula"]:
        args += ["--formula", proteins["formula"]]
    if proteins["remove"] is not None:
        args += ["--remove", *proteins["remove"]]
    if proteins["robust"]:
        args.append("--robust")
    if not config["model"]["reml"]:
        args.append("--ml")
    return shlex.join(args)


def test_input(wildcards):
    files = {"fitted": fitted()}
    if PROTEINS:
        files["peptides"] = f"{OUT}/data/normalized.h5ad"
    return files


def test_args(wildcards, input):
    """Arguments of `omixed test` from the de section."""
    de = config["de"]
    args = ["--method", de["method"]]
    args += [f"--{flag}" for flag in ("moderate", "robust") if de[flag]]
    if PROTEINS:
        args += ["--peptides", input.peptides]
        if de["hurdle"]:
            args.append("--hurdle")
    return shlex.join(args)


def fitted():
    """The fitted (and corrected) h5ad the tables and tests are made from."""
    return f"{OUT}/fit/proteins.h5ad" if PROTEINS else f"{OUT}/fit/corrected.h5ad"


def final_outputs():
    tables = [f"{OUT}/{name}.tsv" for name in ("corrected", "fit", "variance_partition")]
    tests = [f"{OUT}/de/{name}.tsv" for name in config["contrasts"]]
    return [
        f"{OUT}/corrected.h5ad",
        *tables,
        *tests,
        *(f"{table}.json" for table in [*tables, *tests]),
        f"{OUT}/plots/variance_partition.png",
        f"{OUT}/plots/pca.png",
        *(f"{OUT}/plots/volcano_{name}.png" for name in config["contrasts"]),
    ]


def remove_outdated_outputs():
    """Delete, before any job starts, every output this run will make again, chunk files of
    another chunk count and the temporary files of killed jobs: after a failed or interrupted
    run, what is left is current."""
    if workflow.touch:
        return
    for job in workflow.dag.needrun_jobs():
        for path in job.output:
            Path(path).unlink(missing_ok=True)
    for path in Path(OUT).rglob(".*.tmp"):  # omixed writes each file as .<name>.<random>.tmp
        path.unlink()
    current = set(chunk_ids())
    for path in [*Path(OUT).glob("chunks/*-of-*.*"), *Path(OUT).glob("fit/*-of-*.*")]:
        chunk = re.match(r"\d+-of-\d+", path.name)
        if chunk and chunk.group() not in current:
            path.unlink()
