"""Tests for the vectorized random-effects meta-analysis ``omixed.tl._meta.meta``.

References:

- BCG vaccine trials (Colditz et al. 1994; metafor's ``dat.bcg``) with log risk ratios from
  ``escalc(measure="RR")``: metafor's published ``rma`` output (4 decimals; DL values are from
  metafor's test suite, checked there against Stata's ``metan``), and metafor 4.4.0's
  ``cumul(rma(yi, vi, data=dat, method="REML", test="knha"), order=year)`` printed to 15 digits.
- Viechtbauer (2005, J Educ Behav Stat 30:261), examples 1 and 2, pages 271-272: τ², I², H² for
  DL, REML and the empirical Bayes estimator, which is identical to Paule–Mandel.
- Independent computations in this file: the restricted likelihood in matrix form maximized by
  scipy, and the Paule–Mandel equation solved by ``brentq``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import optimize

from omixed.tl._meta import meta

DATA = Path(__file__).parent / "data"
COLUMNS = ["estimate", "se", "stat", "pvalue", "ci_low", "ci_high", "tau2", "Q", "Q_pvalue",
           "I2", "H2", "k", "df", "converged"]  # fmt: skip


def bcg() -> tuple[np.ndarray, np.ndarray]:
    """Log risk ratios and sampling variances exactly as metafor's ``escalc(measure="RR")``."""
    d = pd.read_csv(DATA / "bcg.csv", comment="#")
    yi = np.log((d.tpos / (d.tpos + d.tneg)) / (d.cpos / (d.cpos + d.cneg)))
    vi = 1 / d.tpos - 1 / (d.tpos + d.tneg) + 1 / d.cpos - 1 / (d.cpos + d.cneg)
    return yi.to_numpy(), vi.to_numpy()


def one(y: np.ndarray, v: np.ndarray, **kwargs) -> pd.Series:
    """Meta-analysis of a single feature given variances."""
    return meta(y, np.sqrt(v), **kwargs).iloc[0]


def reml_loglik(y: np.ndarray, v: np.ndarray, tau2: float) -> float:
    """Restricted log-likelihood in matrix form, written independently of the module."""
    vinv = np.diag(1 / (v + tau2))
    x = np.ones((len(y), 1))
    xtvx = x.T @ vinv @ x
    p = vinv - vinv @ x @ np.linalg.solve(xtvx, x.T @ vinv)
    return -0.5 * (np.sum(np.log(v + tau2)) + np.log(np.linalg.det(xtvx)) + y @ p @ y)


def gen_q(y: np.ndarray, v: np.ndarray, tau2: float) -> float:
    """Generalised Cochran statistic Σ w (y − μ̂)² with w = 1/(v + τ²)."""
    w = 1 / (v + tau2)
    return float(np.sum(w * (y - np.sum(w * y) / np.sum(w)) ** 2))


# --- references -------------------------------------------------------------------------------


def test_bcg_effect_sizes_match_escalc():
    # metafor's printed escalc(measure="RR") output for the first six trials
    yi, vi = bcg()
    np.testing.assert_allclose(
        yi[:6], [-0.8893, -1.5854, -1.3481, -1.4416, -0.2175, -0.7861], atol=5e-5
    )
    np.testing.assert_allclose(vi[:6], [0.3256, 0.1946, 0.4154, 0.0200, 0.0512, 0.0069], atol=5e-5)


# metafor's printed rma(yi, vi, method=...) output on dat.bcg, 4 decimals
BCG_METAFOR = {
    "reml": {"tau2": 0.3132, "estimate": -0.7145, "se": 0.1798, "stat": -3.9744,
             "ci_low": -1.0669, "ci_high": -0.3622, "Q": 152.2330},
    "dl": {"tau2": 0.3088, "estimate": -0.7141, "se": 0.1787, "stat": -3.9952,
           "ci_low": -1.0644, "ci_high": -0.3638, "I2": 92.1173},
}  # fmt: skip


@pytest.mark.parametrize("method", list(BCG_METAFOR))
def test_bcg_matches_metafor(method):
    r = one(*bcg(), method=method)
    want = BCG_METAFOR[method]
    np.testing.assert_allclose(r[list(want)].astype(float), list(want.values()), atol=5e-5)


