"""Correcting new samples with a saved fit: closed forms and consistency with tl.correct."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import omixed


def _data(seed=3, n_features=30):
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(
        {
            "batch": np.repeat([f"B{i}" for i in range(5)], 10),
            "donor": [f"D{i % 12:02d}" for i in range(50)],
            "condition": np.tile(["a", "b"], 25),
        },
        index=[f"S{i:02d}" for i in range(50)],
    ).astype("category")
    b = obs["batch"].cat.codes.to_numpy()
    d = obs["donor"].cat.codes.to_numpy()
    Y = (
        10
        + (obs["condition"] == "b").to_numpy()[:, None] * rng.normal(1, 0.3, n_features)
        + rng.normal(0, 0.8, (5, n_features))[b]
        + rng.normal(0, 0.4, (12, n_features))[d]
        + rng.normal(0, 0.5, (50, n_features))
    )
    Y[rng.random(Y.shape) < 0.1] = np.nan
    return ad.AnnData(Y, obs=obs, var=pd.DataFrame(index=[f"F{i}" for i in range(n_features)]))


def test_new_batch_blup_matches_the_one_term_closed_form():
    data = _data()
    ref = data[data.obs["batch"] != "B4"].copy()
    omixed.tl.fit(ref, "~ condition + (1|batch)", progress=False)
    new = data[data.obs["batch"] == "B4"].copy()
    omixed.tl.transform(new, ref, remove=["batch"])
    beta = ref.varm["lmm_beta"].to_numpy()
    X = np.column_stack([np.ones(new.n_obs), (new.obs["condition"] == "b").to_numpy(float)])
    r = new.X - X @ beta.T
    n = np.isfinite(r).sum(axis=0)
    s2b = ref.varm["lmm_variance"]["batch"].to_numpy()
    s2 = ref.varm["lmm_variance"]["Residual"].to_numpy()
    expected = s2b * np.nansum(r, axis=0) / (s2 + n * s2b)  # BLUP of a new level, one term
    np.testing.assert_allclose(new.varm["lmm_new_blup_batch"]["B4"], expected, rtol=1e-10)
    corrected = new.X - expected[None, :]
    np.testing.assert_allclose(new.layers["corrected"], corrected, rtol=1e-12)
    assert new.uns["lmm_transform"]["new_levels"]["batch"] == ["B4"]


def test_known_levels_reproduce_correct_with_blups():
    data = _data()
    omixed.tl.fit(data, "~ condition + (1|batch) + (1|donor)", progress=False)
    again = data.copy()
    omixed.tl.transform(again, data, remove=["batch"])
    omixed.tl.correct(data, remove=["batch"], method="blup")
    np.testing.assert_allclose(again.layers["corrected"], data.layers["corrected"], rtol=1e-13)
    assert again.uns["lmm_transform"]["new_levels"] == {"batch": [], "donor": []}


def test_new_batch_and_new_donors_match_a_dense_per_feature_solve(tmp_path):
    data = _data(seed=5)
    new_rows = (data.obs["batch"] == "B4") | data.obs["donor"].isin(["D10", "D11"])
    ref = data[~new_rows].copy()
    omixed.tl.fit(ref, "~ condition + (1|batch) + (1|donor)", progress=False)
    ref.write_h5ad(tmp_path / "ref.h5ad")  # a saved fit, reloaded
    ref = ad.read_h5ad(tmp_path / "ref.h5ad")
    new = data[new_rows].copy()
    omixed.tl.transform(new, ref, remove=["batch", "donor"])
    beta = ref.varm["lmm_beta"].to_numpy()
    var = ref.varm["lmm_variance"]
    X = np.column_stack([np.ones(new.n_obs), (new.obs["condition"] == "b").to_numpy(float)])
    batch = new.obs["batch"].astype(str).to_numpy()
    donor = new.obs["donor"].astype(str).to_numpy()
    blup_b, blup_d = ref.varm["lmm_blup_batch"], ref.varm["lmm_blup_donor"]
    for f in range(new.n_vars):  # one feature at a time, full matrices
        y = new.X[:, f]
        o = np.isfinite(y)
        r = y - X @ beta[f]
        for labels, saved in ((batch, blup_b), (donor, blup_d)):
            known = np.isin(labels, saved.columns)
            r[known] -= saved.iloc[f][labels[known]].to_numpy()
        Zb = (batch[:, None] == np.array(["B4"])[None]).astype(float)
        new_d = sorted(set(donor) - set(blup_d.columns))
        Zd = (donor[:, None] == np.array(new_d)[None]).astype(float)
        V = var["Residual"].iloc[f] * np.eye(o.sum())
        V += var["batch"].iloc[f] * Zb[o] @ Zb[o].T + var["donor"].iloc[f] * Zd[o] @ Zd[o].T
        w = np.linalg.solve(V, r[o])
        np.testing.assert_allclose(
            new.varm["lmm_new_blup_batch"]["B4"].iloc[f],
            var["batch"].iloc[f] * Zb[o].T @ w,
            rtol=1e-9,
        )
        np.testing.assert_allclose(
            new.varm["lmm_new_blup_donor"][new_d].iloc[f],
            var["donor"].iloc[f] * Zd[o].T @ w,
            rtol=1e-9,
        )


def test_bad_inputs_are_named():
    data = _data()
    ref = data[data.obs["batch"] != "B4"].copy()
    omixed.tl.fit(ref, "~ condition + (1|batch)", progress=False)
    new = data[data.obs["batch"] == "B4"].copy()
    extra = ad.AnnData(
        np.hstack([new.X, new.X[:, :2]]),
        obs=new.obs,
        var=pd.DataFrame(index=[*new.var_names, "X1", "X2"]),
    )
    with pytest.raises(ValueError, match=r"2 feature\(s\) are not in the reference"):
        omixed.tl.transform(extra, ref)
    odd = new.copy()
    odd.obs["condition"] = pd.Categorical(["c"] * odd.n_obs)
    with pytest.raises(ValueError, match=r"level.*fixed effects that the model never saw"):
        omixed.tl.transform(odd, ref)
    with pytest.raises(ValueError, match="cannot remove"):
        omixed.tl.transform(new, ref, remove=["plate"])
