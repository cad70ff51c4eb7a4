"""The Snakemake workflow, run for real (local executor, 2 cores) in copies of the repository.

One run on the bundled example is killed once its first fit job has finished and then resumed;
its results are compared with the package API; copies of it are re-run with 3 chunks, with a
broken input and with a sample sheet that lacks a sample.  Commands that only read the workflow
(lint, dry runs, bad configurations) run side by side.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import (
    REPO,
    SNAKEMAKE_TIMEOUT,
    check,
    finish,
    make_project,
    snakemake,
    start,
    write_config,
)

import omixed

pytestmark = pytest.mark.workflow

TABLES = ["results/corrected.tsv", "results/fit.tsv", "results/variance_partition.tsv"]
FINAL = [
    "results/corrected.h5ad",
    *TABLES,
    *(f"{table}.json" for table in TABLES),  # each table's provenance
    "results/plots/variance_partition.png",
    "results/plots/pca.png",
    # the default config's contrast: its table, provenance and volcano plot
    "results/de/treated.tsv",
    "results/de/treated.tsv.json",
    "results/plots/volcano_treated.png",
]
LOGS = {
    "import.log", "normalize.log", "split.log", "merge.log", "correct.log", "export.log",
    "plot.log", "de/treated.log", *(f"fit/{i}-of-4.log" for i in range(1, 5)),
}  # fmt: skip


def job_counts(dry_run_output: str) -> dict[str, int]:
    """The ``Job stats`` table of a dry run: rule -> number of jobs."""
    table = dry_run_output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A default run, killed (SIGKILL, with its jobs) after the first fit job, then resumed."""
    project = make_project(tmp_path_factory.mktemp("run4"))
    proc = start(project)
    deadline = time.monotonic() + SNAKEMAKE_TIMEOUT
    while not list((project / "results/fit").glob("*-of-*.h5ad")):
        assert proc.poll() is None, (
            f"the run ended before any fit job finished:\n{proc.stdout.read()}"
        )
        assert time.monotonic() < deadline, "no fit job finished in time"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (project / "results/corrected.h5ad").exists()
    # a killed Snakemake leaves its lock behind; --unlock is the documented way to clear it
    check(snakemake(project, "--unlock"))
    check(snakemake(project))
    return project