def test_bcg_reml_heterogeneity():
    r = one(*bcg(), method="reml")
    assert r.k == 13 and r.df == 12 and r.converged
    np.testing.assert_allclose(r.I2, 92.22, atol=5e-3)
    np.testing.assert_allclose(r.H2, 1 / (1 - r.I2 / 100), rtol=1e-12)
    assert r.pvalue < 1e-4 and r.Q_pvalue < 1e-20


def test_bcg_dl_i2_is_q_based():
    # for DL, I² equals the Q-based (Q − df)/Q
    r = one(*bcg(), method="dl")
    np.testing.assert_allclose(r.I2, 100 * (r.Q - 12) / r.Q, rtol=1e-12)


def test_bcg_pm_solves_its_equation():
    yi, vi = bcg()
    r = one(yi, vi, method="pm")
    # metafor's iterated DL ("DLIT") gives 0.3181 on these data; it converges to the PM root
    np.testing.assert_allclose(r.tau2, 0.3181, atol=5e-5)
    np.testing.assert_allclose(gen_q(yi, vi, r.tau2), 12, atol=1e-8)
    root = optimize.brentq(lambda t: gen_q(yi, vi, t) - 12, 0, 10, xtol=1e-14)
    np.testing.assert_allclose(r.tau2, root, rtol=1e-9)
    # at the PM root Q(τ²) = k − 1, so the Knapp–Hartung SE equals the usual one
    np.testing.assert_allclose(one(yi, vi, method="pm", knapp_hartung=True).se, r.se, rtol=1e-8)


# metafor 4.4.0: cumul(rma(yi, vi, data=dat, method="REML", test="knha"), order=year); step k:
# (estimate, ci.lb, ci.ub, tau2). Studies enter in publication-year order.
YEAR_ORDER = [0, 1, 5, 2, 9, 8, 11, 4, 6, 10, 12, 3, 7]
CUMUL_KNHA = {
    1: (-0.889311333920205, -2.00766747907616, 0.229044811235751),
    2: (-1.32500344224488, -5.60470865844108, 2.95470177395133, 0.0),
    3: (-0.972079931812824, -1.95119919485508, 0.00703933122943246, 0.087206792838218),
    7: (-0.901251100272772, -1.40314344022821, -0.399358760317336, 0.120459721860583),
    13: (-0.714532342158211, -1.10844371368566, -0.320620970630764, 0.313243258137274),
}


@pytest.mark.parametrize("k", sorted(CUMUL_KNHA))
def test_bcg_knapp_hartung_matches_metafor_cumul(k):
    yi, vi = bcg()
    idx = YEAR_ORDER[:k]
    r = one(yi[idx], vi[idx], method="reml", knapp_hartung=True)
    got = [r.estimate, r.ci_low, r.ci_high, r.tau2][: len(CUMUL_KNHA[k])]
    np.testing.assert_allclose(got, CUMUL_KNHA[k], rtol=1e-8, atol=1e-9)
    if k == 1:  # a single study keeps its own z-based interval and has no τ² estimate
        assert np.isnan(r.tau2) and not r.converged and r.df == 0
    else:
        assert r.converged and r.df == k - 1


def test_bcg_knapp_hartung_se():
    yi, vi = bcg()
    r = one(yi, vi, method="reml", knapp_hartung=True)
    w = 1 / (vi + r.tau2)
    np.testing.assert_allclose(r.se, np.sqrt(gen_q(yi, vi, r.tau2) / (12 * w.sum())), rtol=1e-12)
    # metafor's interval above has half-width t(0.975, 12) · SE: SE = 0.1808, not the z SE 0.1798
    np.testing.assert_allclose(r.se, 0.1808, atol=5e-5)
    assert r.pvalue > one(yi, vi, method="reml").pvalue  # t(12) tails are heavier


