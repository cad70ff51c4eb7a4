"""Contrast tests: Satterthwaite df against lmerTest, squeezeVar against limma, calibration.

References: ``tests/data/lmertest`` (lmerTest 3.1-3 on the classic data sets and the first
40 sim_genes / 30 sim_peptides features, see its README) and limma's own regression output
(``tests/limma-Tests.Rout.save``, the "Mette Langaas" example and ``trigammaInverse``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import crossed_design, full_cross_products
from scipy import stats

import omixed
from omixed import lmm
from omixed.lmm import (
    contrast_moments,
    contrast_moments_grouped,
    contrast_vector,
    satterthwaite,
    satterthwaite_grouped,
    squeeze_var,
    t_table,
    trigamma_inverse,
)
from omixed.lmm._design import plan_design
from omixed.lmm._inference import _half_pinv, _moments_chunk
from omixed.tl._contrast import test as tl_test

LMERTEST = Path(__file__).parent / "data" / "lmertest"
CLASSIC = ["dyestuff", "penicillin", "pastes", "sleepstudy_uncorrelated"]
GENES = "y ~ condition + (1|batch) + (1|donor)"
PEPTIDES = "y ~ condition + (1|batch) + (1|sample) + (1|peptide)"
R_NAMES = {"(Intercept)": "Intercept", "conditiontreated": "condition[T.treated]", "Days": "Days"}


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def lmertest():
    """(coefficients table, fits per model) of the lmerTest reference."""
    coef = pd.read_csv(LMERTEST / "coefficients.csv", dtype={"feature": str})
    coef["term"] = coef["term"].map(R_NAMES)
    fits = json.loads((LMERTEST / "fits.json").read_text())["models"]
    return coef, fits


def _reference(coef: pd.DataFrame, model: str, term: str, features) -> pd.DataFrame:
    sub = coef[(coef["model"] == model) & (coef["term"] == term)].set_index("feature")
    return sub.loc[list(features)]


def _at(res: lmm.LMMResult, theta: pd.DataFrame) -> lmm.LMMResult:
    """``res`` with its θ replaced (e.g. by lme4's), to evaluate the tests there."""
    return dataclasses.replace(
        res, theta=theta[list(res.theta.columns)].set_axis(res.feature_names)
    )


def _lme4_theta(fits: dict, columns) -> pd.DataFrame:
    """lme4's θ per feature as a features × term-name table (``"batch.(Intercept)"`` → batch)."""
    table = {
        feature: {name.rsplit(".", 1)[0]: value for name, value in fit["theta"].items()}
        for feature, fit in fits.items()
    }
    return pd.DataFrame(table).T[list(columns)]


@pytest.fixture(scope="module")
def genes(sim_genes, lmertest):
    """The 40 sim_genes features of the reference: (Y, design, names, our fit, lme4 fits)."""
    Y, design, names, _ = sim_genes
    fits = lmertest[1]["sim_genes"]["fits"]
    keep = names.get_indexer(list(fits))
    Y, names = Y[:, keep], names[keep]
    return Y, design, names, lmm.fit(Y, design, GENES, feature_names=names), fits


@pytest.fixture(scope="module")
def peptides(sim_peptides, lmertest):
    """The 30 sim_peptides proteins of the reference: (long table, design, fit, lme4 fits)."""
    long, design, _ = sim_peptides
    fits = lmertest[1]["sim_peptides"]["fits"]
    long = long[long["feature"].isin(list(fits))]
    res, _ = lmm.fit_grouped(long, design, PEPTIDES)
    return long, design, res, fits


def _log_p_close(p, ref, rtol=1e-2):
    """p-values agree to 1e-4 absolute and, for small ones, to ``rtol`` on the log scale."""
    p, ref = np.asarray(p), np.asarray(ref)
    assert np.all(np.abs(p - ref) <= 1e-4)
    assert np.all(np.abs(np.log(p) - np.log(ref)) <= rtol * np.abs(np.log(ref)))


# ---------------------------------------------------------------------------------------------
# Satterthwaite against lmerTest


@pytest.mark.parametrize("name", CLASSIC)
def test_classic_datasets_match_lmertest(name, lme4_classic, classic_data, lmertest):
    model = lme4_classic[name]
    data = classic_data(model["data"])
    Y = data[[model["formula"].split("~")[0].strip()]].to_numpy()
    res = lmm.fit(Y, data, model["formula"])
    assert abs(res.criterion.iloc[0] - lmertest[1][name]["fits"][name]["crit"]) < 1e-4
    got = satterthwaite(res, Y, data, "Intercept").iloc[0]
    ref = _reference(lmertest[0], name, "Intercept", [name]).iloc[0]
    assert got["estimate"] == pytest.approx(ref["estimate"], rel=1e-8)
    assert got["se"] == pytest.approx(ref["se"], rel=1e-4)
    assert got["t"] == pytest.approx(ref["t"], rel=1e-4)
    assert got["df"] == pytest.approx(ref["df"], rel=1e-3)
    _log_p_close([got["pvalue"]], [ref["p"]])


def test_balanced_one_way_intercept_df_is_groups_minus_one(lme4_classic, classic_data):
    # Dyestuff: 6 batches × 5; the intercept's Satterthwaite df is exactly 5 (to rounding).
    data = classic_data(lme4_classic["dyestuff"]["data"])
    Y = data[["Yield"]].to_numpy()
    res = lmm.fit(Y, data, "Yield ~ 1 + (1|Batch)")
    assert satterthwaite(res, Y, data, [1.0])["df"].iloc[0] == pytest.approx(5.0, abs=1e-8)


@pytest.mark.parametrize("term", ["condition[T.treated]", "Intercept"])
def test_sim_genes_match_lmertest(genes, lmertest, term):
    Y, design, names, res, fits = genes
    ref = _reference(lmertest[0], "sim_genes", term, names)
    crit = pd.Series({f: fits[f]["crit"] for f in names})
    agree = (res.criterion - crit).abs() <= 1e-4
    assert agree.all()
    got = satterthwaite(res, Y, design, term)
    np.testing.assert_allclose(got["estimate"], res.beta[term], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["se"], res.se[term], rtol=1e-10)
    np.testing.assert_allclose(got["se"], ref["se"], rtol=1e-3)
    np.testing.assert_allclose(got["df"], ref["df"], rtol=1e-3)
    _log_p_close(got["pvalue"], ref["p"])


@pytest.mark.parametrize("term", ["condition[T.treated]", "Intercept"])
def test_sim_peptides_match_lmertest(peptides, lmertest, term):
    long, design, res, fits = peptides
    ref = _reference(lmertest[0], "sim_peptides", term, res.feature_names)
    crit = pd.Series({f: fits[f]["crit"] for f in res.feature_names})
    assert ((res.criterion - crit).abs() <= 1e-4).all()
    got = satterthwaite_grouped(res, long, design, term)
    np.testing.assert_allclose(got["se"], res.se[term], rtol=1e-10)
    np.testing.assert_allclose(got["df"], ref["df"], rtol=1e-3)
    _log_p_close(got["pvalue"], ref["p"])


def test_exact_at_lme4s_optimum(genes, peptides, lmertest):
    # At lme4's own θ the analytic derivatives reproduce lmerTest's numDeriv df to ~1e-7,
    # singular fits (7/40 genes, 14/30 proteins, θ = 0 kept as a parameter) included.
    coef = lmertest[0]
    Y, design, names, res, fits = genes
    theta = _lme4_theta(fits, res.theta.columns)
    long, pep_design, pep_res, pep_fits = peptides
    pep_theta = _lme4_theta(pep_fits, pep_res.theta.columns)
    assert sum(f["singular"] for f in fits.values()) == 7
    assert sum(f["singular"] for f in pep_fits.values()) == 14
    for term in ["condition[T.treated]", "Intercept"]:
        got = contrast_moments(_at(res, theta), Y, design, term)
        ref = _reference(coef, "sim_genes", term, names)
        np.testing.assert_allclose(got["df_satterthwaite"], ref["df"], rtol=1e-5)
        np.testing.assert_allclose(np.sqrt(got["var"]), ref["se"], rtol=1e-8)
        got = contrast_moments_grouped(_at(pep_res, pep_theta), long, pep_design, term)
        ref = _reference(coef, "sim_peptides", term, pep_theta.index)
        np.testing.assert_allclose(got["df_satterthwaite"], ref["df"], rtol=1e-5)


def test_varpar_covariance_matches_lmertest(genes, lme4_classic, classic_data, lmertest):
    # lmerTest's vcov_varpar = 2 H⁻¹ from numDeriv; ours is analytic (same θ: lme4's).
    cases = []
    Y, design, _, _, fits = genes
    cases.append((Y, design, GENES, fits))
    for name in ["dyestuff", "penicillin", "pastes"]:  # lmerTest's θ names map one to one
        data = classic_data(lme4_classic[name]["data"])
        formula = lme4_classic[name]["formula"]
        Y1 = data[[formula.split("~")[0].strip()]].to_numpy()
        cases.append((Y1, data, formula, lmertest[1][name]["fits"]))
    for Y, data, formula, ref_fits in cases:
        spec = lmm.build_spec(data, formula)
        design = plan_design(spec)
        theta = _lme4_theta(ref_fits, design.term_names)  # lme4 order = elimination order
        out = _moments_chunk(
            np.ascontiguousarray(Y.T),
            design,
            theta.to_numpy(),
            np.eye(spec.X.shape[1])[0],
            satterthwaite=True,
            X=spec.X,
        )
        unit = np.ones_like(out["grad"])
        unit[:, -1] = out["scale"]
        vcov = _half_pinv(out["hessian"]) * unit[:, :, None] * unit[:, None, :]
        for i, fit in enumerate(ref_fits.values()):
            names = [v.rsplit(".", 1)[0] for v in fit["varpar"]]
            assert names == [*design.term_names, "sigma"]
            want = np.array(fit["vcov_varpar"])
            assert np.abs(vcov[i] - want).max() <= 5e-4 * np.abs(want).max()


# ---------------------------------------------------------------------------------------------
# Analytic derivatives against an independent dense computation


def _reml_deviance(V0, sigma, y, X):
    """lmerTest's devfun_vp (REML) at Var(y) = σ²V₀, Cov(β̂) and the σ² estimate r'V₀⁻¹r/(n − p)."""
    Vi = np.linalg.inv(V0)
    info = X.T @ Vi @ X
    beta = np.linalg.solve(info, X.T @ Vi @ y)
    r2 = (y - X @ beta) @ Vi @ (y - X @ beta)
    n, p = X.shape
    dev = (
        np.linalg.slogdet(V0)[1]
        + np.linalg.slogdet(info)[1]
        + r2 / sigma**2
        + (n - p) * np.log(2 * np.pi * sigma**2)
    )
    return dev, sigma**2 * np.linalg.inv(info), r2 / (n - p)


def _dense_deviance(varpar, y, X, Zs):
    """lmerTest's devfun_vp (REML) from V₀ = I + ZΛΛ'Z' directly, and Cov(β̂)."""
    theta, sigma = varpar[:-1], varpar[-1]
    V0 = np.eye(y.size) + sum(t**2 * Z @ Z.T for t, Z in zip(theta, Zs, strict=True))
    return _reml_deviance(V0, sigma, y, X)


def _assert_matches_finite_differences(out, deviance, theta, L, h=1e-4):
    """Check one feature's ``_moments_chunk`` output against central differences of ``deviance``.

    Compared: the Hessian of the REML deviance and the gradient of L'Cov(β̂)L in (θ, σ), at θ
    and the σ̂ that ``deviance`` estimates there.
    """
    sigma = np.sqrt(deviance(np.r_[theta, 1.0])[2])
    x0 = np.r_[theta, sigma]
    k = x0.size
    step = np.eye(k) * h
    hess, grad = np.empty((k, k)), np.empty(k)
    for a in range(k):
        grad[a] = (L @ deviance(x0 + step[a])[1] @ L - L @ deviance(x0 - step[a])[1] @ L) / (2 * h)
        for b in range(k):
            f = [
                deviance(x0 + sa * step[a] + sb * step[b])[0]
                for sa, sb in ((1, 1), (1, -1), (-1, 1), (-1, -1))
            ]
            hess[a, b] = (f[0] - f[1] - f[2] + f[3]) / (4 * h * h)
    np.testing.assert_allclose(out["hessian"][0], hess, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["grad"][0], grad, rtol=1e-6, atol=1e-9)


def test_hessian_and_gradient_match_finite_differences():
    design = crossed_design(n_batch=4, n_donor=8, reps=3, seed=3)
    design["lane"] = np.tile(["L1", "L2", "L3"], 8)
    rng = np.random.default_rng(5)
    y = rng.normal(size=len(design)) + rng.normal(size=8).repeat(3)
    y = (y - y.mean()) / y.std()  # standardized already, so the chunk works on y itself
    formula = "~ condition + (1|batch) + (1|donor) + (1|lane)"
    spec = lmm.build_spec(design, formula)
    design_ = plan_design(spec)
    Zs = [spec.terms[i].indicator().toarray() for i in design_.order]
    theta = np.array([0.8, 1.3, 0.4])  # elimination order, not an optimum
    L = np.array([0.0, 1.0])
    out = _moments_chunk(y[None, :], design_, theta[None, :], L, satterthwaite=True, X=spec.X)
    _assert_matches_finite_differences(out, lambda v: _dense_deviance(v, y, spec.X, Zs), theta, L)


def test_linear_model_gives_residual_df_and_the_ols_t_test():
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"x": np.repeat(["a", "b", "c"], 5), "z": rng.normal(size=15)})
    Y = rng.normal(size=(15, 4))
    Y[3, 1] = np.nan
    mom = contrast_moments(lmm.fit(Y, data, "~ x + z"), Y, data, "x[T.b] - x[T.c]")
    X = lmm.build_spec(data, "~ x + z").X
    L = np.array([0.0, 1.0, -1.0, 0.0])
    for j in range(4):
        ok = np.isfinite(Y[:, j])
        beta, rss = np.linalg.lstsq(X[ok], Y[ok, j], rcond=None)[:2]
        nu = ok.sum() - X.shape[1]
        var = rss[0] / nu * L @ np.linalg.inv(X[ok].T @ X[ok]) @ L
        assert mom["estimate"].iloc[j] == pytest.approx(L @ beta, rel=1e-10)
        assert mom["var"].iloc[j] == pytest.approx(var, rel=1e-10)
        assert mom["df_satterthwaite"].iloc[j] == pytest.approx(nu, rel=1e-10)