@pytest.fixture(scope="module")
def reference(finished: Path) -> ad.AnnData:
    """The package API on the workflow's own normalized data."""
    adata = ad.read_h5ad(finished / "results/data/normalized.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        omixed.tl.fit(adata, "~ condition + (1|batch) + (1|donor)", progress=False)
    omixed.tl.correct(adata, remove=["batch"])
    omixed.tl.variance_partition(adata)
    return adata


def test_resumed_run_equals_package_api(
    finished: Path, reference: ad.AnnData, tmp_path: Path
) -> None:
    # import + normalize: the example data with equalized sample medians
    expected = omixed.datasets.example()
    omixed.pp.median_center(expected)
    np.testing.assert_array_equal(reference.X, expected.X)

    result = ad.read_h5ad(finished / "results/corrected.h5ad")
    np.testing.assert_array_equal(result.layers["corrected"], reference.layers["corrected"])
    for key in reference.varm:
        pd.testing.assert_frame_equal(result.varm[key], reference.varm[key])
    reference.write_h5ad(tmp_path / "reference.h5ad")  # text columns become categoricals
    pd.testing.assert_frame_equal(result.var, ad.read_h5ad(tmp_path / "reference.h5ad").var)
    assert result.uns["lmm"]["n_converged"] == reference.uns["lmm"]["n_converged"]
    assert set(result.uns["omixed_run"]) == {
        "import", "normalize", "fit", "merge", "correct", "export"
    }  # fmt: skip

    for name in ("corrected", "fit", "variance_partition"):
        path = finished / f"results/{name}.tsv"
        table = pd.read_csv(path, sep="\t")  # plain: no options needed
        assert list(table["feature"]) == list(reference.var_names)
        provenance = json.loads(path.with_suffix(".tsv.json").read_text())
        assert provenance["omixed_version"] == omixed.__version__
        assert set(provenance["steps"]) == set(result.uns["omixed_run"])
    corrected = pd.read_csv(
        finished / "results/corrected.tsv", sep="\t", index_col=0, float_precision="round_trip"
    )
    np.testing.assert_array_equal(
        corrected[reference.obs_names].to_numpy().T, reference.layers["corrected"]
    )
    assert list(corrected.columns[:4]) == ["true_effect", "sd_batch", "sd_donor", "sd_resid"]
    for name in ("variance_partition", "pca"):
        assert (finished / f"results/plots/{name}.png").read_bytes()[:4] == b"\x89PNG"
    log = finished / "results/logs/fit/1-of-4.log"
    assert log.read_text().count("wrote results/fit/1-of-4.h5ad")


def test_resumed_run_left_no_partial_files(finished: Path) -> None:
    files = {str(p.relative_to(finished)) for p in (finished / "results").rglob("*") if p.is_file()}
    kept = {
        "results/data/imported.h5ad",
        "results/data/normalized.h5ad",
        "results/fit/fitted.h5ad",
        "results/fit/corrected.h5ad",
    }
    # exactly the outputs and one log per job: no temporary (atomic-write) files; the chunk
    # h5ads and chunk fits are removed as temp() once merged
    assert files == set(FINAL) | kept | {f"results/logs/{log}" for log in LOGS}


def chunk_files(project: Path) -> list[str]:
    results = project / "results"
    return sorted(str(p.relative_to(results)) for p in results.glob("*/*-of-*.*"))


def test_three_chunks_give_identical_results(finished: Path, tmp_path: Path) -> None:
    project = shutil.copytree(finished, tmp_path / "run3", symlinks=True)
    normalized = (project / "results/data/normalized.h5ad").stat().st_mtime_ns
    # a 4-chunk fit that stopped after its first chunk leaves its result behind ...
    check(snakemake(project, "results/fit/1-of-4.h5ad"))
    assert chunk_files(project) == ["fit/1-of-4.h5ad"]
    # ... which a run with 3 chunks removes; its own go once merged (up to the gathered fit:
    # correct and export are deterministic functions of it)
    check(snakemake(project, "results/fit/fitted.h5ad", "--config", "chunks=3"))
    assert chunk_files(project) == []
    assert sorted(p.name for p in (project / "results/logs/fit").glob("*-of-3.log")) == [
        "1-of-3.log", "2-of-3.log", "3-of-3.log"
    ]  # fmt: skip
    # changing the chunk count re-ran split onward only
    assert (project / "results/data/normalized.h5ad").stat().st_mtime_ns == normalized
    three = ad.read_h5ad(project / "results/fit/fitted.h5ad")
    four = ad.read_h5ad(finished / "results/fit/fitted.h5ad")
    assert len(four.varm) == 6
    for key in four.varm:
        pd.testing.assert_frame_equal(three.varm[key], four.varm[key])
    pd.testing.assert_frame_equal(three.var, four.var)
    assert three.uns["lmm"].keys() == four.uns["lmm"].keys()
    for key, value in four.uns["lmm"].items():
        if not isinstance(value, dict):
            np.testing.assert_array_equal(three.uns["lmm"][key], value)


@pytest.fixture(scope="module")
def read_only_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Lint, dry runs and bad configurations, started together (each only reads the workflow)."""
    project = make_project(tmp_path_factory.mktemp("static"))
    (project / "outer.smk").write_text('include: "workflow/Snakefile"\n')
    bad = {
        "unknown key": write_config(project, "a.yaml", model={"formul": "~ condition"}),
        "wrong type": write_config(project, "b.yaml", chunks="four"),
        "missing column": write_config(
            project, "c.yaml", model={"formula": "~ condition + treatment + (1|batch)"}
        ),
        "bad remove": write_config(project, "d.yaml", model={"remove": ["plate"]}),
        "proteins": write_config(project, "e.yaml", proteins={"enabled": True}, mode="transform"),
        "input in output_dir": write_config(
            project,
            "h.yaml",
            input={"type": "h5ad", "path": "analysis3/corrected.h5ad"},
            output_dir="analysis3",
        ),
        "remove twice": write_config(project, "i.yaml", model={"remove": ["batch", "batch"]}),
        "bad contrast": write_config(project, "j.yaml", contrasts={"x": "condition[T.nope]"}),
        "float chunks": write_config(project, "k.yaml", chunks=2.5),
    }
    (project / "analysis3").mkdir()  # an input that a run writing analysis3/ would overwrite
    shutil.copy(REPO / "tests/data/io/samplesheet.tsv", project / "analysis3/corrected.h5ad")
    procs = {
        "lint": start(project, "--lint"),
        "slurm": start(project, "-n", "--profile", "profiles/slurm"),
        "output_dir": start(project, "-n", "--config", "output_dir=analysis2"),
        # the workflow included from a Snakefile elsewhere (as tests/test_slurm.py does)
        "included": start(project, "-n", "--snakefile", "outer.smk", "results/corrected.h5ad"),
        **{name: start(project, "-n", "--configfile", path) for name, path in bad.items()},
    }
    runs = {name: finish(proc) for name, proc in procs.items()}
    runs["project"] = project
    return runs


def test_lint_is_clean(read_only_runs: dict) -> None:
    out = check(read_only_runs["lint"])
    assert "Congratulations, your workflow is in a good condition!" in out
    assert "Lints for" not in out


def test_slurm_dry_run_shows_resources(read_only_runs: dict) -> None:
    out = check(read_only_runs["slurm"])
    assert "Using profiles profiles/slurm" in out
    assert job_counts(out)["fit"] == 4
    fit_jobs = re.findall(r"rule fit:.*?resources: ([^\n]*)", out, re.S)
    assert len(fit_jobs) == 4
    assert all("mem_mb=4000" in r and "runtime=120" in r for r in fit_jobs)


def test_workflow_can_be_included_from_another_snakefile(read_only_runs: dict) -> None:
    assert job_counts(check(read_only_runs["included"]))["fit"] == 4


def test_output_dir_holds_every_output_and_log(read_only_runs: dict) -> None:
    out = check(read_only_runs["output_dir"])
    paths = set(re.findall(r"(?:output|log): (.*)", out))
    files = {f.strip() for line in paths for f in line.split(",")}
    assert "analysis2/corrected.tsv" in files and "analysis2/logs/import.log" in files
    assert all(f.startswith("analysis2/") for f in files), files


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "unknown key",
            "config: unknown key model.formul (allowed: formula, reml, remove, method)",
        ),
        ("wrong type", 'config: chunks is "four"; allowed: a whole number'),
        ("missing column", "term(s) ['treatment'] of the fixed effects not found"),
        ("bad remove", "cannot remove ['plate']: not in the fit"),
        ("proteins", "mode transform corrects gene-level fits; set proteins.enabled: false"),
        ("input in output_dir", "input.path 'analysis3/corrected.h5ad' is inside output_dir"),
        ("remove twice", "remove lists ['batch'] more than once"),
        ("bad contrast", "contrasts.x: cannot read contrast 'condition[T.nope]'"),
        ("float chunks", "config: chunks is 2.5; allowed: a whole number"),
    ],
)
def test_bad_config_fails_before_any_job(read_only_runs: dict, case: str, message: str) -> None:
    result = read_only_runs[case]
    assert result.returncode != 0
    assert message in result.stdout
    assert "Job stats" not in result.stdout
    # one line for the problem, not a dump of the schema (Snakemake adds a few lines around it)
    assert "Failed validating" not in result.stdout
    assert len(result.stdout.splitlines()) <= 8, result.stdout
    project = read_only_runs["project"]
    assert not (project / "results").exists()
    assert [p.name for p in (project / "analysis3").iterdir()] == ["corrected.h5ad"]


@pytest.fixture(scope="module")
def after_finish(finished: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    """Dry runs with the same and with changed configs, and the report, started together."""
    formula = write_config(finished, "f.yaml", model={"formula": "~ condition + (1|batch)"})
    remove = write_config(finished, "g.yaml", model={"remove": ["batch", "donor"]})
    procs = {
        "same": start(finished, "-n"),
        "formula": start(finished, "-n", "--configfile", formula),
        "remove": start(finished, "-n", "--configfile", remove),
        "report": start(finished, "--report", "report.html"),
    }
    return {name: finish(proc) for name, proc in procs.items()}


def test_changed_config_reruns_affected_rules_only(after_finish: dict) -> None:
    assert "Nothing to be done" in check(after_finish["same"])
    downstream = {"merge": 1, "correct": 1, "export": 1, "test": 1, "plot": 1, "all": 1}
    # the chunk h5ads are temp(), so a new fit needs a new split; import and normalize stay
    assert job_counts(check(after_finish["formula"])) == {"split": 1, "fit": 4, **downstream}
    assert job_counts(check(after_finish["remove"])) == {
        "correct": 1,
        "export": 1,
        "test": 1,
        "plot": 1,
        "all": 1,
    }


def test_report_includes_plots(finished: Path, after_finish: dict) -> None:
    check(after_finish["report"])
    html = (finished / "report.html").read_text(errors="replace")
    assert "variance_partition.png" in html
    assert "pca.png" in html
    assert "volcano_treated.png" in html


@pytest.fixture(scope="module")
def broken_runs(finished: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Copies of the finished run, rerun with a broken input table and with a sample sheet that
    lacks a sample (then again with ``samples.how: inner``), started together."""
    broken = shutil.copytree(finished, tmp_path_factory.mktemp("broken") / "p", symlinks=True)
    # a gene-name column the reader was not told about (input.options.annotation_cols)
    table = omixed.datasets.example()[:, :50].to_df().T.rename_axis("feature")
    table.insert(0, "gene", [f"GENE{i}" for i in range(50)])
    table.to_csv(broken / "table.tsv", sep="\t")
    bad_input = write_config(
        broken, "t.yaml", input={"type": "table", "path": "table.tsv"}, normalize={"steps": []}
    )
    sheet = shutil.copytree(finished, tmp_path_factory.mktemp("sheet") / "p", symlinks=True)
    samples = pd.read_csv(sheet / "config/samples.tsv", sep="\t")
    samples.iloc[:-1].to_csv(sheet / "config/fewer.tsv", sep="\t", index=False)
    exact = write_config(sheet, "x.yaml", samples={"path": "config/fewer.tsv"})
    inner = write_config(sheet, "i.yaml", samples={"path": "config/fewer.tsv", "how": "inner"})
    procs = {
        "input": start(broken, "--configfile", bad_input),
        "exact": start(sheet, "--configfile", exact),
    }
    runs = {name: finish(proc) for name, proc in procs.items()}
    # after the failure, so that the two do not share the lock on the project
    target = ("results/data/imported.h5ad", "--configfile", inner)
    runs["inner"] = snakemake(sheet, *target)
    runs["projects"] = {"input": broken, "sheet": sheet, "missing": samples["sample"].iloc[-1]}
    return runs


def test_broken_input_shows_its_cause_and_leaves_no_outdated_outputs(broken_runs: dict) -> None:
    result = broken_runs["input"]
    assert result.returncode != 0
    # the failed job's log is printed: its last line is the error, naming file, row and column
    error = next(line for line in result.stdout.splitlines() if "omixed ERROR" in line)
    assert "import: table.tsv: " in error and "'gene'" in error
    # the reader's hint (annotation_cols=...) says where the workflow takes it
    assert "input.options.annotation_cols in the workflow config" in error
    project = broken_runs["projects"]["input"]
    # the finished run's results were for the old input: removed when the new run started
    left = [p for p in (project / "results").rglob("*") if p.is_file() and "logs" not in p.parts]
    assert left == []


def test_sample_sheet_mismatch_names_the_samples_and_the_setting(broken_runs: dict) -> None:
    result = broken_runs["exact"]
    assert result.returncode != 0
    error = next(line for line in result.stdout.splitlines() if "omixed ERROR" in line)
    missing = broken_runs["projects"]["missing"]
    assert f"samples of adata missing from config/fewer.tsv: {missing!r}" in error
    assert "samples.how in the workflow config" in error
    check(broken_runs["inner"])
    imported = ad.read_h5ad(broken_runs["projects"]["sheet"] / "results/data/imported.h5ad")
    assert imported.n_obs == 47 and missing not in imported.obs_names


@pytest.fixture(scope="module")
def protein_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The workflow on the example peptides as MaxQuant and DIA-NN output, with a contrast."""
    project = make_project(tmp_path_factory.mktemp("proteins"))
    files = omixed.datasets.example_files(directory=project / "data")
    configs = {
        tool: write_config(
            project,
            f"{tool}.yaml",
            input={"type": "auto", "path": f"data/{files[tool].name}", "options": {}},
            samples={"path": "data/samples.tsv", "how": "exact"},
            output_dir=f"results_{tool}",
            proteins={"enabled": True},
            normalize={"steps": ["log_transform", "median_center"]},
            contrasts={"treated": "condition[T.treated]"},
            chunks=2,
        )
        for tool in ("maxquant", "diann")
    }
    procs = {tool: start(project, "--configfile", path) for tool, path in configs.items()}
    for proc in procs.values():
        check(finish(proc))
    check(snakemake(project, "--configfile", configs["diann"], "--report", "report.html"))
    return {"project": project, **{tool: project / f"results_{tool}" for tool in configs}}


@pytest.mark.parametrize("tool", ["maxquant", "diann"])
def test_proteins_run_from_search_engine_output_to_differential_tables(protein_runs, tool):
    results = protein_runs[tool]
    table = pd.read_csv(results / "de/treated.tsv", sep="\t", index_col=0)
    columns = ["n_peptides", "estimate", "se", "t", "df", "pvalue", "padj", "reason"]
    assert list(table.columns[: len(columns)]) == columns
    assert {"logOR_pvalue", "hurdle_pvalue", "hurdle_padj", "basis"} <= set(table.columns)
    assert (results / "plots/volcano_treated.png").read_bytes()[:4] == b"\x89PNG"
    # The package on the workflow's own normalized peptides gives the same proteins and tests.
    peptides = ad.read_h5ad(results / "data/normalized.h5ad")
    proteins = omixed.tl.summarize_proteins(peptides, progress=False)
    top = omixed.tl.test(
        proteins, contrast="condition[T.treated]", peptides=peptides, moderate=True, hurdle=True
    )
    merged = ad.read_h5ad(results / "fit/proteins.h5ad")[:, proteins.var_names]
    np.testing.assert_array_equal(merged.X, proteins.X)  # 2 protein chunks = one call
    pd.testing.assert_series_equal(
        table["hurdle_pvalue"].sort_index(), top["hurdle_pvalue"].sort_index(), check_names=False
    )
    simulated = omixed.datasets.example_peptides().var
    truth = simulated.groupby("protein", observed=True)["true_effect"].first()
    called = table.index[table["hurdle_padj"] < 0.05]
    assert (truth.loc[called] != 0).mean() > 0.9  # the calls are real changes


def test_the_report_shows_the_volcano_plot_and_table(protein_runs):
    html = (protein_runs["project"] / "report.html").read_text()
    assert "volcano_treated.png" in html and "treated.tsv" in html


def test_no_config_string_reaches_the_shell_unquoted(finished: Path, tmp_path: Path) -> None:
    project = make_project(tmp_path / "quoting")
    reference = project / "ref $(touch INJECTED) x.h5ad"  # a space and a command substitution
    shutil.copy(finished / "results/corrected.h5ad", reference)
    config = write_config(
        project,
        "transform.yaml",
        mode="transform",
        reference=reference.name,
        output_dir="new samples",
    )
    check(snakemake(project, "new samples/corrected.h5ad", "--configfile", config))
    assert not (project / "INJECTED").exists()
    assert (project / "new samples/corrected.h5ad").is_file()