VIECHTBAUER_2005 = {  # (yi, vi), {method: (tau2, I2, H2)}
    "example1": (
        ([-0.581, 0.530, 0.771, 1.031, 0.553, 0.295, 0.078, 0.573, -0.176, -0.232],
         [0.023, 0.052, 0.060, 0.115, 0.095, 0.203, 0.200, 0.211, 0.051, 0.040]),
        {"dl": (0.277, 80.44, 5.11), "reml": (0.223, 76.84, 4.32), "pm": (0.192, 74.05, 3.85)},
    ),
    "example2": (
        ([0.100, -0.162, -0.090, -0.049, -0.046, -0.010, -0.431, -0.261, 0.134, 0.019, 0.175,
          0.056, 0.045, 0.103, 0.121, -0.482, 0.290, 0.342],
         [0.016, 0.015, 0.050, 0.050, 0.032, 0.052, 0.036, 0.024, 0.034, 0.033, 0.031, 0.034,
          0.039, 0.167, 0.134, 0.096, 0.016, 0.035]),
        {"dl": (0.013, 27.53, 1.38), "reml": (0.016, 32.02, 1.47), "pm": (0.010, 23.72, 1.31)},
    ),
}  # fmt: skip


@pytest.mark.parametrize("example", sorted(VIECHTBAUER_2005))
@pytest.mark.parametrize("method", ["dl", "reml", "pm"])
def test_viechtbauer_2005(example, method):
    (y, v), ref = VIECHTBAUER_2005[example]
    r = one(np.array(y), np.array(v), method=method)
    tau2, i2, h2 = ref[method]
    np.testing.assert_allclose(r.tau2, tau2, atol=5e-4)
    np.testing.assert_allclose([r.I2, r.H2], [i2, h2], atol=5e-3)


# --- vectorization and independent optimizers -------------------------------------------------