# ---------------------------------------------------------------------------------------------
# Contrasts


def test_contrast_forms_agree():
    names = ["Intercept", "condition[T.b]", "condition[T.c]", "dose"]
    want = np.array([0.0, 1.0, -1.0, 0.0])
    for form in (
        "condition[T.b] - condition[T.c]",
        "conditionb - conditionc",
        {"condition[T.b]": 1, "condition[T.c]": -1},
        want,
        "-(condition[T.c] - condition[T.b])",
    ):
        np.testing.assert_array_equal(contrast_vector(form, names)[0], want)
    weights, label = contrast_vector("0.5*condition[T.b] + condition[T.c]/2", names)
    np.testing.assert_array_equal(weights, [0, 0.5, 0.5, 0])
    assert label == "0.5*condition[T.b] + 0.5*condition[T.c]"
    assert contrast_vector("(Intercept) + 2*dose", names)[1] == "Intercept + 2*dose"


@pytest.mark.parametrize(
    ("contrast", "match"),
    [
        ("condition[T.d]", "coefficients"),
        ("condition[T.b] + 1", "constant"),
        ("condition[T.b] * dose", "cannot read"),
        ([1.0, 0.0], "2 weights"),
        ({"dose": 0.0}, "nonzero"),
    ],
)
def test_bad_contrasts_are_named(contrast, match):
    with pytest.raises((ValueError, KeyError), match=match):
        contrast_vector(contrast, ["Intercept", "condition[T.b]", "dose"])


