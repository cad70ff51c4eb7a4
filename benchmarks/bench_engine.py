"""Speed of the vectorized REML engine on four scenarios, against peers timed in the same run.

1. crossed   — ``y ~ condition + (1|batch) + (1|donor)``, 1000 features × 60 samples, 20% missing;
               peer: lme4 (a per-feature ``lmer`` loop, extrapolated from a subset).
2. peptides  — ``y ~ condition + (1|batch) + (1|sample) + (1|peptide)``, 300 proteins × 24 samples
               × 2–15 peptides (15% missing), via :func:`omixed.lmm.fit_grouped`; peer: lme4.
3. combat    — ``y ~ condition + (1|batch)``, 22283 × 57 complete, 5 batches; full REML fit with
               BLUPs; peer: ``scanpy.pp.combat`` on the same matrix.  Also peak traced memory of
               the fit relative to the input matrix.
4. slopes    — ``y ~ Days + (Days|Subject)`` and ``(Days||Subject)``, 500 features × 18 subjects ×
               10 days (sleepstudy's shape), 10% missing; peer: lme4.

Every omixed time is the best of ``--repeats`` runs (7), for ``n_jobs=1`` and ``n_jobs=2``.

Usage: ``python benchmarks/bench_engine.py [--no-lme4] [--repeats N] [--only NAME]``.  Runs in
about a minute (with R and lme4; seconds without).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
import pandas as pd
from _peers import lme4_available, time_combat, time_lme4

from omixed import lmm

CROSSED = "y ~ condition + (1|batch) + (1|donor)"
PEPTIDES = "y ~ condition + (1|batch) + (1|sample) + (1|peptide)"
COMBAT = "y ~ condition + (1|batch)"
SLOPES = ("y ~ Days + (Days|Subject)", "y ~ Days + (Days||Subject)")


def crossed_data(n_features=1000, n_batch=5, n_donor=20, reps=3, missing=0.2, seed=0):
    """Batches crossed with donors (nested in condition); ``Y`` is samples × features."""
    rng = np.random.default_rng(seed)
    n = n_donor * reps
    donor = np.repeat(np.arange(n_donor), reps)
    batch = rng.permutation(np.arange(n) % n_batch)
    design = pd.DataFrame(
        {
            "batch": [f"B{b}" for b in batch],
            "donor": [f"D{d:02d}" for d in donor],
            "condition": np.where(donor < n_donor // 2, "control", "treated"),
        }
    )
    sd = rng.gamma(2.0, 0.3, size=(3, n_features)) * (rng.random((3, n_features)) > 0.2)
    Y = (
        rng.normal(size=(n_batch, n_features))[batch] * sd[0]
        + rng.normal(size=(n_donor, n_features))[donor] * sd[1]
        + rng.normal(size=(n, n_features)) * (0.3 + sd[2])
        + (design["condition"] == "treated").to_numpy()[:, None] * rng.normal(size=n_features)
    )
    Y[rng.random(Y.shape) < missing] = np.nan
    return Y, design


def peptide_data(n_proteins=300, n_batch=3, n_samples=24, peptides=(2, 15), missing=0.15, seed=0):
    """Long table (feature, peptide, sample, y) and the sample design (batch, condition)."""
    rng = np.random.default_rng(seed)
    samples = pd.Index([f"S{i:02d}" for i in range(n_samples)])
    batch = np.arange(n_samples) % n_batch
    treated = np.arange(n_samples) % 2
    design = pd.DataFrame(
        {"batch": [f"B{b}" for b in batch], "condition": np.where(treated, "treated", "control")},
        index=samples,
    )
    parts = []
    for p in range(n_proteins):
        k = int(rng.integers(peptides[0], peptides[1] + 1))
        sd = rng.gamma(2.0, 0.25, 3) * (rng.random(3) > 0.2)
        y = (
            22.0
            + rng.normal(size=n_batch)[batch, None] * sd[0]
            + rng.normal(size=n_samples)[:, None] * sd[1]
            + rng.normal(size=k)[None, :] * (0.5 + sd[2])
            + rng.normal(size=(n_samples, k)) * 0.3
            + treated[:, None] * rng.normal()
        )
        keep = rng.random(y.shape) >= missing
        s, j = np.nonzero(keep)
        parts.append(
            pd.DataFrame(
                {
                    "feature": f"P{p:04d}",
                    "peptide": [f"P{p:04d}_pep{x:02d}" for x in j],
                    "sample": samples[s],
                    "y": y[s, j],
                }
            )
        )
    long = pd.concat(parts, ignore_index=True)
    return long, design


def combat_data(n_features=22283, n_samples=57, n_batch=5, seed=0):
    """A complete expression-like matrix (samples × features) with additive batch effects."""
    rng = np.random.default_rng(seed)
    batch = np.sort(np.arange(n_samples) % n_batch)
    design = pd.DataFrame(
        {
            "batch": pd.Categorical([f"B{b}" for b in batch]),
            "condition": np.where(rng.random(n_samples) < 0.5, "control", "treated"),
        }
    )
    Y = (
        8.0
        + rng.normal(size=n_features)
        + rng.normal(size=(n_batch, n_features))[batch] * rng.gamma(2.0, 0.2, n_features)
        + rng.normal(size=(n_samples, n_features)) * 0.5
    )
    return Y, design


def slopes_data(n_features=500, n_subjects=18, n_days=10, missing=0.1, seed=0):
    """Random intercepts and slopes per subject, sleepstudy's design; ``Y`` is rows × features."""
    rng = np.random.default_rng(seed)
    subject = np.repeat(np.arange(n_subjects), n_days)
    days = np.tile(np.arange(n_days, dtype=float), n_subjects)
    design = pd.DataFrame({"Subject": [f"S{s:02d}" for s in subject], "Days": days})
    intercept = rng.normal(size=(n_subjects, n_features))
    slope = 0.3 * (0.5 * intercept + rng.normal(size=(n_subjects, n_features)))  # correlated
    noise = rng.normal(size=(days.size, n_features))
    Y = intercept[subject] + slope[subject] * days[:, None] + noise
    Y[rng.random(Y.shape) < missing] = np.nan
    return Y, design


