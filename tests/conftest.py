"""Shared fixtures: the independent lme4 reference fits (tests/data/reference) and small designs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import yaml

matplotlib.use("Agg")

REFERENCE = Path(__file__).parent / "data" / "reference"  # see the README there


@pytest.fixture(scope="session")
def lme4_classic() -> dict:
    """lme4 fits of the classic data sets (Dyestuff, Penicillin, Pastes, sleepstudy)."""
    return json.loads((REFERENCE / "lme4_classic.json").read_text())


@pytest.fixture(scope="session")
def classic_data():
    """Loader for the classic data sets by file name."""
    return lambda name: pd.read_csv(REFERENCE / name)


def _wide(long: pd.DataFrame, design_cols: list[str]) -> tuple[np.ndarray, pd.DataFrame, pd.Index]:
    wide = long.pivot(index="sample", columns="feature", values="y")
    design = long.drop_duplicates("sample").set_index("sample").loc[wide.index, design_cols]
    return wide.to_numpy(), design.reset_index(), wide.columns


@pytest.fixture(scope="session")
def sim_genes():
    """(Y, design, feature names, lme4 table) of the simulated gene-level design."""
    long = pd.read_csv(REFERENCE / "sim_genes.csv")
    Y, design, names = _wide(long, ["batch", "donor", "condition"])
    ref = pd.read_csv(REFERENCE / "sim_genes_lme4.csv")
    ref = ref.pivot(index="feature", columns="term", values="value").loc[names]
    return Y, design, names, ref


@pytest.fixture(scope="session")
def sim_peptides():
    """(long table, sample design, lme4 table) of the simulated peptide-level design."""
    long = pd.read_csv(REFERENCE / "sim_peptides.csv")
    design = long.drop_duplicates("sample").set_index("sample")[["batch", "condition"]]
    ref = pd.read_csv(REFERENCE / "sim_peptides_lme4.csv")
    ref = ref.pivot(index="feature", columns="term", values="value")
    return long, design, ref


@pytest.fixture(scope="session")
def sim_peptides_truth() -> pd.DataFrame:
    """The simulated truth of the peptide design per protein (``effect`` 0: unchanged)."""
    return pd.read_csv(REFERENCE / "sim_peptides_truth.csv").set_index("feature")


def crossed_design(n_batch=4, n_donor=8, reps=3, seed=0) -> pd.DataFrame:
    """Batches crossed with donors (donors nested in condition), ``reps`` samples per donor."""
    rng = np.random.default_rng(seed)
    donors = np.repeat([f"D{i:02d}" for i in range(n_donor)], reps)
    cond = np.where(np.repeat(np.arange(n_donor), reps) < n_donor // 2, "control", "treated")
    batch = np.array([f"B{i}" for i in rng.integers(0, n_batch, size=donors.size)])
    batch[:n_batch] = [f"B{i}" for i in range(n_batch)]
    return pd.DataFrame({"batch": batch, "donor": donors, "condition": cond})


def simulate(design: pd.DataFrame, n_features=50, sd=(0.7, 0.5, 0.4), missing=0.0, seed=1):
    """Responses with batch, donor and residual SDs ``sd`` and a condition effect."""
    rng = np.random.default_rng(seed)
    n = len(design)
    b = pd.factorize(design["batch"])[0]
    d = pd.factorize(design["donor"])[0]
    Y = (
        rng.normal(20, 2, n_features)
        + (design["condition"].to_numpy() == "treated")[:, None] * rng.normal(0, 1, n_features)
        + rng.normal(0, sd[0], (b.max() + 1, n_features))[b]
        + rng.normal(0, sd[1], (d.max() + 1, n_features))[d]
        + rng.normal(0, sd[2], (n, n_features))
    )
    if missing:
        Y[rng.random(Y.shape) < missing] = np.nan
    return Y


def full_cross_products(spec, design, Ys: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``A[f] = [Z X y_f]' diag(w_f) [Z X y_f]`` dense, terms in ``design``'s elimination order."""
    M = np.hstack([*(spec.terms[i].indicator().toarray() for i in design.order), spec.X])
    A = np.empty((Ys.shape[0], M.shape[1] + 1, M.shape[1] + 1))
    for f in range(Ys.shape[0]):
        My = np.column_stack([M, Ys[f]])
        A[f] = (My * W[f, :, None]).T @ My
    return A


def cross_from_dense(A: np.ndarray, q1: int):
    """The engine's cross-product pieces of a dense ``A`` whose first ``q1`` columns are one term.

    That term's block of ``A`` must be diagonal (distinct levels of a scalar term); every
    place of its rows against the rest is kept.
    """
    from omixed.lmm._crossprod import Cross, CrossProducts

    m, d = A.shape[0], A.shape[1] - q1
    structure = CrossProducts(
        n_levels=q1,
        b=1,
        dim=d,
        codes=None,
        values=None,
        rest=None,
        x_place=None,
        y_place=None,
        row_level=np.repeat(np.arange(q1), d),
        row_col=np.tile(np.arange(d), q1),
        starts=np.arange(q1 + 1) * d,
        row_order=None,  # no data rows
    )
    first = np.diagonal(A[:, :q1, :q1], axis1=1, axis2=2).reshape(m, q1, 1, 1).copy()
    rows = np.ascontiguousarray(A[:, :q1, q1:]).reshape(m, q1 * d)
    return Cross(first, rows, np.ascontiguousarray(A[:, q1:, q1:]), structure)


# Snakemake runs in copies of the project (tests/test_workflow.py, tests/test_slurm.py).
REPO = Path(__file__).parents[1]
SNAKEMAKE_TIMEOUT = 300  # seconds for one Snakemake run; a hung run is killed with its jobs


def make_project(dest: Path) -> Path:
    """A copy of the workflow, its configuration and profiles: what a user runs in."""
    for part in ("workflow", "config", "profiles"):
        shutil.copytree(REPO / part, dest / part)
    return dest


def write_config(project: Path, name: str, **changes: object) -> str:
    """A config file: the default one with top-level sections replaced or updated."""
    config = yaml.safe_load((project / "config/config.yaml").read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path = project / "config" / name
    path.write_text(yaml.safe_dump(config))
    return f"config/{name}"


def start(
    project: Path,
    *args: str,
    env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
) -> subprocess.Popen[str]:
    """Start Snakemake in its own process group, so it can be killed together with its jobs.

    ``prefix`` goes before ``snakemake`` (e.g. ``("nice", "-n", "19")``).
    """
    return subprocess.Popen(
        [*prefix, "snakemake", "--cores", "2", *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(
    proc: subprocess.Popen[str], timeout: float = SNAKEMAKE_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"snakemake {proc.args} did not finish in {timeout} s:\n{out}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def snakemake(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return finish(start(project, *args))


def check(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout
    return result.stdout


def dense_lambda(theta: np.ndarray, layout) -> np.ndarray:
    """``S = blockdiag(Λ(θ), I_p, 1)`` of a correlated-terms layout, ``(m, dim, dim)``.

    The unreduced system ``Ω = S'AS + diag(I_q, 0, 0)`` built from it is the reference the
    level-by-level elimination of :mod:`omixed.lmm._dense` is tested against.
    """
    S = np.zeros((theta.shape[0], layout.dim, layout.dim))
    idx = np.arange(layout.q, layout.dim)
    S[:, idx, idx] = 1.0
    S[:, layout.rows, layout.cols] = theta[:, layout.which]
    return S