def test_difference_contrast_is_the_difference_of_coefficients(genes):
    Y, design, _, res, _ = genes
    got = contrast_moments(res, Y, design, "Intercept - condition[T.treated]")
    want = res.beta["Intercept"] - res.beta["condition[T.treated]"]
    np.testing.assert_allclose(got["estimate"], want, rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# squeezeVar against limma


def test_squeeze_var_matches_limma():
    # limma's tests/limma-Tests.Rout.save: eBayes(fit2) on the "Mette Langaas" example, from
    # before limma 3.62 made the likelihood the default for unequal df (legacy = TRUE).
    sigma = np.array([1.3425032, 0.4647155, 1.1993444, 0.9428569, 0.9421509])
    sq = squeeze_var(sigma**2, [6, 6, 6, 6, 4], legacy=True)
    assert sq.df_prior == pytest.approx(9.306153, rel=1e-6)
    assert sq.var_prior == pytest.approx(0.923179, rel=1e-6)
    np.testing.assert_allclose(
        sq.var_post, [1.2677996, 0.6459499, 1.1251558, 0.9097727, 0.9124980], rtol=1e-6
    )
    # trigammaInverse(c(1e-6, 5, 1e6)) = 1.000000e+06 4.961687e-01 1.000001e-03
    for x, want in ((1e-6, 1.0e6), (5.0, 4.961687e-01), (1e6, 1.000001e-03)):
        assert trigamma_inverse(x) == pytest.approx(want, rel=1e-6)


def test_squeeze_var_recovers_a_scaled_f_prior_and_handles_edges():
    rng = np.random.default_rng(1)
    d, d0, s0 = np.where(rng.random(200_000) < 0.5, 4.0, 9.0), 6.0, 0.3
    true_var = s0 * d0 / rng.chisquare(d0, d.size)  # scaled inverse χ² prior
    sq = squeeze_var(true_var * rng.chisquare(d) / d, d)
    assert sq.df_prior == pytest.approx(d0, rel=0.05)
    assert sq.var_prior == pytest.approx(s0, rel=0.02)
    # No excess spread: d₀ = ∞ and the prior is the mean; NaN stays NaN.
    sq = squeeze_var([1.0, 1.0, 1.0, np.nan], 3)
    assert np.isinf(sq.df_prior) and sq.var_prior == 1.0
    assert np.isnan(sq.var_post[3])


def test_moderated_df_of_a_linear_model_is_residual_plus_prior_df():
    # Without random effects the prior-augmented Satterthwaite df is limma's ν + d₀.
    rng = np.random.default_rng(2)
    data = pd.DataFrame({"x": np.repeat(["a", "b"], 6)})
    Y = rng.normal(size=(12, 300)) * np.sqrt(rng.chisquare(5, 300) / 5)
    mom = contrast_moments(lmm.fit(Y, data, "~ x"), Y, data, "x[T.b]", moderate=True)
    d0 = mom.attrs["df_prior"]
    assert 0 < d0 < np.inf
    np.testing.assert_allclose(mom["df_satterthwaite_post"], 10 + d0, rtol=1e-8)
    np.testing.assert_allclose(mom["df_residual_post"], 10 + d0)
    np.testing.assert_allclose(mom["df_effective"], 10, rtol=1e-10)  # RSS/σ̂² without u
    np.testing.assert_allclose(mom["var_post"] / mom["var"], mom["sigma2_post"] / mom["sigma2"])


# ---------------------------------------------------------------------------------------------
# tl.test


@pytest.fixture(scope="module")
def fitted():
    """300 example features; the first has 2 observed values, too few to fit; the second is
    never observed in treated samples, so its condition effect is not estimable."""
    adata = omixed.datasets.example()[:, :300].copy()
    adata.X[2:, 0] = np.nan
    adata.X[(adata.obs["condition"] == "treated").to_numpy(), 1] = np.nan
    with pytest.warns(UserWarning, match="not fit"):
        omixed.tl.fit(adata, "~ condition + (1|batch) + (1|donor)", progress=False)
    return adata


def test_tl_test_writes_varm_uns_and_returns_a_sorted_table(fitted):
    adata = fitted.copy()
    top = tl_test(adata, contrast="conditiontreated")
    key = "lmm_test_condition_T_treated"
    stored = adata.varm[key]
    assert list(top.columns) == ["estimate", "se", "t", "df", "pvalue", "padj", "reason"]
    assert stored.index.equals(adata.var_names)
    pd.testing.assert_frame_equal(top.loc[stored.index], stored)
    assert top["pvalue"].dropna().is_monotonic_increasing
    ok = stored["pvalue"].notna()
    np.testing.assert_allclose(
        stored["padj"][ok], stats.false_discovery_control(stored["pvalue"][ok], method="bh")
    )
    assert adata.uns[key]["contrast"] == "condition[T.treated]"
    assert adata.uns[key]["n_tested"] == ok.sum()
    # Features that were not fit, or whose coefficient is not estimable, are NaN, listed last.
    failed = ~adata.var["lmm_converged"] | adata.varm["lmm_beta"]["condition[T.treated]"].isna()
    assert failed.sum() == 2
    numbers = stored.drop(columns="reason")
    assert numbers.loc[failed].isna().all(axis=None) and numbers.loc[~failed].notna().all(axis=None)
    assert (stored.loc[failed, "reason"] != "").all() and (
        stored.loc[~failed, "reason"] == ""
    ).all()
    assert set(top.index[-2:]) == set(adata.var_names[failed])
    # The engine gives the same numbers.
    Y = adata.X
    res = lmm.fit(Y, adata.obs, adata.uns["lmm"]["formula"], feature_names=adata.var_names)
    direct = satterthwaite(res, Y, adata.obs, "condition[T.treated]")
    pd.testing.assert_frame_equal(stored.drop(columns=["padj", "reason"]), direct, rtol=1e-8)


def test_tl_test_residual_method_and_moderation(fitted):
    adata = fitted.copy()
    res = tl_test(adata, contrast="condition[T.treated]", method="residual", key_added="naive")
    expected = adata.var["lmm_n_obs"] - 2
    ok = res["df"].notna()
    np.testing.assert_allclose(res.loc[ok.index[ok], "df"], expected[ok.index[ok]])
    mod = tl_test(adata, contrast="condition[T.treated]", moderate=True, key_added="mod")
    plain = tl_test(adata, contrast="condition[T.treated]", key_added="plain")
    prior = adata.uns["mod"]
    assert 0 < prior["df_prior"] < np.inf and prior["var_prior"] > 0
    # Moderation rescales the SE only through σ̃/σ̂ and adds information (df grows).
    ok = mod["df"].notna()
    assert np.all(mod["df"][ok] >= plain.loc[ok.index[ok], "df"] * (1 - 1e-8))
    np.testing.assert_allclose(mod["estimate"], plain.loc[mod.index, "estimate"])


def test_tl_test_non_estimable_contrast_is_nan():
    adata = omixed.datasets.example()[:, :40].copy()
    adata.X[(adata.obs["condition"] == "treated").to_numpy(), 0] = np.nan
    omixed.tl.fit(adata, "~ condition + (1|batch) + (1|donor)", progress=False)
    assert "not estimable" in adata.var["lmm_notes"].iloc[0]
    top = tl_test(adata, contrast="condition[T.treated]")
    row = top.loc[adata.var_names[0]]
    assert row.drop("reason").isna().all()
    assert row["reason"] == "contrast not estimable from the observed samples"
    assert np.isfinite(tl_test(adata, contrast="Intercept").loc[adata.var_names[0], "pvalue"])


def test_tl_test_protein_fits_need_and_use_the_peptides(sim_peptides, lmertest):
    long, design, _ = sim_peptides
    fits = lmertest[1]["sim_peptides"]["fits"]
    long = long[long["feature"].isin(list(fits))]
    wide = long.pivot(index="sample", columns="peptide", values="y")
    var = long.drop_duplicates("peptide").set_index("peptide").loc[wide.columns, ["feature"]]
    pep = ad.AnnData(
        wide.to_numpy(),
        obs=design.loc[wide.index].astype("category"),
        var=var.rename(columns={"feature": "protein"}),
    )
    proteins = omixed.tl.summarize_proteins(pep, progress=False)
    with pytest.raises(ValueError, match="peptides="):
        tl_test(proteins, contrast="condition[T.treated]")
    top = tl_test(proteins, contrast="condition[T.treated]", peptides=pep)
    ref = _reference(lmertest[0], "sim_peptides", "condition[T.treated]", top.index)
    np.testing.assert_allclose(top["df"], ref["df"], rtol=1e-3)
    np.testing.assert_allclose(top["se"], ref["se"], rtol=1e-3)


def test_tl_test_clear_errors(fitted):
    adata = fitted.copy()
    with pytest.raises(KeyError, match="no fit stored"):
        tl_test(adata, contrast="Intercept", key="other")
    with pytest.raises(ValueError, match="method"):
        tl_test(adata, contrast="Intercept", method="kenward-roger")
    with pytest.raises(ValueError, match="coefficients"):
        tl_test(adata, contrast="treated")
    adata.uns["lmm"]["reml"] = False
    with pytest.raises(ValueError, match="REML"):
        tl_test(adata, contrast="Intercept")


# ---------------------------------------------------------------------------------------------
# Calibration


def _simulate(n_features, fraction_changed, seed):
    """Crossed batch + donor design (donors nested in condition), 5 % missing at random."""
    design = crossed_design(n_batch=4, n_donor=12, reps=3, seed=0)
    rng = np.random.default_rng(seed)
    b = pd.factorize(design["batch"])[0]
    d = pd.factorize(design["donor"])[0]
    changed = rng.random(n_features) < fraction_changed
    effect = np.where(
        changed, rng.choice([-1.0, 1.0], n_features) * rng.uniform(1, 2, n_features), 0
    )
    sd_resid = 0.4 * np.exp(rng.normal(0, 0.3, n_features))
    Y = (
        rng.normal(10, 1, n_features)
        + (design["condition"] == "treated").to_numpy()[:, None] * effect
        + rng.normal(0, 0.5, (4, n_features))[b]
        + rng.normal(0, 0.4, (12, n_features))[d]
        + rng.normal(size=(len(design), n_features)) * sd_resid
    )
    Y[rng.random(Y.shape) < 0.05] = np.nan
    return Y, design, changed


@pytest.fixture(scope="module")
def null_moments():
    Y, design, _ = _simulate(2000, 0.0, seed=11)
    res = lmm.fit(Y, design, GENES)
    return contrast_moments(res, Y, design, "condition[T.treated]", moderate=True)


def _excess_at_05(p: pd.Series) -> float:
    """One-sided binomial p-value for too many null p-values below 0.05."""
    p = p.dropna()
    return stats.binomtest(int((p < 0.05).sum()), p.size, 0.05, alternative="greater").pvalue


@pytest.mark.parametrize(
    ("var", "df"), [("var", "df_satterthwaite"), ("var_post", "df_satterthwaite_post")]
)
def test_null_p_values_are_uniform(null_moments, var, df):
    # Measured (seed 11): KS D = 0.0267 (p = 0.11), 4.95 % below 0.05 unmoderated;
    # moderated (d0 = 6.1) KS D = 0.0237 (p = 0.21), 5.00 % below 0.05.
    p = t_table(null_moments["estimate"], null_moments[var], null_moments[df])["pvalue"]
    assert stats.kstest(p.dropna(), "uniform").pvalue > 0.01
    assert _excess_at_05(p) > 0.01


def test_naive_residual_df_are_anticonservative(null_moments):
    # The same data expose the naive n − p df (condition varies between donors, so the
    # contrast has far fewer df): measured 6.85 % of null p-values below 0.05.
    p = t_table(null_moments["estimate"], null_moments["var"], null_moments["df_residual"])
    assert _excess_at_05(p["pvalue"]) < 0.01


@pytest.mark.parametrize("moderate", [False, True])
def test_bh_controls_the_fdr(moderate):
    Y, design, changed = _simulate(2000, 0.1, seed=12)
    adata = ad.AnnData(Y, obs=design.set_axis(design.index.astype(str)))
    omixed.tl.fit(adata, GENES, progress=False)
    top = tl_test(adata, contrast="condition[T.treated]", moderate=moderate)
    hits = top.index[top["padj"] < 0.05].astype(int)
    fdp = (~changed[hits]).mean()
    # Expected FDR is π₀·0.05 = 0.045; allow two binomial SEs of sampling slack.  Measured:
    # FDP 0.0345 of 174 discoveries (moderated: 0.0400 of 175), bound 0.083.
    assert fdp <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / hits.size), fdp
    assert changed[hits].sum() > 0.5 * changed.sum()  # and finds most true changes


