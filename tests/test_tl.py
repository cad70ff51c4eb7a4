"""AnnData API: fit, correct, variance partition — storage, invariances and correction quality."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import crossed_design, simulate
from sklearn.metrics import silhouette_score

import omixed
from omixed import lmm

FORMULA = "~ condition + (1|batch) + (1|donor)"


def _adata(n_features=60, missing=0.1, seed=1, **kw) -> ad.AnnData:
    design = crossed_design(**kw)
    Y = simulate(design, n_features=n_features, missing=missing, seed=seed)
    obs = design.astype("category").set_axis([f"S{i:02d}" for i in range(len(design))])
    return ad.AnnData(Y, obs=obs, var=pd.DataFrame(index=[f"F{i:03d}" for i in range(n_features)]))


@pytest.fixture(scope="module")
def fitted() -> ad.AnnData:
    adata = _adata()
    omixed.tl.fit(adata, FORMULA, progress=False)
    return adata


def test_fit_stores_engine_results(fitted):
    direct = lmm.fit(fitted.X, fitted.obs, FORMULA)
    np.testing.assert_array_equal(fitted.var["lmm_criterion"], direct.criterion)
    np.testing.assert_array_equal(fitted.varm["lmm_beta"].to_numpy(), direct.beta.to_numpy())
    np.testing.assert_array_equal(
        fitted.varm["lmm_blup_batch"].to_numpy(), direct.blup["batch"].to_numpy()
    )
    assert list(fitted.varm["lmm_variance"].columns) == ["batch", "donor", "Residual"]
    assert list(fitted.varm["lmm_beta"].columns) == ["Intercept", "condition[T.treated]"]
    info = fitted.uns["lmm"]
    assert info["formula"] == FORMULA and info["reml"] is True
    assert info["terms"]["batch"]["levels"] == ["B0", "B1", "B2", "B3"]
    assert info["n_converged"] + info["n_failed"] == fitted.n_vars
    assert info["nested_in"] == {"donor": ["condition"]}


def test_fit_is_independent_of_jobs_and_chunks(fitted):
    for kwargs in ({"n_jobs": 2}, {"chunk_size": 9}):
        other = omixed.tl.fit(fitted, FORMULA, copy=True, progress=False, **kwargs)
        np.testing.assert_array_equal(other.var["lmm_criterion"], fitted.var["lmm_criterion"])
        np.testing.assert_array_equal(
            other.varm["lmm_se"].to_numpy(), fitted.varm["lmm_se"].to_numpy()
        )


def test_results_survive_h5ad_round_trip(fitted, tmp_path):
    adata = fitted.copy()
    omixed.tl.correct(adata)
    omixed.tl.variance_partition(adata)
    adata.write_h5ad(tmp_path / "fit.h5ad")
    back = ad.read_h5ad(tmp_path / "fit.h5ad")
    for key in adata.varm:
        pd.testing.assert_frame_equal(back.varm[key], adata.varm[key])
    pd.testing.assert_frame_equal(back.var, adata.var)
    np.testing.assert_array_equal(back.layers["corrected"], adata.layers["corrected"])
    assert (
        list(back.uns["lmm"]["terms"]["donor"]["levels"])
        == adata.uns["lmm"]["terms"]["donor"]["levels"]
    )
    # A reloaded fit can be used for correction again.
    omixed.tl.correct(back, layer_added="again")
    np.testing.assert_array_equal(back.layers["again"], adata.layers["corrected"])


def test_correct_subtracts_blups_and_keeps_missing(fitted):
    adata = fitted.copy()
    omixed.tl.correct(adata, remove=["batch"], method="blup")
    blup = adata.varm["lmm_blup_batch"]
    expected = adata.X - blup.loc[:, adata.obs["batch"].astype(str)].to_numpy().T
    np.testing.assert_allclose(adata.layers["corrected"], expected)
    assert np.array_equal(np.isnan(adata.layers["corrected"]), np.isnan(adata.X))
    assert adata.uns["lmm_correct"]["removed"] == ["batch"]


def test_correct_removes_fixed_covariate_like_limma():
    adata = _adata(n_features=5, missing=0.0)
    adata.obs["age"] = np.linspace(20, 60, adata.n_obs)
    adata.X = adata.X + 0.05 * adata.obs["age"].to_numpy()[:, None]
    omixed.tl.fit(adata, "~ condition + age + (1|batch)", progress=False)
    omixed.tl.correct(adata, remove=["age"])
    beta_age = adata.varm["lmm_beta"]["age"].to_numpy()
    expected = adata.X - np.outer(adata.obs["age"], beta_age)
    np.testing.assert_allclose(adata.layers["corrected"], expected)


def test_correct_refuses_terms_not_in_the_fit(fitted):
    with pytest.raises(
        ValueError, match=r"cannot remove \['plate'\].*random terms: \['batch', 'donor'\]"
    ):
        omixed.tl.correct(fitted, remove=["plate"], copy=True)
    with pytest.raises(KeyError, match=r"run omixed\.tl\.fit"):
        omixed.tl.correct(fitted, key="nothing", copy=True)


def test_variance_partition_sums_to_one_and_tracks_truth():
    adata = _adata(n_features=200, missing=0.0, n_batch=6, n_donor=12, reps=4)
    omixed.tl.fit(adata, FORMULA, progress=False)
    vp = omixed.tl.variance_partition(adata)
    assert list(vp.columns) == ["batch", "donor", "condition", "Residual"]
    np.testing.assert_allclose(vp.sum(axis=1), 1.0)
    assert ((vp >= 0) & (vp <= 1)).all().all()
    # Simulated SDs 0.7 / 0.5 / 0.4: batch > donor > residual in the median feature.
    med = vp.median()
    assert med["batch"] > med["donor"] > med["Residual"]


def test_errors_name_the_problem(fitted):
    with pytest.raises(ValueError, match=r"'plate'.*available columns"):
        omixed.tl.fit(fitted, "~ condition + (1|plate)", copy=True)
    with pytest.raises(KeyError, match="layer 'counts' not found"):
        omixed.tl.fit(fitted, FORMULA, layer="counts", copy=True)
    with pytest.raises(ValueError, match="empty"):
        omixed.tl.fit(fitted[:, :0].copy(), FORMULA)
    dup = fitted.copy()
    dup.var_names = ["F000"] * dup.n_vars
    with pytest.raises(ValueError, match="duplicated feature names"):
        omixed.tl.fit(dup, FORMULA)
    confounded = _adata(n_features=3, n_batch=2)
    confounded.obs["batch"] = confounded.obs["condition"].map({"control": "B0", "treated": "B1"})
    with pytest.warns(UserWarning, match="completely confounded with 'condition'"):
        omixed.tl.fit(confounded, FORMULA, progress=False)


def _partial_r2(Y: np.ndarray, obs: pd.DataFrame, term: str, other: str) -> float:
    """Median over features of the partial R² of ``term`` in ``y ~ other + term`` (OLS)."""
    t = pd.get_dummies(obs[term], drop_first=True).to_numpy(float)
    o = pd.get_dummies(obs[other], drop_first=True).to_numpy(float)
    X0 = np.column_stack([np.ones(len(obs)), o])
    X1 = np.column_stack([X0, t])

    def rss(X, y):
        return float(np.sum((y - X @ np.linalg.lstsq(X, y, rcond=None)[0]) ** 2))

    vals = [(rss(X0, y) - rss(X1, y)) / rss(X0, y) for y in Y.T]
    return float(np.median(vals))


def _silhouette(Y: np.ndarray, labels) -> float:
    Z = Y - Y.mean(axis=0)
    u, s, _ = np.linalg.svd(Z, full_matrices=False)
    return float(silhouette_score(u[:, :5] * s[:5], labels))


def test_correction_removes_batch_and_keeps_biology():
    # Balanced design, large batch effects, condition effect on every feature.
    rng = np.random.default_rng(7)
    n_batch, per = 4, 12
    obs = pd.DataFrame(
        {
            "batch": np.repeat([f"B{i}" for i in range(n_batch)], per),
            "condition": np.tile(["control", "treated"], n_batch * per // 2),
            "donor": [f"D{i % 16:02d}" for i in range(n_batch * per)],
        }
    ).astype("category")
    n_features = 300
    b = obs["batch"].cat.codes.to_numpy()
    d = obs["donor"].cat.codes.to_numpy()
    truth = (
        rng.normal(10, 1, n_features)
        + (obs["condition"] == "treated").to_numpy()[:, None] * rng.normal(0.8, 0.3, n_features)
        + rng.normal(0, 0.3, (16, n_features))[d]
        + rng.normal(0, 0.3, (len(obs), n_features))
    )
    Y = truth + rng.normal(0, 1.5, (n_batch, n_features))[b]
    adata = ad.AnnData(Y, obs=obs.set_axis([f"S{i}" for i in range(len(obs))]))
    omixed.tl.fit(adata, FORMULA, progress=False)
    omixed.tl.correct(adata, remove=["batch"], layer_added="blup")
    omixed.tl.correct(adata, remove=["batch"], method="full", layer_added="full")

    def centred(v):
        return v - v.mean(axis=0)

    rmse = {
        m: float(np.sqrt(np.mean((centred(adata.layers[m]) - centred(truth)) ** 2)))
        for m in ("blup", "full")
    }

    before = _partial_r2(Y, obs, "batch", "condition")
    cond_before = _partial_r2(Y, obs, "condition", "batch")
    sil_before = _silhouette(Y, obs["condition"])
    # Measured: batch share 0.90 before; 0.0063 after "blup" (BLUPs shrink: a sliver of each
    # batch's shift stays) and 0.0066 after "full" (GLS batch effects with donors random differ
    # from the OLS batch means this metric uses); the batch-free truth itself has 0.033 (noise).
    assert before > 0.5
    assert _partial_r2(adata.layers["blup"], obs, "batch", "condition") < 0.01
    assert _partial_r2(adata.layers["full"], obs, "batch", "condition") < 0.01
    for m in ("blup", "full"):
        cond_after = _partial_r2(adata.layers[m], obs, "condition", "batch")
        assert abs(cond_after - cond_before) <= 0.05 * cond_before
        assert _silhouette(adata.layers[m], obs["condition"]) > sil_before + 0.1
    # Distance to the batch-free truth (per-feature centred): measured 1.3 raw, 0.075 after both.
    raw = float(np.sqrt(np.mean((centred(Y) - centred(truth)) ** 2)))
    assert max(rmse.values()) < 0.1 * raw


def test_full_removal_without_other_random_terms_equals_limma():
    """With batch the only random term, "full" is limma's removeBatchEffect (sum-to-zero OLS)."""
    adata = _adata(n_features=40, missing=0.0, n_batch=4, n_donor=8, reps=3)
    omixed.tl.fit(adata, "~ condition + (1|batch)", progress=False)
    omixed.tl.correct(adata, remove=["batch"], method="full")
    obs = adata.obs
    cond = pd.get_dummies(obs["condition"], drop_first=True).to_numpy(float)
    levels = obs["batch"].cat.categories
    sum_coded = np.stack([(obs["batch"] == lv).to_numpy(float) for lv in levels[:-1]], axis=1)
    sum_coded[(obs["batch"] == levels[-1]).to_numpy()] = -1.0
    X = np.column_stack([np.ones(adata.n_obs), cond, sum_coded])
    coef = np.linalg.lstsq(X, adata.X, rcond=None)[0]
    limma = adata.X - sum_coded @ coef[2:]
    np.testing.assert_allclose(adata.layers["corrected"], limma, rtol=1e-9, atol=1e-9)
    assert _partial_r2(adata.layers["corrected"], obs, "batch", "condition") < 1e-20


