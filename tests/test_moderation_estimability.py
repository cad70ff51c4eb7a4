"""Inference where real data are incomplete: estimable contrasts and a prior that stays finite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from omixed import lmm

LEVELS = list("abcde")
DATA = Path(__file__).parent / "data" / "moderation"


def _spike_in(seed=0, n_features=40):
    """Five conditions × 4 samples; feature 0 is never observed in the reference level a."""
    rng = np.random.default_rng(seed)
    data = pd.DataFrame(
        {"condition": np.repeat(LEVELS, 4), "batch": np.tile(["b1", "b2", "b3", "b4"], 5)}
    )
    level = pd.factorize(data["condition"], sort=True)[0]
    effects = rng.normal(0, 1, (5, n_features))
    Y = 20 + effects[level] + rng.normal(0, 0.5, (4, n_features))[np.tile(range(4), 5)]
    Y += rng.normal(0, 0.3, Y.shape)
    Y[data["condition"] == "a", 0] = np.nan
    return data, Y


def test_a_feature_missing_the_reference_level_reports_only_estimable_contrasts():
    data, Y = _spike_in()
    res = lmm.fit(Y, data, "~ condition + (1|batch)")
    assert "condition[T.e] not estimable" in res.notes.iloc[0]
    vs_reference = lmm.contrast_moments(res, Y, data, "condition[T.b]")
    assert np.isnan(vs_reference["estimate"].iloc[0])
    assert vs_reference["reason"].iloc[0] == "contrast not estimable from the observed samples"
    assert vs_reference["estimate"].iloc[1:].notna().all()
    between = lmm.contrast_moments(res, Y, data, "condition[T.e] - condition[T.d]").iloc[0]
    # Independent reference: that feature alone, on its observed rows, with d as the reference.
    rows = data["condition"] != "a"
    alone = data[rows].assign(condition=lambda d: pd.Categorical(d["condition"], list("dbce")))
    ref = lmm.fit(Y[rows.to_numpy(), :1], alone.reset_index(drop=True), "~ condition + (1|batch)")
    assert between["estimate"] == pytest.approx(ref.beta["condition[T.e]"].iloc[0], rel=1e-8)
    assert np.sqrt(between["var"]) == pytest.approx(ref.se["condition[T.e]"].iloc[0], rel=1e-6)
    assert between["reason"] == ""


def test_the_value_of_an_estimable_contrast_does_not_depend_on_the_dropped_column():
    data, Y = _spike_in(seed=1)
    by_a = lmm.fit(Y, data, "~ condition + (1|batch)")
    by_e = lmm.fit(Y, data, "~ C(condition, contr.treatment('e')) + (1|batch)")
    name = "C(condition, contr.treatment('e'))"
    one = lmm.contrast_moments(by_a, Y, data, "condition[T.e] - condition[T.d]")
    # e − d in the coding with e as the reference is −β[T.d].
    two = lmm.contrast_moments(by_e, Y, data, {f"{name}[T.d]": -1.0})
    np.testing.assert_allclose(one["estimate"], two["estimate"], rtol=1e-7)
    np.testing.assert_allclose(one["var"], two["var"], rtol=1e-6)
    np.testing.assert_allclose(one["df_satterthwaite"], two["df_satterthwaite"], rtol=1e-5)
    # b − a is estimable in every feature but the first, in both codings.
    b_a = lmm.contrast_moments(by_e, Y, data, {f"{name}[T.b]": 1.0, f"{name}[T.a]": -1.0})
    assert np.isnan(b_a["estimate"].iloc[0]) and b_a["estimate"].iloc[1:].notna().all()
    direct = lmm.contrast_moments(by_a, Y, data, "condition[T.b]")
    np.testing.assert_allclose(b_a["estimate"].iloc[1:], direct["estimate"].iloc[1:], rtol=1e-7)


def test_estimable_is_the_row_space_test():
    X = np.column_stack([np.ones(6), [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1], np.arange(6.0)])
    gram = (X.T @ X)[None]
    assert lmm.estimable(np.array([0.0, 1.0, -1.0, 0.0]), gram)[0]
    rows = np.array([2, 3, 4, 5])  # the reference level unobserved: intercept = sum of both
    gram = (X[rows].T @ X[rows])[None]
    assert lmm.estimable(np.array([0.0, 1.0, -1.0, 0.0]), gram)[0]
    assert not lmm.estimable(np.array([0.0, 1.0, 0.0, 0.0]), gram)[0]
    assert lmm.estimable(np.array([0.0, 0.0, 0.0, 1.0]), gram * 1e6)[0]  # units do not matter


def _scaled_f(rng, d, d0, s0):
    """Variances s² ~ s₀² F(d, d₀): true variances from the prior, then sampling noise."""
    true = s0 * d0 / rng.chisquare(d0, d.size)
    return true * rng.chisquare(d) / d


def test_the_likelihood_prior_stays_finite_where_the_moment_estimator_collapses():
    # Effective residual df as mixed models on incomplete data give them: a third below 0.5.
    rng = np.random.default_rng(4)
    d = np.concatenate([rng.uniform(0.05, 0.5, 1000), rng.uniform(1, 20, 2000)])
    x = _scaled_f(rng, d, 4.0, 0.1)
    moments = lmm.squeeze_var(x, d, legacy=True)
    likelihood = lmm.squeeze_var(x, d)
    assert np.isinf(moments.df_prior)  # one common variance for every feature
    assert likelihood.df_prior == pytest.approx(4.0, rel=0.25)
    assert likelihood.var_prior == pytest.approx(0.1, rel=0.15)
    assert likelihood.n_prior == d.size
    post, prior = likelihood.var_post, likelihood.var_prior
    assert np.all((post >= np.minimum(x, prior) * (1 - 1e-12)) & (post <= np.maximum(x, prior)))


def test_the_prior_scales_with_the_data_and_ignores_uninformative_entries():
    rng = np.random.default_rng(5)
    d = rng.uniform(0.5, 12, 500)
    x = _scaled_f(rng, d, 8.0, 2.0)
    one, hundred = lmm.squeeze_var(x, d), lmm.squeeze_var(100 * x, d)
    assert hundred.df_prior == pytest.approx(one.df_prior, rel=1e-6)
    assert hundred.var_prior == pytest.approx(100 * one.var_prior, rel=1e-6)
    padded = lmm.squeeze_var(np.r_[x, np.nan, 5.0], np.r_[d, 3.0, 0.001])
    assert padded.df_prior == pytest.approx(one.df_prior, rel=1e-9)
    assert padded.n_prior == d.size


def test_robust_moderation_gives_outlying_variances_their_own_small_prior_df():
    rng = np.random.default_rng(6)
    d = rng.uniform(2, 10, 1000)
    x = _scaled_f(rng, d, 10.0, 1.0)
    x[:10] *= 200.0  # ten features with hugely inflated variances
    plain = lmm.squeeze_var(x, d)
    robust = lmm.squeeze_var(x, d, robust=True)
    assert robust.df_prior.shape == x.shape
    assert robust.df_prior[:10].max() < 0.5 * np.median(robust.df_prior[10:])
    assert np.median(robust.df_prior[10:]) > plain.df_prior  # the bulk's prior recovers
    assert np.median(robust.df_prior[10:]) == pytest.approx(10.0, rel=0.3)


@pytest.mark.parametrize("name", ["alphapept", "maxquant"])
def test_the_prior_is_finite_on_real_proteomics_variances(name):
    real = pd.read_csv(DATA / f"{name}_variances.csv", index_col=0)
    sq = lmm.squeeze_var(real["sigma2"], real["df_effective"])
    assert 2.0 <= sq.df_prior < 100.0
    assert sq.n_prior == (real["df_effective"] >= 0.01).sum()  # limma: smaller df say nothing
    x, post = real["sigma2"].to_numpy(), sq.var_post
    lo, hi = np.minimum(x, sq.var_prior), np.maximum(x, sq.var_prior)
    assert np.all((post >= lo * (1 - 1e-12)) & (post <= hi * (1 + 1e-12)))


def test_the_moment_estimator_collapses_on_the_real_variances_with_tiny_df():
    real = pd.read_csv(DATA / "alphapept_variances.csv", index_col=0)
    assert (real["df_effective"] < 1).sum() == 11
    assert np.isinf(lmm.squeeze_var(real["sigma2"], real["df_effective"], legacy=True).df_prior)