def test_sleepstudy_slope_df_matches_lmertest(lme4_classic, classic_data, lmertest):
    model = lme4_classic["sleepstudy_uncorrelated"]
    data = classic_data(model["data"])
    Y = data[["Reaction"]].to_numpy()
    res = lmm.fit(Y, data, model["formula"])
    got = satterthwaite(res, Y, data, "Days").iloc[0]
    ref = _reference(lmertest[0], "sleepstudy_uncorrelated", "Days", ["sleepstudy_uncorrelated"])
    assert got["df"] == pytest.approx(ref.iloc[0]["df"], rel=1e-3)
    _log_p_close([got["pvalue"]], [ref.iloc[0]["p"]])


def _sleepstudy(lme4_classic, classic_data, lmertest):
    """sleepstudy with correlated slopes: (data, Y, fit, lmerTest coefficient rows, lme4 fit)."""
    model = lme4_classic["sleepstudy"]
    data = classic_data(model["data"])
    data["Subject"] = data["Subject"].astype(str)
    Y = data[["Reaction"]].to_numpy()
    res = lmm.fit(Y, data, model["formula"])
    coef = lmertest[0]
    ref = coef[coef["model"] == "sleepstudy"].set_index("term")
    return data, Y, res, ref, lmertest[1]["sleepstudy"]["fits"]["sleepstudy"]