def best_time(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - start)
    return best, out


def _long_from_wide(Y: np.ndarray, design: pd.DataFrame) -> pd.DataFrame:
    samples, features = np.nonzero(np.isfinite(Y))
    long = design.iloc[samples].reset_index(drop=True)
    long.insert(0, "feature", [f"F{f:05d}" for f in features])
    long["y"] = Y[samples, features]
    return long.sort_values("feature", kind="stable")


def _report_omixed(name: str, n: int, times: dict[int, float]) -> None:
    for jobs, sec in times.items():
        print(f"  omixed n_jobs={jobs}: {sec:7.3f} s  = {1e3 * sec / n:7.4f} ms/feature")


def _report_lme4(times: dict[int, float], n: int, long: pd.DataFrame, formula: str, k: int, ours):
    if not lme4_available():
        print("  lme4: not available (Rscript with lme4 not found)")
        return
    peer = time_lme4(long, formula, max_features=k)
    crit = ours.criterion.copy()
    crit.index = crit.index.astype(str)
    diff = crit.loc[peer["crit"].index] - peer["crit"]
    print(
        f"  lme4 ({peer['n_features']} features, extrapolated): {peer['seconds_total']:7.2f} s  "
        f"= {peer['ms_per_feature']:7.3f} ms/feature; criterion omixed − lme4: "
        f"max {diff.max():+.2e}, min {diff.min():+.2e}"
    )
    for jobs, sec in times.items():
        print(f"  speed-up over lme4 (n_jobs={jobs}): {peer['seconds_total'] / sec:8.1f}×")


