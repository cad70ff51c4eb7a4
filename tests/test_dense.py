"""Correlated random terms ``(x|g)``: the level-by-level elimination against the unreduced system.

The criterion of :mod:`omixed.lmm._dense` eliminates the largest correlated term level by level;
the references here factor the whole ``Ω = S'AS + diag(I_q, 0, 0)`` instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import cross_from_dense, dense_lambda, full_cross_products

from omixed import lmm
from omixed.lmm._dense import (
    dense_criterion,
    dense_estimates,
    reduce_dense,
)
from omixed.lmm._design import plan_design
from omixed.lmm._fit import prepare
from omixed.lmm._objective import criterion, estimates, factor_criterion, reduce

FORMULAS = [
    "~ x + (x|g)",
    "~ x + (x + z|g)",  # a 3 × 3 factor
    "~ x + (x|g) + (1|batch)",
    "~ x + (1|batch) + (z|site) + (x|g)",  # a second correlated term stays in the reduced system
    "~ x + (0 + x + z|g) + (z||batch)",
]


def _data(seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n_g, reps = 9, 6
    n = n_g * reps
    return pd.DataFrame(
        {
            "g": np.repeat([f"G{i}" for i in range(n_g)], reps),
            "x": np.tile(np.arange(reps, dtype=float), n_g),
            "z": rng.normal(size=n),
            "batch": rng.choice(list("abcd"), n),
            "site": np.tile(list("pqr"), n // 3),
        }
    )


def _problem(formula: str, seed: int = 2):
    """Layout, cross-products of 4 features (missing values, unequal weights; dense and the
    engine's pieces) and a random θ."""
    rng = np.random.default_rng(seed)
    data = _data()
    spec = lmm.build_spec(data, formula)
    design = plan_design(spec)
    Y = rng.normal(size=(4, len(data)))
    Y[rng.random(Y.shape) < 0.15] = np.nan
    prep = prepare(Y, design, rng.uniform(0.5, 2.0, size=Y.shape))
    A = full_cross_products(spec, design, prep.Ys, prep.W)
    layout = design.dense
    sign = np.where(np.isfinite(layout.lower), 1.0, rng.choice([-1.0, 1.0], layout.n_theta))
    theta = rng.uniform(0.2, 1.5, size=(4, layout.n_theta)) * sign
    return layout, A, prep.cross, prep.n_obs, prep.p_eff.astype(float), theta


@pytest.mark.parametrize("formula", FORMULAS)
@pytest.mark.parametrize("reml", [True, False])
def test_eliminated_criterion_equals_the_unreduced_one(formula, reml):
    layout, A, cross, n_obs, p_eff, theta = _problem(formula)
    S = dense_lambda(theta, layout)
    full, _, _, _ = factor_criterion(
        S.transpose(0, 2, 1) @ A @ S, layout.q, np.zeros(A.shape[0]), n_obs, p_eff, reml
    )
    got, _, _ = dense_criterion(theta, reduce_dense(cross, layout), n_obs, p_eff, layout, reml=reml)
    np.testing.assert_allclose(got, full, rtol=1e-12)


@pytest.mark.parametrize("formula", FORMULAS)
@pytest.mark.parametrize("reml", [True, False])
def test_gradient_and_hessian_match_finite_differences(formula, reml):
    layout, _, cross, n_obs, p_eff, theta = _problem(formula)
    red = reduce_dense(cross, layout)

    def f(th, order):
        return dense_criterion(th, red, n_obs, p_eff, layout, reml=reml, order=order)

    _, grad, hess = f(theta, 2)
    h = 1e-6
    for j in range(layout.n_theta):
        step = np.zeros_like(theta)
        step[:, j] = h
        fd = (f(theta + step, 0)[0] - f(theta - step, 0)[0]) / (2 * h)
        np.testing.assert_allclose(grad[:, j], fd, rtol=1e-6, atol=1e-6)
        fd = (f(theta + step, 1)[1] - f(theta - step, 1)[1]) / (2 * h)
        np.testing.assert_allclose(hess[:, :, j], fd, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(hess, hess.transpose(0, 2, 1))


@pytest.mark.parametrize("formula", FORMULAS)
def test_estimates_match_a_solve_of_the_unreduced_system(formula):
    layout, A, cross, n_obs, p_eff, theta = _problem(formula)
    q = layout.q
    beta, se, blup, sigma2 = dense_estimates(theta, cross, layout, n_obs, p_eff, reml=True)
    S = dense_lambda(theta, layout)
    Om = S.transpose(0, 2, 1) @ A @ S
    Om[:, np.arange(q), np.arange(q)] += 1.0
    inv = np.linalg.inv(Om[:, :-1, :-1])
    sol = np.einsum("mij,mj->mi", inv, Om[:, :-1, -1])
    r2 = Om[:, -1, -1] - np.einsum("mi,mi->m", Om[:, -1, :-1], sol)
    want_sigma2 = r2 / (n_obs - p_eff)
    np.testing.assert_allclose(sigma2, want_sigma2, rtol=1e-10)
    np.testing.assert_allclose(beta, sol[:, q:], rtol=1e-9, atol=1e-12)
    want_se = np.sqrt(want_sigma2[:, None] * np.diagonal(inv, axis1=1, axis2=2)[:, q:])
    np.testing.assert_allclose(se, want_se, rtol=1e-9)
    want_blup = np.einsum("mij,mj->mi", S[:, :q, :q], sol[:, :q])
    np.testing.assert_allclose(blup, want_blup, rtol=1e-9, atol=1e-12)


def test_no_column_on_the_bound_descends_through_its_sign_flip():
    # Negating a column of T keeps TT'; with T_cc = 0 it flips the gradient in T_cc, so a fit
    # held by the bound with the gradient pushing outward is descended again from the flip.
    # Without that, 1 of these 60 features stopped 1.3e-3 above the optimum.
    formula = "~ x + (1|batch) + (z|site) + (x|g)"
    data = _data()
    rng = np.random.default_rng(3)
    g = pd.factorize(data["g"])[0]
    Y = rng.normal(size=(len(data), 200)) + rng.normal(size=(9, 200))[g] * (
        1 + data["x"].to_numpy()[:, None]
    )
    Y[rng.random(Y.shape) < 0.1] = np.nan
    W = rng.uniform(0.5, 2, size=Y.shape)
    Y, W = Y[:, 90:150], W[:, 90:150]
    res = lmm.fit(Y, data, formula, reml=False, weights=W)
    design = plan_design(lmm.build_spec(data, formula))
    layout = design.dense
    theta = res.theta[[*design.term_names, *design.extra_names]].to_numpy()
    off = np.flatnonzero(layout.column_of >= 0)
    at_zero = theta[:, layout.column_of[off]] <= 1e-8
    rows = np.flatnonzero(np.any(at_zero & (theta[:, off] != 0.0), axis=1))
    assert rows.size >= 5
    flipped = theta[rows]
    flipped[:, off] = np.where(at_zero[rows], -flipped[:, off], flipped[:, off])
    prep = prepare(np.ascontiguousarray(Y.T[rows]), design, np.ascontiguousarray(W.T[rows]))
    red = reduce_dense(prep.cross, layout)
    _, grad, _ = dense_criterion(
        flipped, red, prep.n_obs, prep.p_eff.astype(float), layout, reml=False, order=1
    )
    assert (grad[:, layout.column_of[off]][at_zero[rows]] > -1e-5).all()
    assert res.criterion.iloc[21] < 176.5777  # 176.57760, not the local optimum 176.57893


def _sleepstudy_like(n_features: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_sub, n_t = 18, 10
    data = pd.DataFrame(
        {
            "Subject": np.repeat([f"S{i}" for i in range(n_sub)], n_t),
            "Days": np.tile(np.arange(n_t, dtype=float), n_sub),
            "batch": np.tile(list("abcde"), n_sub * n_t // 5),
        }
    )
    g = np.repeat(np.arange(n_sub), n_t)
    Y = (
        rng.normal(size=(n_sub, n_features))[g]
        + 0.3 * rng.normal(size=(n_sub, n_features))[g] * data["Days"].to_numpy()[:, None]
        + rng.normal(size=(n_sub * n_t, n_features))
    )
    Y[rng.random(Y.shape) < 0.1] = np.nan
    return data, Y


@pytest.mark.parametrize(
    "formula", ["~ Days + (Days|Subject)", "~ Days + (Days|Subject) + (1|batch)"]
)
def test_correlated_fits_do_not_depend_on_chunks_or_jobs(formula):
    data, Y = _sleepstudy_like(30)
    weights = np.random.default_rng(5).uniform(0.5, 2.0, size=Y.shape)
    ref = lmm.fit(Y, data, formula, weights=weights)
    assert ref.converged.all()
    for kwargs in ({"chunk_size": 7}, {"chunk_size": 1}, {"n_jobs": 2, "chunk_size": 13}):
        other = lmm.fit(Y, data, formula, weights=weights, **kwargs)
        pd.testing.assert_series_equal(other.criterion, ref.criterion, check_exact=True)
        pd.testing.assert_frame_equal(other.theta, ref.theta, check_exact=True)
        pd.testing.assert_frame_equal(other.beta, ref.beta, check_exact=True)
        pd.testing.assert_frame_equal(other.se, ref.se, check_exact=True)
        pd.testing.assert_frame_equal(other.variance, ref.variance, check_exact=True)
        for term, blup in ref.blup.items():
            pd.testing.assert_frame_equal(other.blup[term], blup, check_exact=True)


@pytest.mark.parametrize(
    "formula", ["~ Days + (Days|Subject)", "~ Days + (Days|Subject) + (1|batch)"]
)
def test_fits_do_not_depend_on_the_order_of_the_samples(formula):
    """No two rows share their design, so the sums over rows run in one order whatever the
    samples' order: the results are the same bitwise (missing values included)."""
    data, Y = _sleepstudy_like(20)
    Y[np.random.default_rng(6).random(Y.shape) < 0.1] = np.nan
    ref = lmm.fit(Y, data, formula)
    perm = np.random.default_rng(7).permutation(len(data))
    other = lmm.fit(Y[perm], data.iloc[perm].reset_index(drop=True), formula)
    for name in ("criterion", "theta", "beta", "se", "variance"):
        pd.testing.assert_frame_equal(
            pd.DataFrame(getattr(other, name)), pd.DataFrame(getattr(ref, name)), check_exact=True
        )


def test_a_criterion_with_two_valleys_picks_one_whatever_the_sample_order():
    """Found by a long fuzz run: 9 near-constant values, 4 donors with correlated slopes (2 + 8
    coefficients).  The criterion has lme4's optimum at θ ≈ (0.24, 0, 1.18), -222.60, and a far
    valley where σ → 0 (-228.20).  Summed in the rows' given order, the rounding of the
    cross-products sent this permutation into the far valley."""
    y = np.array(
        [np.nan, 20.000000021209683, np.nan, 19.99999997591114, np.nan, 20.000000007068888,
         20.000000010156327, 19.999999964427484, 20.000000033334988, 20.00000001693753,
         20.000000021659485, 20.000000037058953]
    )  # fmt: skip
    data = pd.DataFrame(
        {
            "donor": np.repeat(["d0", "d1", "d2", "d3"], 3),
            "condition": list("cctctcctttcc"),
            "x": [-0.399936, 0.209969, 0.193130, 0.501182, -1.683728, 0.881044, -0.574105,
                  -2.010512, -0.484388, 1.471296, 0.433366, -0.244229],
        }
    )  # fmt: skip
    formula = "~ condition + (x|donor)"
    ref = lmm.fit(y[:, None], data, formula)
    perm = np.array([6, 2, 11, 7, 9, 8, 4, 3, 1, 0, 10, 5])
    other = lmm.fit(y[perm, None], data.iloc[perm].reset_index(drop=True), formula)
    assert other.criterion.iloc[0] == ref.criterion.iloc[0]
    np.testing.assert_array_equal(other.theta.to_numpy(), ref.theta.to_numpy())
    # lme4 (nloptwrap and Nelder_Mead) stops at REML criterion -29.18708 on y' = (y - 20)·1e6;
    # on y that is -29.18708 - 2·7·log(1e6) = -222.6042 (n − p = 7).
    assert abs(ref.criterion.iloc[0] - (-29.18708 - 14 * np.log(1e6))) < 1e-4


# Several terms on one factor without correlations: eliminated level by level with a diagonal T.
SCALAR_GROUPS = [
    "~ x + (x||g)",
    "~ x + (1|g) + (0 + x|g) + (1|batch)",
    "~ x + (1|batch) + (x + z||g)",  # three terms on g, which is not first in the formula
    "~ x + (0 + x + z||g) + (z||site)",  # a second group stays in the reduced system
]
SAME_FACTOR = [*SCALAR_GROUPS, "~ x + (x|g) + (0 + z|g)"]  # T with one off-diagonal of three


def test_design_eliminates_the_factor_with_the_most_columns():
    data = _data()
    cases = {
        "~ x + (1|batch) + (x||g)": ("g", "g.x", "batch"),
        "~ x + (1|g) + (1|batch) + (0 + x|g)": ("g", "g.x", "batch"),
        "~ x + (1|batch) + (z||site)": ("site", "site.z", "batch"),  # 6 columns, batch 4
        "~ x + (1|batch) + (z|site)": ("site", "site.z", "batch"),
    }
    for formula, names in cases.items():
        design = plan_design(lmm.build_spec(data, formula))
        assert design.term_names == names
        assert design.dense.levels.shape == (data[names[0]].nunique(), 2)
        assert design.correlated == ("(z|site)" in formula)
    # A lone scalar term first: the closed-form elimination of _objective.
    design = plan_design(lmm.build_spec(data, "~ x + (1|g) + (0 + x|batch)"))
    assert design.dense is None and design.term_names == ("g", "batch.x")


@pytest.mark.parametrize("formula", SCALAR_GROUPS)
@pytest.mark.parametrize("reml", [True, False])
def test_scalar_group_elimination_equals_the_closed_form_one(formula, reml):
    # _objective eliminates only the group's first term and keeps the others in its reduced
    # system; the criterion, gradient, Hessian and estimates are the same functions of θ.
    layout, A, cross, n_obs, p_eff, theta = _problem(formula)
    design = plan_design(lmm.build_spec(_data(), formula))
    assert not design.correlated and design.layout.n_theta == layout.n_theta
    theta[0, 0] = theta[1, 1] = theta[2, -1] = 0.0  # on the bound too
    red = reduce_dense(cross, layout)
    got = dense_criterion(theta, red, n_obs, p_eff, layout, reml=reml, order=2)
    closed_form = cross_from_dense(A, design.layout.sizes[0])  # the group's first term only
    want = criterion(theta, reduce(closed_form, design.layout), n_obs, p_eff, reml=reml, order=2)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10)
    got = dense_estimates(theta, cross, layout, n_obs, p_eff, reml)
    want = estimates(theta, closed_form, design.layout, n_obs, p_eff, reml)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("formula", SAME_FACTOR)
@pytest.mark.parametrize("reml", [True, False])
def test_same_factor_elimination_equals_the_unreduced_criterion(formula, reml):
    test_eliminated_criterion_equals_the_unreduced_one(formula, reml)
    test_gradient_and_hessian_match_finite_differences(formula, reml)


@pytest.mark.parametrize("formula", SAME_FACTOR)
def test_same_factor_estimates_match_a_full_solve(formula):
    test_estimates_match_a_solve_of_the_unreduced_system(formula)


@pytest.mark.parametrize(
    "formula", ["~ Days + (Days||Subject)", "~ Days + (1|batch) + (Days||Subject)"]
)
def test_same_factor_fits_do_not_depend_on_chunks_or_jobs(formula):
    test_correlated_fits_do_not_depend_on_chunks_or_jobs(formula)


def test_fits_with_several_optima_reach_lme4s_criterion():
    """Small (x|donor) fits where lme4's optimum is singular or far out (tests/data/singular)."""
    folder = Path(__file__).parent / "data" / "singular"
    problems = pd.read_csv(folder / "problems.csv")
    ref = pd.read_csv(folder / "lme4.csv").set_index("problem")["crit"]
    for name, data in problems.groupby("problem", sort=False):
        res = lmm.fit(data["y"].to_numpy(), data, "y ~ condition + (x|donor)")
        assert res.converged.iloc[0], name
        assert res.criterion.iloc[0] <= ref[name] + 1e-6, (name, res.criterion.iloc[0], ref[name])
