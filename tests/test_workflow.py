"""The Snakemake workflow, run for real (local executor, 2 cores) in copies of the repository.

One run on the bundled example is killed once its first fit job has finished and then resumed;
its results are compared with the package API, and a copy of it is re-run with 3 chunks.
Commands that only read the workflow (lint, dry runs, bad configurations) run side by side.
"""

from __future__ import annotations

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

FINAL = [
    "results/corrected.h5ad",
    "results/corrected.tsv",
    "results/fit.tsv",
    "results/variance_partition.tsv",
    "results/plots/variance_partition.png",
    "results/plots/pca.png",
]


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
        assert path.read_text().startswith(f"# omixed {omixed.__version__} ")
        table = pd.read_csv(path, sep="\t", skiprows=1, index_col=0)
        assert list(table.index) == list(reference.var_names)
    for name in ("variance_partition", "pca"):
        assert (finished / f"results/plots/{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert (finished / "logs/fit/1-of-4.log").read_text().count("wrote results/fit/1-of-4.h5ad")


def test_resumed_run_left_no_partial_files(finished: Path) -> None:
    files = {str(p.relative_to(finished)) for p in (finished / "results").rglob("*") if p.is_file()}
    kept = {
        "results/data/imported.h5ad",
        "results/data/normalized.h5ad",
        "results/fit/fitted.h5ad",
        "results/fit/corrected.h5ad",
    }
    # exactly the outputs: no temporary (atomic-write) files, chunk h5ads and chunk fits removed
    # as temp()
    assert files == set(FINAL) | kept


def test_three_chunks_give_identical_results(finished: Path, tmp_path: Path) -> None:
    project = shutil.copytree(finished, tmp_path / "run3", symlinks=True)
    normalized = (project / "results/data/normalized.h5ad").stat().st_mtime_ns
    # up to the gathered fit: correct and export are deterministic functions of it
    check(snakemake(project, "results/fit/fitted.h5ad", "--config", "chunks=3"))
    assert sorted(p.name for p in (project / "logs/fit").glob("*-of-3.log")) == [
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
    bad = {
        "unknown key": write_config(project, "a.yaml", model={"formul": "~ condition"}),
        "wrong type": write_config(project, "b.yaml", chunks="four"),
        "missing column": write_config(
            project, "c.yaml", model={"formula": "~ condition + treatment + (1|batch)"}
        ),
        "bad remove": write_config(project, "d.yaml", model={"remove": ["plate"]}),
        "proteins": write_config(project, "e.yaml", proteins={"enabled": True}),
    }
    procs = {
        "lint": start(project, "--lint"),
        "slurm": start(project, "-n", "--profile", "profiles/slurm"),
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


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown key", "Additional properties are not allowed ('formul' was unexpected)"),
        ("wrong type", "'four' is not of type 'integer'"),
        ("missing column", "term(s) ['treatment'] of the fixed effects not found"),
        ("bad remove", "cannot remove ['plate']: not in the fit"),
        ("proteins", "proteins.enabled is true"),
    ],
)
def test_bad_config_fails_before_any_job(read_only_runs: dict, case: str, message: str) -> None:
    result = read_only_runs[case]
    assert result.returncode != 0
    assert message in result.stdout
    assert "Job stats" not in result.stdout
    project = read_only_runs["project"]
    assert not (project / "results").exists()
    assert not (project / "logs").exists()


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
    downstream = {"merge": 1, "correct": 1, "export": 1, "plot": 1, "all": 1}
    # the chunk h5ads are temp(), so a new fit needs a new split; import and normalize stay
    assert job_counts(check(after_finish["formula"])) == {"split": 1, "fit": 4, **downstream}
    assert job_counts(check(after_finish["remove"])) == {
        "correct": 1,
        "export": 1,
        "plot": 1,
        "all": 1,
    }


def test_report_includes_plots(finished: Path, after_finish: dict) -> None:
    check(after_finish["report"])
    html = (finished / "report.html").read_text(errors="replace")
    assert "variance_partition.png" in html
    assert "pca.png" in html
