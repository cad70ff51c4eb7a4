"""Batch correction quality against a known batch-free truth: omixed's methods and peers.

Each design simulates ``y = truth + batch``: 16 donors (8 per condition, random) × 3 samples
spread over 5 batches (crossed), 2000 features with their own donor and residual SDs and 30 %
differentially abundant between conditions; every batch has a shift shared by all features plus
a feature-specific shift.  Designs cross three choices: biology balanced across batches or not
(controls mostly in the first batches, treated in the last); no missing values or
intensity-dependent ones (≈ 15 %, as in proteomics: about a quarter of the features complete);
batch shifts of the same size in every feature (``absolute``: shared SD 0.5, feature-specific
SD ≈ 0.4) or proportional to each feature's SD (``scaled``, ComBat's assumption: SD 1 and 0.8
times the feature's SD, which is 0.57 on average).

Methods: ``omixed.tl.correct`` with ``"blup"``, ``"full"``, ``"eb"`` and ``"eb"`` with
``scale=True`` after ``~ condition + (1|batch) + (1|donor)``; peers: ``scanpy.pp.combat`` with
the condition as covariate (complete features only: it takes no missing values) and a
limma-style ``removeBatchEffect`` (OLS ``y ~ condition + batch``, sum coding, per feature on its
observed values).  Metrics, on the features complete in the data (the set every method
corrects), averaged over seeds:

* ``RMSE``: root mean squared difference to the truth, each feature centred (its mean is not
  identifiable); ``RMSE all``: the same over every feature (omixed and limma only);
* ``R² batch``: median over features of the partial R² of batch in OLS ``y ~ condition + batch``
  (the truth itself has some: the noise of 48 samples is never orthogonal to batch);
* ``sil cond`` / ``sil batch``: silhouette of the samples by condition / by batch on the top
  5 principal components (higher by condition and lower by batch is better).

A last table sums up RMSE and R² batch per design, and counts in how many runs (design × seed)
each omixed method was closest to the truth.

Usage: ``python benchmarks/bench_correction.py [--seeds N] [--figure PATH]``.  ``--figure``
writes :func:`omixed.pl.pca_compare` of the methods on one design (unbalanced, missing values,
absolute shifts), samples coloured by batch.  Runs in under 2 minutes with 3 seeds.
"""

from __future__ import annotations

import argparse
import time
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from sklearn.metrics import silhouette_score

import omixed

FORMULA = "~ condition + (1|batch) + (1|donor)"
N_BATCH, N_DONOR, REPS, N_FEATURES = 5, 16, 3, 2000
# Samples of each condition per batch (24 each): balanced, or controls in the early batches.
LAYOUT = {
    "balanced": ([5, 5, 5, 5, 4], [4, 5, 5, 5, 5]),
    "unbalanced": ([8, 7, 5, 3, 1], [1, 3, 5, 7, 8]),
}
OMIXED = {"blup": {"method": "blup"}, "full": {"method": "full"}, "eb": {"method": "eb"}}
OMIXED["eb+scale"] = {"method": "eb", "scale": True}


def simulate(layout: str, missing: bool, shifts: str, seed: int) -> tuple[ad.AnnData, np.ndarray]:
    """AnnData of observed values (``X``) and the batch-free truth (samples × features)."""
    rng = np.random.default_rng(seed)
    donor = np.repeat(np.arange(N_DONOR), REPS)
    treated = donor >= N_DONOR // 2
    batch = np.empty(donor.size, dtype=int)
    for flag, counts in zip((False, True), LAYOUT[layout], strict=True):
        rows = rng.permutation(np.flatnonzero(treated == flag))
        batch[rows] = np.repeat(np.arange(N_BATCH), counts)
    obs = pd.DataFrame(
        {
            "batch": [f"B{b}" for b in batch],
            "donor": [f"D{d:02d}" for d in donor],
            "condition": np.where(treated, "treated", "control"),
        },
        index=[f"S{i:02d}" for i in range(donor.size)],
    ).astype("category")
    f = N_FEATURES
    effect = rng.normal(0, 1, f) * (rng.random(f) < 0.3)
    sd_donor, sd_resid = rng.gamma(2, 0.2, f), rng.gamma(4, 0.1, f)
    truth = (
        rng.normal(20, 1.5, f)
        + treated[:, None] * effect
        + rng.normal(size=(N_DONOR, f))[donor] * sd_donor
        + rng.normal(size=(donor.size, f)) * sd_resid
    )
    if shifts == "absolute":
        shared = rng.normal(0, 0.5, N_BATCH)[:, None]
        shift = shared + rng.normal(size=(N_BATCH, f)) * rng.gamma(2, 0.2, f)
    else:
        shared = rng.normal(0, 1.0, N_BATCH)[:, None]
        shift = (shared + rng.normal(0, 0.8, (N_BATCH, f))) * np.hypot(sd_donor, sd_resid)
    Y = truth + shift[batch]
    if missing:  # detection limit: low values go missing more often, plus 1 % at random
        p = 1 / (1 + np.exp((Y - 17.8) / 0.4)) + 0.01
        Y[rng.random(Y.shape) < p] = np.nan
    return ad.AnnData(Y, obs=obs, var=pd.DataFrame(index=[f"F{i:04d}" for i in range(f)])), truth