def masked_bcg_stack(n: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """BCG stacked ``n`` times, each row with its own studies missing and its own noise."""
    rng = np.random.default_rng(seed)
    yi, vi = bcg()
    y = yi + rng.normal(0, 0.3, (n, yi.size)) * rng.integers(0, 2, (n, 1))
    se = np.tile(np.sqrt(vi), (n, 1))
    keep = rng.random((n, yi.size)) < rng.uniform(0, 1, (n, 1))  # from none to all studies
    keep[:4] = np.arange(yi.size) < np.array([[0], [1], [2], [yi.size]])  # k = 0, 1, 2, 13
    y[~keep] = se[~keep] = np.nan
    return y, se


@pytest.mark.parametrize(
    ("method", "knapp_hartung"), [("reml", False), ("pm", True), ("dl", False)]
)
def test_vectorized_rows_equal_single_feature_calls(method, knapp_hartung):
    y, se = masked_bcg_stack()
    res = meta(y, se, method=method, knapp_hartung=knapp_hartung)
    assert list(res.columns) == COLUMNS
    k = (~np.isnan(y)).sum(axis=1)
    assert set(k) >= {0, 1, 2, 13}
    np.testing.assert_array_equal(res["k"], k)
    empty = k == 0
    assert res[empty].drop(columns=["k", "converged"]).isna().all(axis=None)
    assert not res["converged"][empty].any()
    singles = pd.concat(
        [
            meta(y[i, obs], se[i, obs], method=method, knapp_hartung=knapp_hartung)
            for i, obs in enumerate(~np.isnan(y))
            if obs.any()
        ]
    )
    singles.index = res.index[~empty]
    pd.testing.assert_frame_equal(res[~empty], singles, rtol=1e-8)


def reml_reference(yi: np.ndarray, vi: np.ndarray) -> float:
    """REML τ² by scipy's bounded scalar minimizer, with the boundary checked separately."""
    ref = optimize.minimize_scalar(
        lambda t: -reml_loglik(yi, vi, t), bounds=(0, 20), method="bounded",
        options={"xatol": 1e-12},
    )  # fmt: skip
    return ref.x if -ref.fun > reml_loglik(yi, vi, 0.0) else 0.0


def test_reml_maximizes_restricted_likelihood():
    y, se = masked_bcg_stack(n=60, seed=1)
    res = meta(y, se, method="reml")
    assert res["converged"][res["k"] >= 2].all()
    tau2 = res["tau2"].to_numpy()
    assert (tau2 == 0).any() and (tau2 > 0).any()  # both boundary and interior maxima
    for i in np.flatnonzero(res["k"].to_numpy() >= 2):
        obs = ~np.isnan(y[i])
        yi, vi = y[i, obs], se[i, obs] ** 2
        ref = reml_reference(yi, vi)
        assert reml_loglik(yi, vi, tau2[i]) >= reml_loglik(yi, vi, ref) - 1e-10
        np.testing.assert_allclose(tau2[i], ref, atol=1e-5 * vi.mean())


@pytest.mark.parametrize(
    ("y", "se"),
    [
        # plain Fisher scoring oscillates around τ² ≈ 0.0084 for hundreds of iterations
        ([-0.231, -0.1275, -0.5173, -0.108, -0.2804], [0.3797, 0.3537, 0.1041, 0.4248, 0.3345]),
        # ℓ_R is convex between the DL start and its maximum at 0: Fisher steps crawl
        ([0.6322, 0.1454, 0.2908, 0.1882, -0.507, 0.103, 0.0819, 0.2541],
         [0.3764, 0.0698, 0.0889, 0.0614, 0.229, 0.4604, 0.4603, 0.3053]),
    ],
)  # fmt: skip
def test_reml_hard_cases_converge_fast(y, se):
    r = meta(np.array(y), np.array(se), method="reml", max_iter=10).iloc[0]
    assert r.converged
    vi = np.array(se) ** 2
    np.testing.assert_allclose(r.tau2, reml_reference(np.array(y), vi), atol=1e-7)


def test_pm_equation_holds_for_every_feature():
    y, se = masked_bcg_stack(n=200, seed=2)
    res = meta(y, se, method="pm")
    for i in np.flatnonzero(res["k"].to_numpy() >= 2):
        obs = ~np.isnan(y[i])
        yi, vi, k = y[i, obs], se[i, obs] ** 2, obs.sum()
        if res["tau2"].iat[i] > 0:
            np.testing.assert_allclose(gen_q(yi, vi, res["tau2"].iat[i]), k - 1, atol=1e-8)
        else:
            assert gen_q(yi, vi, 0.0) <= k - 1


def test_reml_flags_non_convergence():
    y, se = masked_bcg_stack(n=50, seed=3)
    full, capped = meta(y, se, method="reml"), meta(y, se, method="reml", max_iter=1)
    several = full["k"] >= 2
    assert full["converged"][several].all() and not capped["converged"][several].all()


# --- invariants -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dl", "pm", "reml"])
def test_identical_estimates_have_no_heterogeneity(method):
    se = np.array([[0.1, 0.3, 0.2, 0.5], [1.0, 2.0, 0.5, np.nan]])
    y = np.where(np.isnan(se), np.nan, 0.7)
    r = meta(y, se, method=method)
    np.testing.assert_array_equal(r["tau2"], 0.0)
    np.testing.assert_array_equal(r["I2"], 0.0)
    np.testing.assert_array_equal(r["H2"], 1.0)
    np.testing.assert_allclose(r["Q"], 0.0, atol=1e-20)
    np.testing.assert_allclose(r["estimate"], 0.7)
    # equal-effects SE: (Σ 1/se²)^(-1/2)
    np.testing.assert_allclose(r["se"], 1 / np.sqrt(np.nansum(1 / se**2, axis=1)))
    assert r["converged"].all()


@pytest.mark.parametrize("method", ["dl", "pm", "reml"])
@pytest.mark.parametrize("knapp_hartung", [False, True])
def test_scale_shift_and_permutation_invariance(method, knapp_hartung):
    y, se = masked_bcg_stack(n=100, seed=4)
    base = meta(y, se, method=method, knapp_hartung=knapp_hartung)
    c, a = 37.5, -2.0
    scaled = meta(c * y + a, c * se, method=method, knapp_hartung=knapp_hartung)
    for col in ["estimate", "ci_low", "ci_high"]:
        np.testing.assert_allclose(scaled[col], c * base[col] + a, rtol=1e-7)
    np.testing.assert_allclose(scaled["se"], c * base["se"], rtol=1e-7)
    np.testing.assert_allclose(scaled["tau2"], c**2 * base["tau2"], rtol=1e-7, atol=1e-12)
    for col in ["Q", "Q_pvalue", "I2", "H2"]:
        np.testing.assert_allclose(scaled[col], base[col], rtol=1e-7, atol=1e-9)
    perm = np.random.default_rng(5).permutation(y.shape[1])
    permuted = meta(y[:, perm], se[:, perm], method=method, knapp_hartung=knapp_hartung)
    pd.testing.assert_frame_equal(permuted, base, rtol=1e-8)


def test_single_study_feature():
    r = meta(np.array([[np.nan, 0.4, np.nan]]), np.array([[np.nan, 0.2, np.nan]])).iloc[0]
    assert (r.estimate, r.se, r.k, r.df) == (0.4, 0.2, 1, 0)
    np.testing.assert_allclose(r.stat, 2.0)
    np.testing.assert_allclose([r.ci_low, r.ci_high], [0.4 - 0.391993, 0.4 + 0.391993], atol=1e-6)
    np.testing.assert_allclose(r.pvalue, 0.0455003, atol=1e-7)  # 2 · (1 − Φ(2))
    assert r[["tau2", "Q", "Q_pvalue", "I2", "H2"]].isna().all() and not r.converged


# --- inputs -----------------------------------------------------------------------------------


def test_long_and_wide_input_agree():
    y, se = masked_bcg_stack(n=20, seed=6)
    features = [f"g{i}" for i in range(len(y))]
    studies = [f"s{j}" for j in range(y.shape[1])]
    wide_y = pd.DataFrame(y, index=pd.Index(features, name="feature"), columns=studies)
    wide_se = pd.DataFrame(se, index=wide_y.index, columns=studies)
    long = (
        wide_y.stack().rename("estimate").to_frame().join(wide_se.stack().rename("se"))
        .rename_axis(["feature", "study"]).reset_index().sample(frac=1, random_state=0)
    )  # fmt: skip
    wide = meta(wide_y, wide_se)
    from_long = meta(long)
    assert list(wide.index) == features
    # features missing from every study have no row in long form
    present = wide[wide["k"] > 0]
    pd.testing.assert_frame_equal(from_long.loc[present.index], present, rtol=1e-10)
    assert set(from_long.index) == set(present.index)


def test_index_and_one_dimensional_input():
    yi, vi = bcg()
    assert meta(yi, np.sqrt(vi)).index.equals(pd.RangeIndex(1))
    df = pd.DataFrame([yi], index=["bcg"])
    assert list(meta(df, np.sqrt(pd.DataFrame([vi], index=["bcg"]))).index) == ["bcg"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"estimates": np.ones((2, 3)), "ses": np.ones((2, 2))}, "same shape"),
        ({"estimates": np.ones((2, 3))}, "ses is required"),
        ({"estimates": pd.DataFrame({"feature": [1], "estimate": [1.0]})}, r"got \['feature'"),
        ({"estimates": np.array([1.0, np.nan]), "ses": np.array([1.0, 1.0])}, "both or neither"),
        ({"estimates": np.array([1.0, 2.0]), "ses": np.array([1.0, 0.0])}, "must be > 0"),
        ({"estimates": np.array([1.0, np.inf]), "ses": np.array([1.0, 1.0])}, "finite"),
        ({"estimates": np.ones(2), "ses": np.ones(2), "method": "ml"}, "method must be one of"),
        ({"estimates": np.ones(2), "ses": np.ones(2), "level": 95}, "level"),
        (
            {"estimates": pd.DataFrame([[1.0]], index=["a"]),
             "ses": pd.DataFrame([[1.0]], index=["b"])},
            "identical index",
        ),
        (
            {"estimates": pd.DataFrame({"feature": ["a", "a"], "study": ["s", "s"],
                                        "estimate": [1.0, 2.0], "se": [1.0, 1.0]})},
            "duplicated",
        ),
    ],
)  # fmt: skip
def test_bad_input_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        meta(**kwargs)


def test_method_is_case_insensitive():
    yi, vi = bcg()
    pd.testing.assert_frame_equal(meta(yi, np.sqrt(vi), method="REML"), meta(yi, np.sqrt(vi)))