def test_sleepstudy_correlated_slopes_match_lmertest(lme4_classic, classic_data, lmertest):
    # Reaction ~ Days + (Days|Subject).  Measured at our optimum (criterion 2e-7 below lme4's):
    # relative differences estimate < 2e-14, SE 6e-6, df 1.6e-5 (Intercept) and 1e-6 (Days),
    # p 6e-4 (Intercept, p ~ 1e-17; 1.5e-5 on the log scale) and 1.1e-5 (Days).
    data, Y, res, ref, fit = _sleepstudy(lme4_classic, classic_data, lmertest)
    assert abs(res.criterion.iloc[0] - fit["crit"]) < 1e-4
    assert set(ref.index) == {"Intercept", "Days"}
    for term, row in ref.iterrows():
        got = satterthwaite(res, Y, data, term).iloc[0]
        assert got["estimate"] == pytest.approx(row["estimate"], rel=1e-8)
        assert got["se"] == pytest.approx(row["se"], rel=1e-4)
        assert got["t"] == pytest.approx(row["t"], rel=1e-4)
        assert got["df"] == pytest.approx(row["df"], rel=1e-4)
        _log_p_close([got["pvalue"]], [row["p"]], rtol=1e-3)
    contests = pd.read_csv(LMERTEST / "contests.csv", dtype={"feature": str})
    contests = contests[contests["model"] == "sleepstudy"]
    assert len(contests) == 2
    # One-row contrasts are t-tests (F = t²); the joint 2-df F test has no omixed counterpart.
    for _, row in contests[contests["numdf"] == 1].iterrows():
        L = np.array(row["L"].split(";"), dtype=float)
        got = satterthwaite(res, Y, data, L).iloc[0]
        assert got["t"] ** 2 == pytest.approx(row["F"], rel=1e-4)
        assert got["df"] == pytest.approx(row["dendf"], rel=1e-4)
        _log_p_close([got["pvalue"]], [row["p"]], rtol=1e-3)


