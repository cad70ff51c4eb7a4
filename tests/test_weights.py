"""Precision weights: closed forms and an independent likelihood."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import crossed_design, simulate
from scipy import optimize

from omixed import lmm

FORMULA = "~ condition + (1|batch) + (1|donor)"


def test_constant_weights_change_only_the_unit_variance():
    design = crossed_design()
    Y = simulate(design, n_features=6, missing=0.1)
    plain = lmm.fit(Y, design, FORMULA)
    weighted = lmm.fit(Y, design, FORMULA, weights=np.full(Y.shape, 4.0))
    # Var(ε) = σ²/4: the same model with σ² four times larger; −Σ log w keeps the criterion.
    # The two fits see differently rounded cross-products, so θ agrees to the optimizer's
    # tolerance (criterion 1e-10, θ 1e-7 relative), not to machine precision.
    np.testing.assert_allclose(weighted.criterion, plain.criterion, rtol=1e-10)
    np.testing.assert_allclose(weighted.beta, plain.beta, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(
        weighted.variance["Residual"], 4 * plain.variance["Residual"], rtol=1e-6
    )
    np.testing.assert_allclose(weighted.variance["batch"], plain.variance["batch"], rtol=1e-6)


def test_weighted_least_squares_closed_form_without_random_effects():
    rng = np.random.default_rng(1)
    design = crossed_design()
    n = len(design)
    X = np.column_stack([np.ones(n), (design["condition"] == "treated").to_numpy(float)])
    y = X @ [2.0, 1.0] + rng.normal(size=n)
    w = rng.uniform(0.2, 3.0, size=n)
    res = lmm.fit(y, design, "~ condition", weights=w)
    XtWX = X.T @ (w[:, None] * X)
    beta = np.linalg.solve(XtWX, X.T @ (w * y))
    rss = np.sum(w * (y - X @ beta) ** 2)
    nu = n - 2
    sigma2 = rss / nu
    crit = np.linalg.slogdet(XtWX)[1] + nu * (1 + np.log(2 * np.pi * rss / nu)) - np.log(w).sum()
    np.testing.assert_allclose(res.beta.iloc[0], beta, rtol=1e-10)
    np.testing.assert_allclose(res.variance["Residual"].iloc[0], sigma2, rtol=1e-10)
    np.testing.assert_allclose(
        res.se.iloc[0], np.sqrt(sigma2 * np.diag(np.linalg.inv(XtWX))), rtol=1e-10
    )
    np.testing.assert_allclose(res.criterion.iloc[0], crit, rtol=1e-12)


def _reml_deviance(params, y, X, Z, w):
    """−2 restricted log-likelihood from V = σ_b² ZZ' + σ² W⁻¹, written out densely."""
    s2b, s2 = np.exp(params)
    V = s2b * Z @ Z.T + s2 * np.diag(1.0 / w)
    Vi = np.linalg.inv(V)
    XtViX = X.T @ Vi @ X
    beta = np.linalg.solve(XtViX, X.T @ Vi @ y)
    r = y - X @ beta
    n, p = X.shape
    return (
        np.linalg.slogdet(V)[1]
        + np.linalg.slogdet(XtViX)[1]
        + r @ Vi @ r
        + (n - p) * np.log(2 * np.pi)
    )


def test_heterogeneous_weights_match_a_dense_likelihood():
    rng = np.random.default_rng(2)
    design = crossed_design(n_batch=5, n_donor=10, reps=3)
    n = len(design)
    spec = lmm.build_spec(design, "~ condition + (1|batch)")
    Z = spec.terms[0].indicator().toarray()
    w = rng.uniform(0.3, 4.0, size=n)
    y = spec.X @ [5.0, 1.0] + Z @ rng.normal(0, 1.0, Z.shape[1]) + rng.normal(size=n) / np.sqrt(w)
    res = lmm.fit(y, design, "~ condition + (1|batch)", weights=w)
    best = optimize.minimize(
        _reml_deviance,
        x0=[0.0, 0.0],
        args=(y, spec.X, Z, w),
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000},
    )
    assert res.criterion.iloc[0] == pytest.approx(best.fun, abs=1e-6)
    np.testing.assert_allclose(
        [res.variance["batch"].iloc[0], res.variance["Residual"].iloc[0]], np.exp(best.x), rtol=1e-4
    )


def test_bad_weights_are_named():
    design = crossed_design()
    Y = simulate(design, n_features=2)
    w = np.ones_like(Y)
    w[3, 1] = 0.0
    with pytest.raises(ValueError, match=r"1 observed value\(s\) have a weight.*row 3, feature 1"):
        lmm.fit(Y, design, FORMULA, weights=w)
    with pytest.raises(ValueError, match="weights have shape"):
        lmm.fit(Y, design, FORMULA, weights=w[:, :1])
    Y[3, 1] = np.nan  # a missing value's weight does not matter
    assert lmm.fit(Y, design, FORMULA, weights=w).converged.all()


def test_correction_methods_use_the_fits_weights():
    import anndata as ad

    import omixed

    design = crossed_design(n_batch=4, n_donor=8, reps=3).astype("category")
    Y = simulate(design, n_features=8, missing=0.0)
    adata = ad.AnnData(Y, obs=design.set_axis([f"S{i}" for i in range(len(design))]))
    adata.layers["w"] = np.full(Y.shape, 3.0)
    omixed.tl.fit(adata, "~ condition + (1|batch)", weights_layer="w", progress=False)
    assert adata.uns["lmm"]["weights_layer"] == "w"
    omixed.tl.correct(adata, remove=["batch"], method="full", layer_added="weighted")
    plain = adata.copy()
    omixed.tl.fit(plain, "~ condition + (1|batch)", progress=False)
    omixed.tl.correct(plain, remove=["batch"], method="full")
    # Constant weights change nothing in the GLS batch effects.
    np.testing.assert_allclose(adata.layers["weighted"], plain.layers["corrected"], rtol=1e-8)