def bench_crossed(repeats: int, use_lme4: bool) -> None:
    Y, design = crossed_data()
    n = Y.shape[1]
    names = [f"F{f:05d}" for f in range(n)]  # as in the long table given to lme4
    print(f"\n[crossed] {CROSSED}: {n} features × {Y.shape[0]} samples, 20% missing")
    times = {}
    for jobs in (1, 2):
        times[jobs], res = best_time(
            lambda j=jobs: lmm.fit(Y, design, CROSSED, n_jobs=j, feature_names=names), repeats
        )
    _report_omixed("crossed", n, times)
    print(f"  converged {res.converged.mean():.1%}; target <= 0.07 ms/feature")
    if use_lme4:
        _report_lme4(times, n, _long_from_wide(Y, design), CROSSED, 100, res)


def bench_peptides(repeats: int, use_lme4: bool) -> None:
    long, design = peptide_data()
    n = long["feature"].nunique()
    print(f"\n[peptides] {PEPTIDES}: {n} proteins × 24 samples × 2–15 peptides")
    times = {}
    for jobs in (1, 2):
        times[jobs], (res, _) = best_time(
            lambda j=jobs: lmm.fit_grouped(long, design, PEPTIDES, n_jobs=j), repeats
        )
    _report_omixed("peptides", n, times)
    print(f"  converged {res.converged.mean():.1%}; target <= 0.3 ms/protein")
    if use_lme4:
        full = long.merge(design, left_on="sample", right_index=True)
        _report_lme4(times, n, full, PEPTIDES, 60, res)


def bench_slopes(repeats: int, use_lme4: bool) -> None:
    Y, design = slopes_data()
    n = Y.shape[1]
    names = [f"F{f:05d}" for f in range(n)]
    for formula in SLOPES:
        print(f"\n[slopes] {formula}: {n} features × {Y.shape[0]} rows (18 subjects), 10% missing")
        times = {}
        for jobs in (1, 2):
            times[jobs], res = best_time(
                lambda j=jobs, f=formula: lmm.fit(Y, design, f, n_jobs=j, feature_names=names),
                repeats,
            )
        _report_omixed("slopes", n, times)
        print(f"  converged {res.converged.mean():.1%}")
        if use_lme4:
            _report_lme4(times, n, _long_from_wide(Y, design), formula, 50, res)


def bench_combat(repeats: int) -> None:
    import anndata as ad

    Y, design = combat_data()
    n = Y.shape[1]
    print(f"\n[combat] {COMBAT}: {n} features × {Y.shape[0]} samples, complete, 5 batches")
    times = {}
    for jobs in (1, 2):
        times[jobs], _ = best_time(lambda j=jobs: lmm.fit(Y, design, COMBAT, n_jobs=j), repeats)
    _report_omixed("combat", n, times)
    adata = ad.AnnData(Y.copy(), obs=design.set_axis(design.index.astype(str)))
    combat = time_combat(adata, "batch", repeats=repeats)
    print(f"  scanpy.pp.combat: {combat:7.3f} s")
    for jobs, sec in times.items():
        print(f"  omixed / combat time (n_jobs={jobs}): {sec / combat:6.2f}")
    tracemalloc.start()
    lmm.fit(Y, design, COMBAT)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"  peak traced memory (n_jobs=1): {peak / 2**20:.0f} MiB "
        f"= {peak / Y.nbytes:.1f}× the input ({Y.nbytes / 2**20:.0f} MiB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-lme4", action="store_true", help="skip the lme4 peer")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", choices=["crossed", "peptides", "combat", "slopes"])
    args = parser.parse_args()
    use_lme4 = not args.no_lme4
    for jobs in (1, 2):  # warm up imports and the joblib workers
        lmm.fit(*crossed_data(n_features=20), CROSSED, n_jobs=jobs)
    if args.only in (None, "crossed"):
        bench_crossed(args.repeats, use_lme4)
    if args.only in (None, "peptides"):
        bench_peptides(args.repeats, use_lme4)
    if args.only in (None, "combat"):
        bench_combat(args.repeats)
    if args.only in (None, "slopes"):
        bench_slopes(args.repeats, use_lme4)


if __name__ == "__main__":
    main()
