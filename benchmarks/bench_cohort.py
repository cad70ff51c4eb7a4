"""Large cohorts and large single fits, against lme4 measured in the same run.

1. cohorts — ``y ~ condition + (1|batch) + (1|donor)`` (GTEx-like: ``y ~ tissue + (1|batch) +
   (1|donor)``, 5 tissues per donor), 10 % missing values, designs from 60 to 3000 samples:
   omixed fits every feature (``n_jobs=1``), lme4 a per-feature ``lmer`` loop on the first
   ``--lme4-features`` (extrapolated); ms per feature, their ratio, and the largest criterion
   difference omixed − lme4 on the features both fit.
2. InstEval — lme4's ``InstEval`` (73 421 ratings, 2972 students × 1128 lecturers crossed,
   ``y ~ service + (1|s) + (1|d) + (1|dept)``), exported by Rscript into a temporary file: one
   fit each, in its own process, with its wall time and peak RSS (the whole process: Python with
   numpy and pandas, R with lme4).
3. 10⁵ levels — ``y ~ x + (1|g) + (1|b)`` with 10⁵ levels of ``g`` and 100 of ``b``: omixed's
   fit time and peak RSS; and two crossed factors of 10⁵ levels, which omixed refuses up front
   with the memory it would need.

Usage: ``python benchmarks/bench_cohort.py [--features 2000] [--lme4-features 30]
[--only cohorts|insteval|levels] [--designs NAME ...]``.  Needs R with lme4 for the peers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _peers import PEAK_MIB, lme4_available, time_lme4

from omixed import lmm

FORMULA = "y ~ condition + (1|batch) + (1|donor)"
GTEX = "y ~ tissue + (1|batch) + (1|donor)"
INSTEVAL = "y ~ service + (1|s) + (1|d) + (1|dept)"
# name: (samples per donor, batches, donors); "gtex" has 5 tissues per donor.
DESIGNS = {
    "60": (4, 3, 15),
    "200": (4, 10, 50),
    "1000": (4, 50, 250),
    "1000-500": (2, 50, 500),
    "1000-25b": (4, 25, 250),
    "1000-100b": (4, 100, 250),
    "1000-200b": (4, 200, 250),
    "3000": (4, 150, 750),
    "gtex": (5, 60, 400),
}


def cohort(name: str, n_features: int, missing: float = 0.1, seed: int = 0):
    """Rows × features ``Y`` and the design of one of :data:`DESIGNS`."""
    reps, n_batch, n_donor = DESIGNS[name]
    rng = np.random.default_rng(seed)
    n = n_donor * reps
    donor = np.repeat(np.arange(n_donor), reps)
    batch = rng.permutation(np.arange(n) % n_batch)
    design = pd.DataFrame(
        {"batch": [f"B{b:03d}" for b in batch], "donor": [f"D{d:04d}" for d in donor]}
    )
    sd = rng.gamma(2.0, 0.3, size=(3, n_features)) * (rng.random((3, n_features)) > 0.2)
    Y = (
        rng.normal(size=(n_batch, n_features))[batch] * sd[0]
        + rng.normal(size=(n_donor, n_features))[donor] * sd[1]
        + rng.normal(size=(n, n_features)) * (0.3 + sd[2])
    )
    if name == "gtex":
        tissue = np.tile(np.arange(reps), n_donor)
        design["tissue"] = [f"T{t}" for t in tissue]
        Y += rng.normal(size=(reps, n_features))[tissue]
    else:
        treated = donor >= n_donor // 2
        design["condition"] = np.where(treated, "treated", "control")
        Y += treated[:, None] * rng.normal(size=n_features)
    Y[rng.random(Y.shape) < missing] = np.nan
    return Y, design


def _long(Y: np.ndarray, design: pd.DataFrame, k: int) -> pd.DataFrame:
    rows, features = np.nonzero(np.isfinite(Y[:, :k]))
    long = design.iloc[rows].reset_index(drop=True)
    long.insert(0, "feature", [f"F{f:05d}" for f in features])
    long["y"] = Y[rows, features]
    return long.sort_values("feature", kind="stable")


def bench_cohorts(names: list[str], n_features: int, lme4_features: int) -> None:
    use_lme4 = lme4_available()
    header = ("design", "samples", "q", "omixed ms/f", "lme4 ms/f", "ratio", "max Δcrit")
    print("{:>10} {:>7} {:>5} {:>12} {:>10} {:>8} {:>10}".format(*header))
    for name in names:
        Y, design = cohort(name, n_features)
        formula = GTEX if name == "gtex" else FORMULA
        names_ = [f"F{f:05d}" for f in range(Y.shape[1])]
        lmm.fit(Y[:, :20], design, formula)  # warm up
        start = time.perf_counter()
        res = lmm.fit(Y, design, formula, feature_names=names_)
        ours = 1e3 * (time.perf_counter() - start) / Y.shape[1]
        q = design["batch"].nunique() + design["donor"].nunique()
        peer, ratio, diff = np.nan, np.nan, np.nan
        if use_lme4:
            out = time_lme4(_long(Y, design, lme4_features), formula)
            peer, ratio = out["ms_per_feature"], out["ms_per_feature"] / ours
            crit = res.criterion.copy()
            diff = (crit.loc[out["crit"].index] - out["crit"]).max()
        print(
            f"{name:>10} {len(design):>7} {q:>5} {ours:>12.3f} {peer:>10.2f} {ratio:>8.1f} "
            f"{diff:>10.1e}"
        )
        assert res.converged.mean() > 0.99, res.reason.value_counts()


def _python_fit(code: str) -> dict:
    script = textwrap.dedent(code) + f"\n{PEAK_MIB}\nprint(json.dumps({{**out, 'peak_mib': peak}}))"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(run.stderr)
    return json.loads(run.stdout.strip().splitlines()[-1])


def _r(script: str) -> str:
    run = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(run.stderr)
    return run.stdout


def bench_insteval() -> None:
    if not lme4_available():
        print("InstEval: needs R with lme4 (the data ship with it)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "insteval.csv")
        _r(f'library(lme4); write.csv(InstEval, "{path}", row.names = FALSE)')
        peer = json.loads(
            _r(
                f"""
                suppressPackageStartupMessages(library(lme4))
                d <- read.csv("{path}")
                for (v in c("s", "d", "dept", "service")) d[[v]] <- factor(d[[v]])
                t <- proc.time()[["elapsed"]]
                fit <- lmer({INSTEVAL}, data = d, REML = TRUE)
                t <- proc.time()[["elapsed"]] - t
                peak <- as.numeric(strsplit(grep("VmHWM", readLines("/proc/self/status"),
                                                 value = TRUE), " +")[[1]][2]) / 1024
                cat(sprintf('{{"seconds": %.3f, "peak_mib": %.1f, "crit": %.8f}}\\n', t, peak,
                            REMLcrit(fit)))
                """
            ).splitlines()[-1]
        )
        ours = _python_fit(
            f"""
            import json, time
            import pandas as pd
            from omixed import lmm
            d = pd.read_csv("{path}")
            for v in ("s", "d", "dept", "service"):
                d[v] = d[v].astype(str)
            t = time.perf_counter()
            res = lmm.fit(d["y"].to_numpy(), d, "{INSTEVAL}")
            out = {{"seconds": time.perf_counter() - t, "crit": float(res.criterion.iloc[0]),
                   "converged": bool(res.converged.iloc[0])}}
            """
        )
    print(f"\n[InstEval] {INSTEVAL}: 73421 rows, 2972 × 1128 crossed")
    print(f"  omixed: {ours['seconds']:6.2f} s, peak RSS {ours['peak_mib']:6.0f} MiB")
    print(f"  lme4:   {peer['seconds']:6.2f} s, peak RSS {peer['peak_mib']:6.0f} MiB")
    print(
        f"  time omixed/lme4 {ours['seconds'] / peer['seconds']:.2f}, memory "
        f"{ours['peak_mib'] / peer['peak_mib']:.2f}; criterion omixed − lme4 "
        f"{ours['crit'] - peer['crit']:+.2e} (converged: {ours['converged']})"
    )


def bench_levels() -> None:
    common = """
        import json, time
        import numpy as np, pandas as pd
        from omixed import lmm
        rng = np.random.default_rng(0)
        n = 300_000
        g = rng.integers(0, 100_000, n)
        """
    ours = _python_fit(
        common
        + """
        b = rng.integers(0, 100, n)
        y = rng.normal(size=100_000)[g] + 0.5 * rng.normal(size=100)[b] + rng.normal(size=n)
        data = pd.DataFrame({"g": g, "b": b, "x": rng.normal(size=n)})
        t = time.perf_counter()
        res = lmm.fit(y, data.astype({"g": str, "b": str}), "y ~ x + (1|g) + (1|b)")
        out = {"seconds": time.perf_counter() - t, "converged": bool(res.converged.iloc[0])}
        """
    )
    print("\n[10^5 levels] y ~ x + (1|g) + (1|b): 300000 rows, 100000 levels of g, 100 of b")
    print(f"  omixed: {ours['seconds']:.2f} s, peak RSS {ours['peak_mib']:.0f} MiB")
    refused = _python_fit(
        common
        + """
        h = rng.integers(0, 100_000, n)
        data = pd.DataFrame({"g": g.astype(str), "h": h.astype(str), "x": rng.normal(size=n)})
        t = time.perf_counter()
        try:
            lmm.fit(rng.normal(size=n), data, "y ~ x + (1|g) + (1|h)")
            message = "fitted"
        except MemoryError as exc:
            message = str(exc)
        out = {"seconds": time.perf_counter() - t, "message": message}
        """
    )
    print("  y ~ x + (1|g) + (1|h), two crossed factors of 10^5 levels:")
    print(f"  omixed answers in {refused['seconds']:.2f} s: {refused['message']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=2000)
    parser.add_argument("--lme4-features", type=int, default=30)
    parser.add_argument("--only", choices=["cohorts", "insteval", "levels"])
    parser.add_argument(
        "--designs",
        nargs="+",
        default=["60", "200", "1000", "1000-500", "1000-200b", "3000", "gtex"],
        choices=list(DESIGNS),
    )
    args = parser.parse_args()
    if args.only in (None, "cohorts"):
        bench_cohorts(args.designs, args.features, args.lme4_features)
    if args.only in (None, "insteval"):
        bench_insteval()
    if args.only in (None, "levels"):
        bench_levels()


if __name__ == "__main__":
    main()
