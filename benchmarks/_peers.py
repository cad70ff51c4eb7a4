"""Peer methods that benchmark scripts time omixed against.

* R's lme4, run through ``Rscript`` as a per-feature ``lmer`` loop (``lme4_loop.R`` next to this
  file). R is optional: guard with :func:`lme4_available` and skip the peer when it is missing.
* scanpy's ComBat (``scanpy.pp.combat``).

Import from a script in this folder with ``from _peers import time_lme4``.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from anndata import AnnData

LME4_LOOP = Path(__file__).with_name("lme4_loop.R")
# Python source that sets ``peak``, the peak RSS in MiB of the process running it (Linux).  VmHWM
# belongs to the process's own address space; getrusage's ru_maxrss survives execve, so a child
# started by a benchmark that has already fit large designs would report the parent's peak.
PEAK_MIB = (
    "peak = next(int(line.split()[1]) for line in open('/proc/self/status') "
    "if line.startswith('VmHWM')) / 1024"
)


@functools.cache
def lme4_available() -> bool:
    """Whether ``Rscript`` is on PATH and ``library(lme4)`` loads."""
    if shutil.which("Rscript") is None:
        return False
    probe = subprocess.run(
        ["Rscript", "-e", "suppressPackageStartupMessages(library(lme4))"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    return probe.returncode == 0


def time_lme4(
    long_df: pd.DataFrame,
    formula: str,
    feature_col: str = "feature",
    reml: bool = True,
    max_features: int | None = None,
    *,
    timeout: float = 3600.0,
) -> dict:
    """Time a loop of ``lme4::lmer`` fits, one per feature, inside R.

    Only the fitting loop is timed (``proc.time()`` in R), so starting R, loading lme4 and
    reading the table are excluded. Rows with a missing response are dropped by lmer's default
    ``na.action``.

    Parameters
    ----------
    long_df
        Long table, one row per observed value, with the columns the formula uses and
        ``feature_col``.
    formula
        lme4 formula, e.g. ``"y ~ condition + (1|batch) + (1|donor)"``.
    feature_col
        Column identifying the feature each row belongs to.
    reml
        Fit by REML (``True``) or maximum likelihood.
    max_features
        Fit only the first ``max_features`` features (in order of first appearance) and
        extrapolate the time for all of them.
    timeout
        Seconds before the R process is killed.

    Returns
    -------
    dict
        ``seconds``: measured loop time; ``n_features``: features fitted; ``ms_per_feature``;
        ``crit``: :class:`pandas.Series` indexed by feature ID (as text) holding the REML
        criterion, or the deviance when ``reml=False``; ``n_features_total``: features in
        ``long_df``; ``seconds_total``: loop time extrapolated to all of them.

    Examples
    --------
    >>> long = pd.read_csv("tests/data/reference/sim_genes.csv")
    >>> res = time_lme4(long, "y ~ condition + (1|batch) + (1|donor)", max_features=20)
    >>> res["n_features"], res["n_features_total"]
    (20, 300)
    """
    if feature_col not in long_df.columns:
        raise KeyError(f"feature column {feature_col!r} not in {list(long_df.columns)}")
    if max_features is not None and max_features < 1:
        raise ValueError(f"max_features must be a positive integer, got {max_features}")
    n_total = long_df[feature_col].nunique()
    with tempfile.TemporaryDirectory(prefix="omixed_lme4_") as tmp:
        data_csv, crit_csv = Path(tmp, "long.csv"), Path(tmp, "crit.csv")
        long_df.to_csv(data_csv, index=False)
        cmd = [
            "Rscript",
            str(LME4_LOOP),
            str(data_csv),
            formula,
            feature_col,
            "TRUE" if reml else "FALSE",
            "NA" if max_features is None else str(max_features),
            str(crit_csv),
        ]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
        except subprocess.CalledProcessError as err:
            raise RuntimeError(f"lme4 loop failed:\n{err.stderr}") from err
        crit = pd.read_csv(crit_csv, dtype={"feature": str}).set_index("feature")["crit"]
        crit.index.name = feature_col
    seconds = float(run.stdout.strip().splitlines()[-1])
    n_fitted = len(crit)
    return {
        "seconds": seconds,
        "n_features": n_fitted,
        "ms_per_feature": 1e3 * seconds / n_fitted,
        "crit": crit,
        "n_features_total": n_total,
        "seconds_total": seconds * n_total / n_fitted,
    }


def time_combat(adata: AnnData, batch_key: str, *, repeats: int = 3) -> float:
    """Best-of-``repeats`` wall time in seconds of ``scanpy.pp.combat`` on a copy of ``adata``."""
    import scanpy as sc

    if batch_key not in adata.obs:
        raise KeyError(f"batch_key {batch_key!r} not in adata.obs: {list(adata.obs.columns)}")
    best = float("inf")
    for _ in range(repeats):
        work = adata.copy()  # combat overwrites X; copying stays outside the clock
        start = time.perf_counter()
        sc.pp.combat(work, key=batch_key, inplace=True)
        best = min(best, time.perf_counter() - start)
    return best
