"""Huber M-estimation: planted outliers, measured against the simulated truth."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from conftest import crossed_design

import omixed
from omixed import lmm

FORMULA = "~ condition + (1|batch) + (1|donor)"


def _planted(seed=0, n_features=200):
    rng = np.random.default_rng(seed)
    design = crossed_design(n_batch=4, n_donor=12, reps=3, seed=seed)
    b = pd.factorize(design["batch"])[0]
    d = pd.factorize(design["donor"])[0]
    effect = rng.normal(0, 1, n_features)
    treated = (design["condition"] == "treated").to_numpy(float)
    Y = (
        10
        + treated[:, None] * effect
        + rng.normal(0, 0.5, (4, n_features))[b]
        + rng.normal(0, 0.3, (12, n_features))[d]
        + rng.normal(0, 0.3, (len(design), n_features))
    )
    # 5 % of the values are off by +3 (a bad peptide, a failed injection).
    outlier = rng.random(Y.shape) < 0.05
    return design, Y + 3.0 * outlier, effect, outlier


def test_huber_weights_recover_the_effects():
    design, Y, effect, outlier = _planted()
    plain = lmm.fit(Y, design, FORMULA)
    robust, huber = lmm.fit_robust(Y, design, FORMULA)
    err_plain = np.abs(plain.beta["condition[T.treated]"] - effect)
    err_robust = np.abs(robust.beta["condition[T.treated]"] - effect)
    # Measured (seed 0): mean |β̂ − β| 0.241 plain vs 0.182 robust; outliers get weight 0.17 on
    # median, clean values 1.0.
    assert err_robust.mean() < 0.8 * err_plain.mean()
    assert np.median(huber[outlier]) < 0.5
    assert np.median(huber[~outlier]) == 1.0
    assert robust.notes.str.contains("Huber weights after").all()


def test_gaussian_data_keep_nearly_all_weight():
    design, _, _, _ = _planted(seed=1)
    G = np.random.default_rng(5).normal(size=(len(design), 200))
    plain = lmm.fit(G, design, FORMULA)
    robust, huber = lmm.fit_robust(G, design, FORMULA)
    # Measured: mean Huber weight 0.95 (Gaussian values beyond 1.345 σ are mildly down-weighted);
    # β moves by 0.19 SE on average, at most 0.86 SE.
    assert np.nanmean(huber) > 0.94
    assert (np.abs(plain.beta - robust.beta) / plain.se).mean().mean() < 0.3


def test_tl_fit_robust_stores_weights():
    design, Y, _, _ = _planted(n_features=20)
    adata = ad.AnnData(
        Y, obs=design.astype("category").set_axis([f"S{i}" for i in range(len(design))])
    )
    omixed.tl.fit(adata, FORMULA, robust=True, progress=False)
    assert adata.layers["lmm_huber"].shape == adata.shape
    assert (adata.layers["lmm_huber"] <= 1.0).all()


def test_summarize_proteins_robust_downweights_a_bad_peptide_value():
    peptides = omixed.datasets.example_peptides()[:, :60].copy()
    clean = omixed.tl.summarize_proteins(peptides, progress=False)
    assert np.isfinite(peptides.X[0, 0])
    spoiled = peptides.copy()
    spoiled.X[0, 0] += 8.0  # one wild value in one peptide of one sample
    plain = omixed.tl.summarize_proteins(spoiled, progress=False)
    robust = omixed.tl.summarize_proteins(spoiled, robust=True, progress=False)
    protein = peptides.var["protein"].iloc[0]
    shift_plain = abs(plain[0, protein].X.item() - clean[0, protein].X.item())
    shift_robust = abs(robust[0, protein].X.item() - clean[0, protein].X.item())
    assert shift_robust < 0.5 * shift_plain