def test_failed_features_are_summarised_in_a_warning_and_uns():
    adata = _adata(n_features=6)
    adata.X[:, 2] = np.nan
    adata.X[:, 4] = 5.0
    with pytest.warns(
        UserWarning, match=r"2 of 6 features were not fit .*all values missing \(1\)"
    ):
        omixed.tl.fit(adata, FORMULA, progress=False)
    info = adata.uns["lmm"]
    assert info["failures"] == {"all values missing": 1, "constant values": 1}
    assert info["n_failed"] == 2 and info["n_converged"] == 4
    assert adata.var["lmm_reason"].iloc[2] == "all values missing"
    omixed.tl.correct(adata)
    np.testing.assert_array_equal(adata.layers["corrected"][:, 4], adata.X[:, 4])  # left as is


def test_correct_removes_random_slopes_times_covariate(classic_data):
    data = classic_data("sleepstudy.csv")
    obs = data[["Days", "Subject"]].assign(Subject=lambda d: d["Subject"].astype(str))
    Y = np.column_stack([data["Reaction"], data["Reaction"] * 0.5 + np.arange(len(data)) % 3])
    adata = ad.AnnData(Y, obs=obs.set_axis([f"s{i}" for i in range(len(obs))]))
    omixed.tl.fit(adata, "~ Days + (1|Subject) + (0 + Days|Subject)", progress=False)
    assert adata.uns["lmm"]["terms"]["Subject.Days"]["covariate"] == "Days"
    omixed.tl.correct(adata, remove=["Subject.Days"], method="blup")
    slope = adata.varm["lmm_blup_Subject.Days"].loc[:, obs["Subject"]].to_numpy().T
    np.testing.assert_allclose(
        adata.layers["corrected"], Y - slope * obs["Days"].to_numpy()[:, None]
    )