def limma_style(Y: np.ndarray, obs: pd.DataFrame) -> np.ndarray:
    """limma's ``removeBatchEffect``: OLS ``y ~ condition + batch`` (sum coding), minus batch."""
    cond = (obs["condition"] == "treated").to_numpy(float)
    levels = obs["batch"].cat.categories
    S = np.stack([(obs["batch"] == lv).to_numpy(float) for lv in levels[:-1]], axis=1)
    S[(obs["batch"] == levels[-1]).to_numpy()] = -1.0
    X = np.column_stack([np.ones(len(obs)), cond, S])
    W = np.isfinite(Y).T.astype(float)  # features × samples
    Y0 = np.nan_to_num(Y).T
    XtWX = np.einsum("ni,fn,nj->fij", X, W, X)
    XtWy = np.einsum("ni,fn,fn->fi", X, W, Y0)
    # pinv: a batch with no value in a feature leaves its coefficient free (and unused).
    coef = np.einsum("fij,fj->fi", np.linalg.pinv(XtWX, hermitian=True), XtWy)
    return Y - S @ coef[:, 2:].T


def combat(adata: ad.AnnData, complete: np.ndarray) -> np.ndarray:
    """``scanpy.pp.combat`` with condition as covariate on the complete features (NaN elsewhere).

    The condition is passed as a 0/1 number: scanpy codes a categorical covariate with one
    column per level, which is collinear with its batch indicators (a singular design).
    """
    sub = adata[:, complete].copy()
    sub.obs = pd.DataFrame(
        {"batch": sub.obs["batch"], "treated": (sub.obs["condition"] == "treated").astype(float)}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.combat(sub, key="batch", covariates=["treated"])
    out = np.full(adata.shape, np.nan)
    out[:, complete] = sub.X
    return out


def partial_r2(Y: np.ndarray, obs: pd.DataFrame) -> float:
    """Median partial R² of batch in OLS ``y ~ condition + batch`` (complete features)."""
    cond = pd.get_dummies(obs["condition"], drop_first=True).to_numpy(float)
    batch = pd.get_dummies(obs["batch"], drop_first=True).to_numpy(float)
    X0 = np.column_stack([np.ones(len(obs)), cond])
    X1 = np.column_stack([X0, batch])

    def rss(X):
        return np.sum((Y - X @ np.linalg.lstsq(X, Y, rcond=None)[0]) ** 2, axis=0)

    r0 = rss(X0)
    return float(np.median((r0 - rss(X1)) / r0))


def top_pcs(Y: np.ndarray, n_pcs: int = 5) -> np.ndarray:
    """Sample scores on the top principal components (eigenvectors of the samples' Gram matrix)."""
    centred = Y - Y.mean(axis=0)
    w, U = np.linalg.eigh(centred @ centred.T)
    top = np.argsort(w)[::-1][:n_pcs]
    return U[:, top] * np.sqrt(np.maximum(w[top], 0.0))


def rmse(Y: np.ndarray, truth: np.ndarray) -> float:
    """RMSE to the truth over the observed values, both centred per feature on those values."""
    keep = np.isfinite(Y).any(axis=0)  # features without any value have nothing to compare
    Y, truth = Y[:, keep], truth[:, keep]
    observed = np.isfinite(Y)
    t = np.where(observed, truth, np.nan)
    diff = (Y - np.nanmean(Y, axis=0)) - (t - np.nanmean(t, axis=0))
    return float(np.sqrt(np.nanmean(diff**2)))


def run_design(layout: str, missing: bool, shifts: str, seed: int) -> tuple[dict, ad.AnnData]:
    """Metrics of every method on one simulated design; the AnnData holds one layer per method."""
    adata, truth = simulate(layout, missing, shifts, seed)
    seconds = {}
    start = time.perf_counter()
    with warnings.catch_warnings():  # features not fit are counted in the report instead
        warnings.simplefilter("ignore", UserWarning)
        omixed.tl.fit(adata, FORMULA, progress=False)
    seconds["fit"] = time.perf_counter() - start
    for name, kwargs in OMIXED.items():
        start = time.perf_counter()
        omixed.tl.correct(adata, remove=["batch"], layer_added=name, **kwargs)
        seconds[name] = time.perf_counter() - start
    complete = np.isfinite(adata.X).all(axis=0)
    adata.layers["limma"] = limma_style(adata.X, adata.obs)
    start = time.perf_counter()
    adata.layers["ComBat"] = combat(adata, complete)
    seconds["ComBat"] = time.perf_counter() - start
    adata.layers["truth"] = np.where(np.isfinite(adata.X), truth, np.nan)
    rows = {}
    for name in ["raw", *OMIXED, "limma", "ComBat", "truth"]:
        Y = adata.X if name == "raw" else adata.layers[name]
        C = Y[:, complete]
        pcs = top_pcs(C)
        rows[name] = {
            "RMSE": rmse(C, truth[:, complete]),
            "RMSE all": np.nan if name == "ComBat" else rmse(Y, truth),
            "R² batch": partial_r2(C, adata.obs),
            "sil cond": float(silhouette_score(pcs, adata.obs["condition"])),
            "sil batch": float(silhouette_score(pcs, adata.obs["batch"])),
            "seconds": seconds.get(name, np.nan),
        }
    rows["_info"] = {
        "complete": int(complete.sum()),
        "missing": float(np.isnan(adata.X).mean()),
        "fit": seconds["fit"],
        "not fit": adata.uns["lmm"]["n_failed"],
    }
    return rows, adata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="simulations per design")
    parser.add_argument("--figure", help="write a PCA comparison of the methods to this PNG")
    args = parser.parse_args()
    pd.set_option("display.width", 120)
    figure_data, summary, wins = None, {}, []
    for shifts in ("absolute", "scaled"):
        for layout in LAYOUT:
            for missing in (False, True):
                runs = []
                for seed in range(args.seeds):
                    rows, adata = run_design(layout, missing, shifts, seed)
                    runs.append(rows)
                    wins.append(min(OMIXED, key=lambda m: rows[m]["RMSE"]))
                    if (shifts, layout, missing, seed) == ("absolute", "unbalanced", True, 0):
                        figure_data = adata
                info = pd.DataFrame([r.pop("_info") for r in runs]).mean()
                table = sum(pd.DataFrame(r).T for r in runs) / len(runs)
                name = f"{shifts}, {layout}, {'missing' if missing else 'complete'}"
                print(
                    f"\n[{name}] {N_FEATURES} features × {N_DONOR * REPS} samples, {N_BATCH} "
                    f"batches; mean of {args.seeds} seeds: {info['missing']:.1%} missing, "
                    f"{info['complete']:.0f} complete features, {info['not fit']:.0f} not fit "
                    f"(too few values); tl.fit {info['fit']:.2f} s"
                )
                print(table.to_string(float_format=lambda v: f"{v:8.4f}", na_rep="       -"))
                summary[name] = pd.concat(
                    {"RMSE": table["RMSE"], "R² batch": table["R² batch"]}
                ).drop(["raw", "truth"], level=1)
    print("\n[summary] RMSE to the truth and R² of batch on complete features, per design")
    print(pd.DataFrame(summary).T.to_string(float_format=lambda v: f"{v:.4f}"))
    counts = pd.Series(wins).value_counts().reindex(list(OMIXED), fill_value=0)
    print(f"lowest RMSE of the omixed methods, of {len(wins)} runs: {counts.to_dict()}")
    if args.figure and figure_data is not None:
        layers = {"raw": None, "truth": "truth", "blup": "blup", "full": "full", "eb": "eb"}
        layers |= {"limma": "limma", "ComBat": "ComBat"}
        omixed.pl.pca_compare(figure_data, layers=layers, color="batch", save=args.figure)
        print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