def test_sleepstudy_correlated_at_lme4s_theta(lme4_classic, classic_data, lmertest):
    # At lme4's θ the analytic derivatives reproduce lmerTest's numDeriv: vcov_varpar to 3e-10
    # of its largest entry, df to ~1e-8 (the fixture's rounding of θ).
    data, Y, res, ref, fit = _sleepstudy(lme4_classic, classic_data, lmertest)
    names = {"Subject.(Intercept)": "Subject", "Subject.Days": "Subject.Days"}
    names["Subject.Days.(Intercept)"] = "Subject.Days~Subject"  # T's off-diagonal
    theta = pd.DataFrame([{names[k]: v for k, v in fit["theta"].items()}])
    assert set(theta.columns) == set(res.theta.columns)
    formula = lme4_classic["sleepstudy"]["formula"]
    for term, row in ref.iterrows():
        got = contrast_moments(_at(res, theta), Y, data, term).iloc[0]
        assert got["df_satterthwaite"] == pytest.approx(row["df"], rel=1e-6)
        assert np.sqrt(got["var"]) == pytest.approx(row["se"], rel=1e-8)
    spec = lmm.build_spec(data, formula)
    design = plan_design(spec)
    order = [*design.term_names, *design.extra_names]
    out = _moments_chunk(
        np.ascontiguousarray(Y.T),
        design,
        theta[order].to_numpy(),
        np.array([0.0, 1.0]),
        satterthwaite=True,
        X=spec.X,
    )
    unit = np.r_[np.ones(len(order)), out["scale"]]
    vcov = _half_pinv(out["hessian"])[0] * np.outer(unit, unit)
    perm = [order.index(names[v]) for v in fit["varpar"][:-1]] + [len(order)]
    want = np.array(fit["vcov_varpar"])
    assert np.abs(vcov[np.ix_(perm, perm)] - want).max() <= 1e-6 * np.abs(want).max()


