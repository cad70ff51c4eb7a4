"""Satterthwaite tests cost next to the fit: 20 000 features, crossed batch + donor, one run.

Prints the fit time, the time of ``omixed.tl.test`` (Satterthwaite df, with and without
variance moderation) and their ratios to the fit.  Issue goal: the tests add at most the fit's
own time.

Usage: ``python benchmarks/bench_inference.py [--features 20000]``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import anndata as ad
import numpy as np
import pandas as pd

import omixed


def data(n_features: int, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    n_donor, reps, n_batch = 16, 3, 4
    donor = np.repeat(np.arange(n_donor), reps)
    batch = rng.permutation(np.arange(donor.size) % n_batch)
    obs = pd.DataFrame(
        {
            "batch": [f"B{b}" for b in batch],
            "donor": [f"D{d:02d}" for d in donor],
            "condition": np.where(donor < n_donor // 2, "control", "treated"),
        },
        index=[f"S{i:02d}" for i in range(donor.size)],
    ).astype("category")
    Y = (
        rng.normal(0, 0.7, (n_batch, n_features))[batch]
        + rng.normal(0, 0.5, (n_donor, n_features))[donor]
        + rng.normal(0, 0.4, (donor.size, n_features))
        + (obs["condition"] == "treated").to_numpy()[:, None] * rng.normal(0, 0.5, n_features)
    )
    Y[rng.random(Y.shape) < 0.05] = np.nan
    return ad.AnnData(Y, obs=obs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=20_000)
    args = parser.parse_args()
    adata = data(args.features)
    warnings.simplefilter("ignore", UserWarning)
    t = time.perf_counter()
    omixed.tl.fit(adata, "~ condition + (1|batch) + (1|donor)", progress=False)
    fit = time.perf_counter() - t
    print(f"fit:                         {fit:7.2f} s  ({args.features} features × {adata.n_obs})")
    for moderate in (False, True):
        t = time.perf_counter()
        omixed.tl.test(adata, contrast="condition[T.treated]", moderate=moderate)
        took = time.perf_counter() - t
        label = "Satterthwaite + moderation" if moderate else "Satterthwaite"
        print(f"{label + ':':<28} {took:7.2f} s  = {took / fit:.2f} × the fit")


if __name__ == "__main__":
    main()