def _correlated_deviance(varpar, y, X, Zs):
    """devfun_vp of (1 + x|g): V₀ = I + Σ_ac (TT')_ac Z_a Z_c', T = [[t0, 0], [t2, t1]]."""
    t0, t1, t2, sigma = varpar
    T = np.array([[t0, 0.0], [t2, t1]])
    C = T @ T.T
    V0 = np.eye(y.size) + sum(C[a, c] * Zs[a] @ Zs[c].T for a in range(2) for c in range(2))
    return _reml_deviance(V0, sigma, y, X)


def test_correlated_hessian_and_gradient_match_finite_differences():
    rng = np.random.default_rng(7)
    design = pd.DataFrame(
        {
            "g": np.repeat([f"G{i}" for i in range(7)], 4),
            "x": rng.normal(size=28),
            "condition": np.tile(["a", "b"], 14),
        }
    )
    y = rng.normal(size=28) + rng.normal(size=7).repeat(4) * (1 + design["x"].to_numpy())
    y = (y - y.mean()) / y.std()  # standardized already, so the chunk works on y itself
    spec = lmm.build_spec(design, "~ condition + (1 + x|g)")
    design_ = plan_design(spec)
    assert design_.term_names == ("g", "g.x") and design_.extra_names == ("g.x~g",)
    Zs = [term.indicator().toarray() for term in spec.terms]
    theta = np.array([0.9, 0.6, -0.4])  # (T_00, T_11, T_10), not an optimum
    L = np.array([0.3, 1.0])
    out = _moments_chunk(y[None, :], design_, theta[None, :], L, satterthwaite=True, X=spec.X)
    _assert_matches_finite_differences(
        out, lambda v: _correlated_deviance(v, y, spec.X, Zs), theta, L
    )


def test_tl_test_correlated_slopes(lme4_classic, classic_data, lmertest):
    # sleepstudy's Reaction next to 5 features simulated on its design: tl.test routes through
    # contrast_moments, so Reaction matches lmerTest and every feature the engine's satterthwaite.
    data, Y, _, ref, _ = _sleepstudy(lme4_classic, classic_data, lmertest)
    rng = np.random.default_rng(3)
    subject = pd.factorize(data["Subject"])[0]
    days = data["Days"].to_numpy()[:, None]
    sim = (
        250
        + 10 * days
        + rng.normal(0, 25, (18, 5))[subject]
        + rng.normal(0, 6, (18, 5))[subject] * days
        + rng.normal(0, 25, (180, 5))
    )
    X = np.column_stack([Y, sim])
    obs = data[["Days", "Subject"]].set_axis(data.index.astype(str))
    adata = ad.AnnData(X, obs=obs)
    adata.var_names = ["Reaction", *[f"sim{i}" for i in range(5)]]
    formula = lme4_classic["sleepstudy"]["formula"].replace("Reaction ", "")
    omixed.tl.fit(adata, formula, progress=False)
    top = tl_test(adata, contrast="Days")
    assert top.loc["Reaction", "df"] == pytest.approx(ref.loc["Days", "df"], rel=1e-4)
    assert top.loc["Reaction", "se"] == pytest.approx(ref.loc["Days", "se"], rel=1e-4)
    _log_p_close([top.loc["Reaction", "pvalue"]], [ref.loc["Days", "p"]], rtol=1e-3)
    res = lmm.fit(X, obs, formula, feature_names=adata.var_names)
    direct = satterthwaite(res, X, obs, "Days")
    pd.testing.assert_frame_equal(
        top.loc[direct.index].drop(columns=["padj", "reason"]), direct, rtol=1e-8
    )
    mod = tl_test(adata, contrast="Days", moderate=True, key_added="mod")
    assert np.all(np.isfinite(mod[["se", "df", "pvalue"]]))
    assert np.all(mod["df"] >= top.loc[mod.index, "df"] - 1e-9)
    np.testing.assert_allclose(mod["estimate"], top.loc[mod.index, "estimate"])


def _full_system_reference(Yt, spec, design, theta, L):
    """Hessian in (θ, σ) and ∂ l'Cov(β̂)l from the unreduced ``(q+p+1)``-square system.

    The direct formulas of the module notes, one feature at a time: ``Ω = S'AS + diag(I_q, 0)``
    with ``S = blockdiag(Λ(θ), I_p, 1)`` linear in θ, ``D_a = E_a'AS + S'AE_a`` and
    ``D_ab = E_a'AE_b + E_b'AE_a``.
    """
    from conftest import dense_lambda

    from omixed.lmm._fit import prepare

    dense = design.dense
    prep = prepare(Yt, design)
    q, k, dim = dense.q, dense.n_theta, dense.dim
    e = dim - 1
    S_all = dense_lambda(theta, dense)
    hessians, grads = [], []
    full = full_cross_products(spec, design, prep.Ys, prep.W)
    for A, S, nu in zip(full, S_all, prep.n_obs - prep.p_eff, strict=True):
        Om = S.T @ A @ S + np.diag(np.r_[np.ones(q), np.zeros(dim - q)])
        P = np.linalg.inv(Om[:e, :e])
        x = P @ Om[:e, e]
        r2 = Om[e, e] - Om[:e, e] @ x
        w = np.r_[-x, 1.0]
        sigma2 = r2 / nu
        E = []
        for a in range(k):
            Ea = np.zeros((dim, dim))
            Ea[dense.rows[dense.which == a], dense.cols[dense.which == a]] = 1.0
            E.append(Ea)
        D = [Ea.T @ A @ S + S.T @ A @ Ea for Ea in E]
        H = np.zeros((k + 1, k + 1))
        for a in range(k):
            for b in range(k):
                Dab = E[a].T @ A @ E[b] + E[b].T @ A @ E[a]
                PDa, PDb = P @ D[a][:e, :e], P @ D[b][:e, :e]
                logdet = np.trace(P @ Dab[:e, :e]) - np.trace(PDa @ PDb)
                r2_ab = w @ Dab @ w - 2.0 * (D[a] @ w)[:e] @ P @ (D[b] @ w)[:e]
                H[a, b] = logdet + r2_ab / sigma2
            H[a, k] = H[k, a] = -2.0 * (w @ D[a] @ w) / sigma2**1.5
        H[k, k] = 6.0 * r2 / sigma2**2 - 2.0 * nu / sigma2
        l_pad = np.r_[np.zeros(q), L]
        v = P @ l_pad
        grad = [-sigma2 * v @ Da[:e, :e] @ v for Da in D] + [2.0 * np.sqrt(sigma2) * v @ l_pad]
        hessians.append(H)
        grads.append(grad)
    return np.array(hessians), np.array(grads)


@pytest.mark.parametrize(
    "formula",
    [
        "~ cond + (x|g)",
        "~ cond + (x|g) + (1|batch)",
        "~ cond + x + (1 + x|g) + (x|batch)",
        "~ cond + (1 + x + z|g) + (1|batch)",
    ],
)
def test_correlated_elimination_matches_the_full_system(formula):
    # The level-by-level path (term 1 eliminated as in the fit) against the direct formulas on
    # the unreduced system, at arbitrary θ (not an optimum, off-diagonals of both signs).
    rng = np.random.default_rng(11)
    n = 72
    data = pd.DataFrame(
        {
            "g": np.repeat([f"g{i}" for i in range(9)], 8),
            "batch": np.tile([f"b{i}" for i in range(4)], 18),
            "x": rng.normal(size=n),
            "z": rng.normal(size=n),
            "cond": np.tile(["a", "b", "c"], 24),
        }
    )
    g = np.repeat(np.arange(9), 8)
    Y = rng.normal(size=(n, 5)) + rng.normal(size=(9, 5))[g] * (1 + data["x"].to_numpy()[:, None])
    spec = lmm.build_spec(data, formula)
    design = plan_design(spec)
    assert design.correlated
    n_terms, k = len(design.term_names), design.n_theta
    theta = np.column_stack(
        [rng.uniform(0.3, 1.5, (5, n_terms)), rng.normal(0.0, 0.5, (5, k - n_terms))]
    )
    L = contrast_vector("cond[T.b]", spec.fixed_names)[0]
    Yt = np.ascontiguousarray(Y.T)
    out = _moments_chunk(Yt, design, theta, L, satterthwaite=True, X=spec.X)
    H, grad = _full_system_reference(Yt, spec, design, theta, L)
    np.testing.assert_allclose(out["hessian"], H, rtol=1e-9, atol=1e-9 * np.abs(H).max())
    np.testing.assert_allclose(out["grad"], grad, rtol=1e-9, atol=1e-9 * np.abs(grad).max())
