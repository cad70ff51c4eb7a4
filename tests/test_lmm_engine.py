"""Engine behaviour: invariances, per-feature problems as flags, clear errors, internals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import cross_from_dense, crossed_design, simulate

from omixed import lmm
from omixed.lmm._design import plan_design
from omixed.lmm._grouped import _buckets
from omixed.lmm._objective import Layout, criterion, reduce
from omixed.lmm._spec import aliased_mask

FORMULA = "~ condition + (1|batch) + (1|donor)"


@pytest.fixture(scope="module")
def crossed():
    design = crossed_design()
    return design, simulate(design, n_features=40, missing=0.15)


def test_results_do_not_depend_on_chunks_or_jobs(crossed):
    design, Y = crossed
    ref = lmm.fit(Y, design, FORMULA)
    for kwargs in ({"chunk_size": 7}, {"chunk_size": 1}, {"n_jobs": 2, "chunk_size": 13}):
        other = lmm.fit(Y, design, FORMULA, **kwargs)
        pd.testing.assert_series_equal(other.criterion, ref.criterion, check_exact=True)
        pd.testing.assert_frame_equal(other.beta, ref.beta, check_exact=True)
        pd.testing.assert_frame_equal(other.variance, ref.variance, check_exact=True)
        pd.testing.assert_frame_equal(other.blup["batch"], ref.blup["batch"], check_exact=True)


def test_permuting_rows_and_features_permutes_results(crossed):
    design, Y = crossed
    ref = lmm.fit(Y, design, FORMULA)
    rows = np.random.default_rng(3).permutation(len(design))
    cols = np.arange(Y.shape[1])[::-1]
    res = lmm.fit(Y[rows][:, cols], design.iloc[rows], FORMULA)
    np.testing.assert_allclose(res.criterion.to_numpy(), ref.criterion.to_numpy()[cols], rtol=1e-9)
    np.testing.assert_allclose(res.beta.to_numpy(), ref.beta.to_numpy()[cols], rtol=1e-6, atol=1e-8)


def test_shift_changes_only_intercept_and_scale_is_equivariant(crossed):
    design, Y = crossed
    ref = lmm.fit(Y, design, FORMULA)
    shifted = lmm.fit(Y + 1000.0, design, FORMULA)
    np.testing.assert_allclose(shifted.criterion, ref.criterion, rtol=1e-9)
    np.testing.assert_allclose(
        shifted.beta["Intercept"], ref.beta["Intercept"] + 1000.0, rtol=1e-10
    )
    np.testing.assert_allclose(shifted.beta.iloc[:, 1], ref.beta.iloc[:, 1], rtol=1e-6, atol=1e-9)
    for c in (1e-6, 1e6):
        scaled = lmm.fit(Y * c, design, FORMULA)
        np.testing.assert_allclose(scaled.theta, ref.theta, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(
            scaled.variance, ref.variance * c**2, rtol=1e-6, atol=1e-8 * c**2
        )
        nu = ref.n_obs - 2  # REML criterion shifts by ν log c²
        np.testing.assert_allclose(scaled.criterion, ref.criterion + nu * np.log(c**2), rtol=1e-9)


def test_criterion_at_optimum_beats_start_and_boundary(crossed):
    design, Y = crossed
    res = lmm.fit(Y, design, FORMULA)
    other = lmm.fit(Y, design, "~ condition")  # θ = 0 is the model without random effects
    assert (res.criterion <= other.criterion + 1e-9).all()
    assert (res.theta >= 0).all().all()
    assert (res.variance >= 0).all().all()


def test_unfittable_features_are_flagged_not_raised():
    design = crossed_design()
    Y = simulate(design, n_features=6)
    Y[:, 0] = np.nan  # all missing
    Y[:, 1] = 3.0  # constant
    keep = [0, int(np.flatnonzero(design["condition"] == "treated")[0])]
    Y[np.setdiff1d(np.arange(len(design)), keep), 2] = np.nan  # 2 observations, 2 fixed effects
    Y[design["condition"] == "treated", 3] = np.nan  # condition never observed
    Y[design["batch"] != "B0", 4] = np.nan  # one batch only
    res = lmm.fit(Y, design, FORMULA)
    assert res.reason.iloc[0] == "all values missing"
    assert res.reason.iloc[1] == "constant values"
    assert "fewer observations" in res.reason.iloc[2]
    assert not res.converged.iloc[:3].any()
    assert res.criterion.iloc[:3].isna().all() and res.beta.iloc[:3].isna().all().all()
    # Feature 3: the condition coefficient is not estimable and reported as NaN, the rest is fit.
    assert (
        res.converged.iloc[3] and np.isnan(res.beta.iloc[3, 1]) and np.isfinite(res.beta.iloc[3, 0])
    )
    assert "condition[T.treated] not estimable" in res.notes.iloc[3]
    # Feature 4: a single observed batch level: batch variance fixed at 0.
    assert res.converged.iloc[4] and res.variance["batch"].iloc[4] == 0.0
    assert "batch has < 2 observed levels" in res.notes.iloc[4]
    assert res.blup["batch"].iloc[4].drop("B0").isna().all()
    assert res.converged.iloc[5] and res.reason.iloc[5] == ""


def test_residual_variance_tending_to_zero_is_flagged():
    # lme4 stops at residual SD 0.003 with a degenerate Hessian (see the README of the data)
    data = pd.read_csv(Path(__file__).parent / "data" / "residual_to_zero" / "feature.csv")
    res = lmm.fit(data[["y"]].to_numpy(), data, FORMULA)
    assert res.reason.iloc[0].startswith("residual variance tends to 0")
    assert not res.converged.iloc[0]


def test_residual_variance_below_double_precision_is_flagged():
    # Found by a long fuzz run: one residual degree of freedom, two replicates (rows 1 and 4)
    # that agree to 6.5e-6 relative, so σ̂ → 0 and θ̂ ≈ 1.4e5.  r² is then ~4e-11 of y'y and
    # the criterion is rounding noise: the same data shifted by a constant stopped 2e-4 away.
    data = pd.DataFrame(
        {"batch": ["b0", "b2", "b1", "b1", "b2"], "condition": ["t", "t", "c", "t", "t"]}
    )
    y = np.array([-9.99382611e-07, 3.82543586e-06, 4.56641174e-07, 3.89410155e-07, 3.82541117e-06])
    formula = "~ condition + (1|batch)"
    for shift in (0.0, 4.2e-5):
        res = lmm.fit(y[:, None] + shift, data, formula)
        assert not res.converged.iloc[0]
        assert res.reason.iloc[0].startswith("residual variance below 1e-9")
    # Replicates that differ at the 20 % level leave a resolvable residual: fit as usual.
    y[4] = 3.0e-6
    res = lmm.fit(y[:, None], data, formula)
    assert res.converged.iloc[0] and res.reason.iloc[0] == ""


def test_rank_deficient_feature_matches_fit_without_that_column():
    design = crossed_design()
    Y = simulate(design, n_features=3)
    Y[design["condition"] == "treated", :] = np.nan
    full = lmm.fit(Y, design, FORMULA)
    reduced = lmm.fit(Y, design, "~ 1 + (1|batch) + (1|donor)")
    np.testing.assert_allclose(full.criterion, reduced.criterion, rtol=1e-9)
    np.testing.assert_allclose(full.beta["Intercept"], reduced.beta["Intercept"], rtol=1e-7)


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("~ condition + (1|plate)", "'plate'.*available columns"),
        ("~ treatment + (1|batch)", "treatment.*not found"),
        ("~ condition + cond2 + (1|batch)", "rank deficient.*cond2"),
        ("~ condition + (1|batch", "unbalanced"),
        ("condition + (1|batch)", "'~'"),
        ("~ condition + 1|batch", "parentheses"),
    ],
)
def test_bad_formulas_raise_clear_errors(formula, message):
    design = crossed_design().assign(cond2=lambda d: d["condition"])
    Y = simulate(design, n_features=2)
    with pytest.raises(ValueError, match=message):
        lmm.fit(Y, design, formula)


def test_bad_responses_raise_clear_errors():
    design = crossed_design()
    Y = simulate(design, n_features=3)
    with pytest.raises(ValueError, match="rows"):
        lmm.fit(Y[:-1], design, FORMULA)
    Y[2, 1] = np.inf
    with pytest.raises(ValueError, match=r"1 infinite value.*row 2, feature 1"):
        lmm.fit(Y, design, FORMULA)
    with pytest.raises(ValueError, match="numeric"):
        lmm.fit(np.full((len(design), 2), "a"), design, FORMULA)


def test_aliased_mask_finds_later_dependent_columns():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    X = np.column_stack([X, X[:, 0] + 2 * X[:, 2], rng.normal(size=20)])
    assert aliased_mask((X.T @ X)[None])[0].tolist() == [False, False, False, True, False]


def test_gradient_matches_finite_differences(crossed):
    design, Y = crossed
    spec = lmm.build_spec(design, FORMULA)
    Z = [
        spec.terms[1].indicator().toarray(),
        spec.terms[0].indicator().toarray(),
    ]  # donor (8 levels) first
    M = np.hstack([*Z, spec.X])
    y = np.nan_to_num(Y[:, :4])
    w = np.isfinite(Y[:, :4]).astype(float)
    A = np.stack(
        [
            (np.column_stack([M, y[:, f]]) * w[:, f, None]).T @ np.column_stack([M, y[:, f]])
            for f in range(4)
        ]
    )
    red = reduce(cross_from_dense(A, 8), Layout((8, 4), 2))
    n = w.sum(0)
    theta = np.array([[0.7, 1.3], [0.0, 0.4], [2.0, 0.0], [0.3, 0.3]])
    for reml in (True, False):
        _, g, _ = criterion(theta, red, n, np.full(4, 2.0), reml=reml, order=1)
        h = 1e-6
        for j in range(2):
            tp, tm = theta.copy(), theta.copy()
            tp[:, j] += h
            tm[:, j] = np.maximum(tm[:, j] - h, 0.0)
            fp, _, _ = criterion(tp, red, n, np.full(4, 2.0), reml=reml)
            fm, _, _ = criterion(tm, red, n, np.full(4, 2.0), reml=reml)
            fd = (fp - fm) / (tp[:, j] - tm[:, j])
            np.testing.assert_allclose(g[:, j], fd, rtol=1e-5, atol=1e-5)


def _crossed_cross_products(Y, design, n_features=4):
    spec = lmm.build_spec(design, FORMULA)
    M = np.hstack(
        [spec.terms[1].indicator().toarray(), spec.terms[0].indicator().toarray(), spec.X]
    )  # donor first
    y = np.nan_to_num(Y[:, :n_features])
    w = np.isfinite(Y[:, :n_features]).astype(float)
    My = [np.column_stack([M, y[:, f]]) for f in range(n_features)]
    A = np.stack([(My[f] * w[:, f, None]).T @ My[f] for f in range(n_features)])
    return A, w.sum(0)


@pytest.mark.parametrize("reml", [True, False])
def test_hessian_matches_finite_differences_of_gradient(crossed, reml):
    A, n = _crossed_cross_products(crossed[1], crossed[0])
    red = reduce(cross_from_dense(A, 8), Layout((8, 4), 2, count_classes=3))
    theta = np.array([[0.7, 1.3], [0.0, 0.4], [2.0, 0.0], [0.3, 0.3]])
    p = np.full(4, 2.0)
    _, _, hess = criterion(theta, red, n, p, reml=reml, order=2)
    h = 1e-5
    for j in range(2):
        tp, tm = theta.copy(), theta.copy()
        tp[:, j] += h
        tm[:, j] -= h  # the criterion is even in θ, so θ < 0 is a valid evaluation point
        _, gp, _ = criterion(tp, red, n, p, reml=reml, order=1)
        _, gm, _ = criterion(tm, red, n, p, reml=reml, order=1)
        np.testing.assert_allclose(hess[:, :, j], (gp - gm) / (2 * h), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reml", [True, False])
def test_three_term_derivatives_match_finite_differences(reml):
    """Gradient and Hessian with two terms left after elimination (peptide-like), at random θ."""
    rng = np.random.default_rng(7)
    sizes, n, m = (10, 6, 3), 70, 5
    M = np.hstack([*(np.eye(s)[rng.integers(0, s, n)] for s in sizes), np.ones((n, 1))])
    M = np.hstack([M, rng.normal(size=(n, 1))])
    Y = rng.normal(size=(n, m)) + M[:, :10] @ rng.normal(size=(10, m))
    w = (rng.random((n, m)) > 0.2).astype(float)
    A = np.stack([(np.c_[M, Y[:, f]] * w[:, f, None]).T @ np.c_[M, Y[:, f]] for f in range(m)])
    red = reduce(cross_from_dense(A, sizes[0]), Layout(sizes, 2))
    theta = rng.uniform(0.2, 2.0, size=(m, 3))
    n_obs, p = w.sum(axis=0), np.full(m, 2.0)
    _, g, hess = criterion(theta, red, n_obs, p, reml=reml, order=2)
    h = 1e-5
    for j in range(3):
        tp, tm = theta.copy(), theta.copy()
        tp[:, j] += h
        tm[:, j] -= h
        fp, gp, _ = criterion(tp, red, n_obs, p, reml=reml, order=1)
        fm, gm, _ = criterion(tm, red, n_obs, p, reml=reml, order=1)
        np.testing.assert_allclose(g[:, j], (fp - fm) / (2 * h), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(hess[:, :, j], (gp - gm) / (2 * h), rtol=1e-5, atol=1e-5)


def test_criterion_of_many_features_equals_one_at_a_time(monkeypatch):
    """Blocking the features (``_BLOCK_BYTES``) changes no result: each is evaluated alone."""
    from omixed.lmm import _objective

    monkeypatch.setattr(_objective, "_BLOCK_BYTES", 2**14)  # blocks of 16 features of dr = 11
    rng = np.random.default_rng(11)
    sizes, n, m = (12, 5, 3), 60, 300
    M = np.hstack([*(np.eye(s)[rng.integers(0, s, n)] for s in sizes), np.ones((n, 1))])
    Y = rng.normal(size=(n, m)) + M[:, :12] @ rng.normal(size=(12, m))
    w = (rng.random((n, m)) > 0.2).astype(float)
    Mw = M[None] * w.T[:, :, None]
    A = np.zeros((m, M.shape[1] + 1, M.shape[1] + 1))
    A[:, :-1, :-1] = Mw.transpose(0, 2, 1) @ M
    A[:, :-1, -1] = A[:, -1, :-1] = np.einsum("mni,nm->mi", Mw, Y)
    A[:, -1, -1] = (w * Y**2).sum(axis=0)
    cross = cross_from_dense(A, sizes[0])
    red = reduce(cross, Layout(sizes, 1))
    dr = red.A.shape[1]
    assert m > 2 * _objective._BLOCK_BYTES // (8 * dr * dr)
    theta, n_obs, p = rng.uniform(0.0, 2.0, size=(m, 3)), w.sum(axis=0), np.ones(m)
    together = criterion(theta, red, n_obs, p, order=2)
    # Count classes (their sums also built a block at a time) give the same criterion.
    classes = int(np.diagonal(A[:, :12, :12], axis1=1, axis2=2).max())
    by_count = criterion(theta, reduce(cross, Layout(sizes, 1, classes)), n_obs, p, order=2)
    for a, b in zip(together, by_count, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    for f in (0, 1, m // 2, m - 1):
        alone = criterion(
            theta[f : f + 1], red.take(np.array([f])), n_obs[f : f + 1], p[f : f + 1], order=2
        )
        for a, b in zip(together, alone, strict=True):
            np.testing.assert_array_equal(a[f : f + 1], b)


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize(
    "layout",
    [
        Layout((8, 4), 2, count_classes=3),  # count classes
        Layout((8, 4), 2, dense_rows=True),  # term 1's rows dense
        Layout((8, 4), 2),  # ... or at the places the data reach
    ],
)
def test_criterion_with_the_remaining_terms_at_zero(crossed, reml, layout):
    """θ of the remaining terms all 0 factors the fixed-effects block alone: the same criterion
    as the full system (evaluated beside a feature that needs it) and, with every θ at 0, the
    least-squares fit's criterion computed by hand."""
    design, Y = crossed
    A, n = _crossed_cross_products(Y, design)
    red = reduce(cross_from_dense(A, 8), layout)
    p = np.full(4, 2.0)
    theta = np.array([[0.0, 0.0], [0.8, 0.0], [1.7, 0.0], [0.0, 0.0]])
    alone, _, _ = criterion(theta, red, n, p, reml=reml)
    beside = np.vstack([theta, [0.5, 0.5]])
    full, _, _ = criterion(
        beside, red.take(np.arange(5) % 4), np.r_[n, n[0]], np.r_[p, 2.0], reml=reml
    )
    np.testing.assert_allclose(alone, full[:4], rtol=1e-12)

    spec = lmm.build_spec(design, FORMULA)
    for f in (0, 3):
        seen = np.isfinite(Y[:, f])
        X, y = spec.X[seen], Y[seen, f]
        rss = np.sum((y - X @ np.linalg.lstsq(X, y, rcond=None)[0]) ** 2)
        if reml:
            nu = seen.sum() - 2
            hand = np.linalg.slogdet(X.T @ X)[1] + nu * (1 + np.log(2 * np.pi * rss / nu))
        else:
            hand = seen.sum() * (1 + np.log(2 * np.pi * rss / seen.sum()))
        np.testing.assert_allclose(alone[f], hand, rtol=1e-10)


def test_count_classes_give_the_per_level_criterion(crossed):
    A, n = _crossed_cross_products(crossed[1], crossed[0])
    theta = np.array([[0.7, 1.3], [0.0, 0.4], [2.0, 0.0], [0.3, 0.3]])
    p = np.full(4, 2.0)
    cross = cross_from_dense(A, 8)
    per_level = criterion(theta, reduce(cross, Layout((8, 4), 2)), n, p, order=2)
    by_count = criterion(theta, reduce(cross, Layout((8, 4), 2, count_classes=3)), n, p, order=2)
    for a, b in zip(per_level, by_count, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_unobserved_padding_levels_do_not_change_the_fit(crossed):
    design, Y = crossed
    extra = pd.DataFrame({"batch": ["B9"] * 3, "donor": ["D99"] * 3, "condition": "control"})
    padded = pd.concat([design, extra], ignore_index=True)
    Yp = np.vstack([Y, np.full((3, Y.shape[1]), np.nan)])
    ref = lmm.fit(Y, design, FORMULA)
    res = lmm.fit(Yp, padded, FORMULA)
    np.testing.assert_allclose(res.criterion, ref.criterion, rtol=1e-9)
    np.testing.assert_allclose(res.variance, ref.variance, rtol=1e-6, atol=1e-9)


def test_buckets_merge_small_groups_and_keep_large_ones_apart():
    sizes = np.arange(2, 16)
    assert _buckets(sizes, np.full(14, 2)) == [15]  # overhead dominates: one padded call
    assert _buckets(sizes, np.full(14, 10**6)) == sizes.tolist()  # padding dominates
    assert _buckets(np.array([3]), np.array([5])) == [3]


def test_one_term_shortcut_matches_general_path_and_is_chunk_invariant():
    design = crossed_design(n_batch=5, n_donor=10, reps=3, seed=4)
    Y = simulate(design, n_features=200, seed=5)
    Y[:, :3] *= 0.0  # constant features take the flag path, not the shortcut
    Y[:, 5] = 7.0 + 0.01 * np.arange(len(design))  # no batch signal: boundary fit
    formula = "~ condition + (1|batch)"
    for reml in (True, False):
        fast = lmm.fit(Y, design, formula, reml=reml)
        # An extra, never-observed row forces every feature through the general optimizer.
        padded = pd.concat([design, design.iloc[:1]], ignore_index=True)
        general = lmm.fit(
            np.vstack([Y, np.full((1, Y.shape[1]), np.nan)]), padded, formula, reml=reml
        )
        np.testing.assert_allclose(fast.criterion, general.criterion, rtol=1e-10, atol=1e-8)
        np.testing.assert_allclose(fast.theta, general.theta, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fast.beta, general.beta, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(fast.blup["batch"], general.blup["batch"], rtol=1e-5, atol=1e-7)
        assert fast.converged.iloc[3:].all()
        assert fast.theta["batch"].iloc[5] == 0.0
    for chunk in (1, 17):
        other = lmm.fit(Y, design, formula, chunk_size=chunk)
        ref = lmm.fit(Y, design, formula)
        pd.testing.assert_series_equal(other.criterion, ref.criterion, check_exact=True)
        pd.testing.assert_frame_equal(other.blup["batch"], ref.blup["batch"], check_exact=True)


def test_infinite_values_can_be_treated_as_missing():
    design = crossed_design()
    Y = simulate(design, n_features=3)
    Y_inf = Y.copy()
    Y_inf[[1, 4], 2] = [np.inf, -np.inf]
    with pytest.warns(UserWarning, match=r"2 infinite value\(s\) in 1 feature"):
        res = lmm.fit(Y_inf, design, FORMULA, nonfinite="missing")
    Y[[1, 4], 2] = np.nan
    ref = lmm.fit(Y, design, FORMULA)
    pd.testing.assert_series_equal(res.criterion, ref.criterion)
    assert res.n_obs.iloc[2] == len(design) - 2


def test_aliased_fixed_columns_dropped_on_request():
    design = crossed_design().assign(cond2=lambda d: d["condition"])
    Y = simulate(design, n_features=3)
    with pytest.warns(UserWarning, match=r"\['cond2\[T.treated\]'\] are aliased.*dropped"):
        res = lmm.fit(Y, design, "~ condition + cond2 + (1|batch)", drop_aliased=True)
    ref = lmm.fit(Y, design, "~ condition + (1|batch)")
    assert list(res.beta.columns) == list(ref.beta.columns)
    pd.testing.assert_series_equal(res.criterion, ref.criterion)


def test_single_sample_batch_and_numeric_grouping():
    design = crossed_design()
    design.loc[0, "batch"] = "lonely"  # a batch with one sample
    Y = simulate(design, n_features=5)
    res = lmm.fit(Y, design, FORMULA)
    assert res.converged.all()
    assert np.isfinite(res.blup["batch"]["lonely"]).all()
    design["plate"] = np.repeat([1.0, 2.0, 3.0], len(design) // 3 + 1)[: len(design)]
    with pytest.warns(UserWarning, match="numeric column 'plate' is used as a grouping factor"):
        res = lmm.fit(Y, design, "~ condition + (1|plate)")
    assert list(res.blup["plate"].columns) == ["1.0", "2.0", "3.0"]


def test_grouped_fit_rejects_repeated_cells_and_unknown_units():
    long = pd.DataFrame(
        {
            "feature": ["P1"] * 4,
            "sample": ["s1", "s2", "s1", "s1"],
            "peptide": ["a", "a", "b", "b"],
            "y": [1.0, 2.0, 3.0, 4.0],
        }
    )
    design = pd.DataFrame({"batch": ["x", "y"]}, index=["s1", "s2"])
    with pytest.raises(ValueError, match=r"duplicated \(feature, sample, peptide\)"):
        lmm.fit_grouped(long, design, "~ 1 + (1|peptide)")
    with pytest.raises(ValueError, match="missing from the design"):
        lmm.fit_grouped(long.assign(sample="s9"), design, "~ 1 + (1|peptide)")


def test_sparse_cross_products_equal_dense_ones():
    """Intercepts, slopes (non-0/1 values) and weights: the pieces are [Z X y]'W[Z X y]."""
    from scipy import sparse

    from omixed.lmm._crossprod import CrossProducts

    rng = np.random.default_rng(3)
    n, m = 40, 9
    g, h = rng.integers(0, 5, n), rng.integers(0, 4, n)
    x = rng.normal(size=n)
    first = np.column_stack([np.ones(n), x])  # (1 + x|g): two components on g
    H = np.eye(4)[h] * rng.normal(size=(n, 1))  # a slope on h in the rest
    X = np.column_stack([np.ones(n), rng.normal(size=n), np.zeros(n)])  # a zero column too
    structure = CrossProducts.from_terms(g, first, 5, sparse.csr_matrix(np.hstack([H, X])))
    Y = rng.normal(size=(m, n))
    W = rng.uniform(0.5, 2.0, size=(m, n)) * (rng.random((m, n)) > 0.3)
    cross = structure(Y, W)
    Z = np.hstack([np.eye(5)[g] * first[:, :1], np.eye(5)[g] * first[:, 1:]])
    M = np.hstack([Z, H, X])
    for f in range(m):
        My = np.column_stack([M, Y[f]])
        A = (My * W[f, :, None]).T @ My
        blocks = A[:10, :10].reshape(2, 5, 2, 5).transpose(1, 3, 0, 2)  # (level, level', a, c)
        np.testing.assert_allclose(cross.first[f], blocks[np.arange(5), np.arange(5)], rtol=1e-12)
        rows = np.zeros((10, 8))
        rows[structure.row_level, structure.row_col] = cross.rows[f]
        want = A[:10, 10:].reshape(2, 5, 8).transpose(1, 0, 2).reshape(10, 8)  # (l, a) rows
        np.testing.assert_allclose(rows, want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(cross.rest[f], A[10:, 10:], rtol=1e-12, atol=1e-12)
    # Places are only where some row reaches: a zero column has none.
    assert not np.any(structure.row_col == 6)
    part = structure(Y[:4], W[:4])
    np.testing.assert_array_equal(part.rest, cross.rest[:4])
    np.testing.assert_array_equal(part.rows, cross.rows[:4])


@pytest.mark.parametrize("reml", [True, False])
def test_scalar_terms_on_one_factor_fit_as_in_the_closed_form_path(reml):
    # (Days||Subject) = (1|Subject) + (0 + Days|Subject) is eliminated level by level (see
    # _dense); with the slope on a relabeled copy of Subject (the same partition, other codes)
    # the same model goes through _objective's closed-form elimination of one term.  Missing
    # values, weights, and a feature whose slope is seen at one level (its variance fixed at 0).
    rng = np.random.default_rng(0)
    n_sub, n_t, m = 12, 6, 40
    g = np.repeat(np.arange(n_sub), n_t)
    days = np.tile(np.arange(n_t, dtype=float), n_sub)
    data = pd.DataFrame(
        {
            "Subject": [f"S{i:02d}" for i in g],
            "Copy": [f"C{n_sub - i:02d}" for i in g],  # levels in reverse order
            "Days": days,
        }
    )
    Y = (
        rng.normal(size=(n_sub, m))[g]
        + 0.3 * rng.normal(size=(n_sub, m))[g] * days[:, None]
        + rng.normal(size=(n_sub * n_t, m))
    )
    Y[rng.random(Y.shape) < 0.15] = np.nan
    Y[(g > 0) & (days > 0), 0] = np.nan
    W = rng.uniform(0.5, 2.0, size=Y.shape)
    closed_form = "~ Days + (1|Subject) + (0 + Days|Copy)"
    assert plan_design(lmm.build_spec(data, closed_form)).dense is None
    res = lmm.fit(Y, data, "~ Days + (Days||Subject)", weights=W, reml=reml)
    ref = lmm.fit(Y, data, closed_form, weights=W, reml=reml)
    assert res.converged.all() and ref.converged.all()
    assert res.notes.iloc[0] == "Subject.Days has < 2 observed levels: variance fixed at 0"
    assert list(res.theta.columns) == ["Subject", "Subject.Days"]
    assert list(res.variance.columns) == ["Subject", "Subject.Days", "Residual"]
    np.testing.assert_allclose(res.criterion, ref.criterion, rtol=1e-12)
    # The two paths sum the cross-products in different orders, so the optimizer can stop at
    # points a rounding apart where the criterion is flat (a slope variance near 0).
    for name in ("theta", "variance", "beta", "se"):
        np.testing.assert_allclose(getattr(res, name), getattr(ref, name), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(res.blup["Subject"], ref.blup["Subject"], rtol=1e-6, atol=1e-6)
    slope = ref.blup["Copy.Days"].to_numpy()[:, ::-1]
    np.testing.assert_allclose(res.blup["Subject.Days"], slope, rtol=1e-6, atol=1e-6)


def _starts_of(Y: np.ndarray, data: pd.DataFrame, formula: str, henderson: bool) -> pd.DataFrame:
    """Moment starts in formula order: Henderson's method III, or the one-way estimates."""
    from omixed.lmm._fit import prepare
    from omixed.lmm._starts import moment_starts

    design = plan_design(lmm.build_spec(data, formula))
    prep = prepare(np.ascontiguousarray(Y.T), design)
    red = reduce(prep.cross, design.layout) if henderson else None
    start = moment_starts(prep.cross, design.layout, prep.n_obs, red)
    return pd.DataFrame(start, columns=list(design.term_names))


@pytest.mark.parametrize("henderson", [True, False])
def test_moment_starts_are_the_reml_estimate_of_a_balanced_one_way_design(henderson):
    """Balanced one-way data: the ANOVA estimator is REML's optimum when it is positive."""
    rng = np.random.default_rng(5)
    data = pd.DataFrame({"g": np.repeat([f"g{i}" for i in range(8)], 5)})
    Y = rng.normal(size=(8, 30)).repeat(5, axis=0) + rng.normal(size=(40, 30))
    res = lmm.fit(Y, data, "~ 1 + (1|g)")
    start = _starts_of(Y, data, "~ 1 + (1|g)", henderson)["g"].to_numpy()
    positive = res.theta["g"].to_numpy() > 0
    assert positive.sum() >= 20
    np.testing.assert_allclose(start[positive], res.theta["g"].to_numpy()[positive], rtol=1e-6)
    assert np.all(start[~positive] == 0.0)


def test_henderson_starts_are_the_anova_estimates_of_a_balanced_crossed_design():
    """One value per donor × batch cell: the two-way ANOVA estimators, computed by hand here,
    are Henderson's method III, and REML's optimum where both are positive."""
    rng = np.random.default_rng(11)
    n_donor, n_batch, m = 9, 6, 40
    donor, batch = np.divmod(np.arange(n_donor * n_batch), n_batch)
    data = pd.DataFrame({"donor": [f"d{i}" for i in donor], "batch": [f"b{j}" for j in batch]})
    Y = (
        rng.normal(size=(n_donor, m))[donor] * rng.uniform(0.2, 1.5, m)
        + rng.normal(size=(n_batch, m))[batch] * rng.uniform(0.2, 1.5, m)
        + rng.normal(size=(donor.size, m))
    )
    cube = Y.reshape(n_donor, n_batch, m)
    grand = cube.mean(axis=(0, 1))
    donor_means, batch_means = cube.mean(axis=1), cube.mean(axis=0)
    ms_donor = n_batch * ((donor_means - grand) ** 2).sum(axis=0) / (n_donor - 1)
    ms_batch = n_donor * ((batch_means - grand) ** 2).sum(axis=0) / (n_batch - 1)
    resid = cube - donor_means[:, None] - batch_means[None] + grand
    ms_error = (resid**2).sum(axis=(0, 1)) / ((n_donor - 1) * (n_batch - 1))
    anova = pd.DataFrame(
        {
            "donor": np.sqrt(np.maximum(ms_donor - ms_error, 0) / n_batch / ms_error),
            "batch": np.sqrt(np.maximum(ms_batch - ms_error, 0) / n_donor / ms_error),
        }
    )
    formula = "~ 1 + (1|donor) + (1|batch)"
    start = _starts_of(Y, data, formula, henderson=True)[["donor", "batch"]]
    np.testing.assert_allclose(start, anova, rtol=1e-7, atol=1e-12)
    fit = lmm.fit(Y, data, formula).theta[["donor", "batch"]]
    positive = (anova > 0).all(axis=1).to_numpy()
    assert positive.sum() >= 30
    np.testing.assert_allclose(fit[positive], anova[positive], rtol=1e-5)


def test_henderson_starts_equal_method_iii_from_explicit_projections():
    """Unbalanced crossed design with missing values: each term's reduction R(g | others) and
    tr(Z_g'MZ_g), computed here from dense projections of the observed rows (independent of
    the cross-products), give the starts; the one-way estimates do not."""
    rng = np.random.default_rng(12)
    n, n_donor, n_batch, m = 120, 30, 8, 25
    data = pd.DataFrame(
        {
            "donor": [f"d{i:02d}" for i in np.repeat(np.arange(n_donor), 4)],
            "batch": [f"b{j}" for j in rng.permutation(np.arange(n) % n_batch)],
            "condition": np.tile(["a", "b"], n // 2),
        }
    )
    Z = {g: pd.get_dummies(data[g]).to_numpy(float) for g in ("donor", "batch")}
    X = np.c_[np.ones(n), data["condition"] == "b"].astype(float)
    Y = (
        Z["donor"] @ rng.normal(size=(n_donor, m)) * 0.8
        + Z["batch"] @ rng.normal(size=(n_batch, m)) * 1.2
        + rng.normal(size=(n, m))
    )
    Y[rng.random(Y.shape) < 0.15] = np.nan

    def projection(M):
        u, sv, _ = np.linalg.svd(M, full_matrices=False)
        u = u[:, sv > 1e-9 * sv[0]]
        return u @ u.T, u.shape[1]

    expected = np.empty((m, 2))
    for f in range(m):
        obs = np.isfinite(Y[:, f])
        y = Y[obs, f]
        Zd, Zb = Z["donor"][obs], Z["batch"][obs]
        P_all, rank_all = projection(np.c_[X[obs], Zd, Zb])
        rss_all = y @ y - y @ P_all @ y
        sigma2 = rss_all / (obs.sum() - rank_all)
        for j, (Zg, Zo) in enumerate(((Zd, Zb), (Zb, Zd))):
            P_o, rank_o = projection(np.c_[X[obs], Zo])
            reduction = y @ P_all @ y - y @ P_o @ y
            trace = np.trace(Zg.T @ Zg) - np.trace(Zg.T @ P_o @ Zg)
            between = max(reduction - sigma2 * (rank_all - rank_o), 0.0) / trace
            expected[f, j] = np.sqrt(between / sigma2)
    formula = "~ condition + (1|donor) + (1|batch)"
    start = _starts_of(Y, data, formula, henderson=True)[["donor", "batch"]].to_numpy()
    np.testing.assert_allclose(start, expected, rtol=1e-6, atol=1e-9)
    one_way = _starts_of(Y, data, formula, henderson=False)[["donor", "batch"]].to_numpy()
    assert np.abs(one_way - expected).max() > 0.05


def test_a_term_nested_in_a_finer_one_keeps_its_one_way_start():
    """Samples within batches: the batch columns lie in the span of the sample columns, so
    method III has no sum of squares for batch (R(batch | sample) = 0 on 0 df); batch keeps the
    one-way start (its variation between batches, net of the samples'), never a start of 0."""
    rng = np.random.default_rng(13)
    n_batch, per_batch, reps, m = 6, 4, 3, 30
    sample = np.repeat(np.arange(n_batch * per_batch), reps)
    batch = sample // per_batch
    data = pd.DataFrame({"batch": [f"b{b}" for b in batch], "sample": [f"s{i}" for i in sample]})
    Y = (
        rng.normal(size=(n_batch, m))[batch] * 2.0
        + rng.normal(size=(n_batch * per_batch, m))[sample]
        + rng.normal(size=(sample.size, m))
    )
    formula = "~ 1 + (1|batch) + (1|sample)"
    both = _starts_of(Y, data, formula, henderson=True)
    one_way = _starts_of(Y, data, formula, henderson=False)
    np.testing.assert_allclose(both["batch"], one_way["batch"], rtol=1e-10)
    assert (both["batch"] > 0).sum() >= 25


def test_minimize_reaches_known_optima_and_reports_the_criterion_there():
    """Separable quartics Σ_j (θ_j² − a_j)² + b_j θ_j²: θ_j* = √(a_j − b_j/2), or 0 at the bound.

    The last Newton step is taken without a second-order evaluation; the criterion returned
    must still be the objective at the returned θ.
    """
    from omixed.lmm._optimize import minimize

    rng = np.random.default_rng(4)
    a = rng.uniform(0.1, 4.0, size=(200, 3))
    b = rng.uniform(-1.0, 1.0, size=(200, 3))
    b[::7, 1] = 2.5 * a[::7, 1]  # optimum at the bound θ = 0

    orders = []

    def objective(theta, rows, order):
        orders.append(order)
        t2, ar, br = theta**2, a[rows], b[rows]
        f = ((t2 - ar) ** 2 + br * t2).sum(axis=1)
        g = 4.0 * theta * (t2 - ar) + 2.0 * br * theta
        h = np.zeros((*theta.shape, theta.shape[1]))
        idx = np.arange(theta.shape[1])
        h[:, idx, idx] = 12.0 * t2 - 4.0 * ar + 2.0 * br
        return f, (g if order >= 1 else None), (h if order >= 2 else None)

    starts = rng.uniform(0.2, 3.0, size=(1, 200, 3))
    opt = minimize(objective, starts, np.zeros((200, 3), dtype=bool))
    assert opt.converged.all()
    expected = np.sqrt(np.maximum(a - b / 2.0, 0.0))
    # The optimizer stops at a projected gradient of 1e-6; the curvature here is O(1).
    np.testing.assert_allclose(opt.theta, expected, rtol=0, atol=1e-6)
    f_there, _, _ = objective(opt.theta, np.arange(200), 0)
    np.testing.assert_array_equal(opt.fmin, f_there)

    # From 3e-6 away, one Newton step lands within its square: taken as the last step, with
    # only the criterion evaluated there.
    orders.clear()
    near = minimize(objective, (expected * (1.0 + 3e-6) + 3e-6)[None], np.zeros((200, 3), bool))
    assert near.converged.all() and (near.n_iter == 1).all()
    assert orders == [2, 0]  # the start's derivatives, then the criterion at the end
    np.testing.assert_allclose(near.theta, expected, rtol=0, atol=1e-9)
    f_there, _, _ = objective(near.theta, np.arange(200), 0)
    np.testing.assert_array_equal(near.fmin, f_there)


def test_grouped_fixed_effects_are_evaluated_on_the_units():
    """Stateful transforms see each unit once, whatever a bucket's size: the same for all."""
    rng = np.random.default_rng(2)
    design = pd.DataFrame(
        {"x": rng.normal(size=8), "batch": list("aabbccdd")}, index=[f"s{i}" for i in range(8)]
    )
    rows = [
        (f"P{p}", s, f"P{p}_{j}", rng.normal())
        for p, k in enumerate([2, 2, 5, 5])
        for s in design.index
        for j in range(k)
    ]
    long = pd.DataFrame(rows, columns=["feature", "sample", "peptide", "y"])
    formula = "~ poly(x, 2) + (1|batch) + (1|peptide)"
    res, _ = lmm.fit_grouped(long, design, formula)
    robust, _ = lmm.fit_grouped(long, design, formula, robust=True)
    # poly() on the units: orthonormal columns over the 8 units, identical in both buckets, so
    # each protein's fit equals a plain fit on its own rows with that matrix.
    X = lmm.build_spec(design, "~ poly(x, 2)").X
    for name in ("P0", "P2"):
        rows_f = long[long["feature"] == name]
        own = pd.DataFrame(X[design.index.get_indexer(rows_f["sample"])], columns=["i", "p1", "p2"])
        own["batch"] = design.loc[rows_f["sample"], "batch"].to_numpy()
        own["peptide"] = rows_f["peptide"].to_numpy()
        own_formula = "~ p1 + p2 + (1|batch) + (1|peptide)"
        ref = lmm.fit(rows_f[["y"]].to_numpy(), own, own_formula)
        np.testing.assert_allclose(res.beta.loc[name], ref.beta.iloc[0], rtol=1e-6)
        # Reweighting stops when no Huber weight moves by more than 1e-4 in the whole bucket.
        ref, _ = lmm.fit_robust(rows_f[["y"]].to_numpy(), own, own_formula)
        np.testing.assert_allclose(robust.beta.loc[name], ref.beta.iloc[0], rtol=1e-3)
    with pytest.raises(ValueError, match=r"\['peptide'\] of the fixed effects not found"):
        lmm.fit_grouped(long, design, "~ peptide + (1|batch)")


def test_solutions_per_matrix_equal_those_from_the_inverse():
    """Large reduced systems solve one matrix at a time without forming the inverse: the same
    x, SE(β̂) and σ̂² as from the inverse, and a system that fails to factor goes to LU."""
    from omixed.lmm._objective import solve_leading, solve_reduced

    rng = np.random.default_rng(1)
    m, n, qr, p = 6, 61, 55, 5
    X = rng.normal(size=(m, n + 10, n))
    Om = X.transpose(0, 2, 1) @ X / n
    Om[3, :qr, :qr] = -3.0 * np.eye(qr)  # indefinite after its + I: not factorable
    Om[3, :qr, qr:] = Om[3, qr:, :qr] = 0.0
    n_obs, p_eff = np.full(m, 100.0), np.full(m, float(p))
    sol, se, sigma2 = solve_reduced(Om.copy(), qr, n_obs, p_eff, True)
    inv, x, r2 = solve_leading(Om.copy(), qr)
    np.testing.assert_allclose(sol, x, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sigma2, r2 / (n_obs - p_eff), rtol=1e-10)
    var = sigma2[:, None] * np.diagonal(inv, axis1=1, axis2=2)[:, qr:]
    np.testing.assert_allclose(se**2, var, rtol=1e-10)


@pytest.mark.parametrize("n", [6, 60])  # numpy's stacked routine, and LAPACK per matrix
def test_batched_cholesky_factors_each_matrix_and_flags_the_indefinite(n):
    from omixed.lmm._objective import _batched_cholesky

    rng = np.random.default_rng(n)
    X = rng.normal(size=(5, n, n))
    A = X @ X.transpose(0, 2, 1) + n * np.eye(n)
    A[2, -1, -1] = -1.0  # not positive definite
    L, ok = _batched_cholesky(A)
    assert ok.tolist() == [True, True, False, True, True]
    assert np.isnan(L[2]).all()
    good = [0, 1, 3, 4]
    np.testing.assert_allclose(L[good] @ L[good].transpose(0, 2, 1), A[good], rtol=1e-12)
    assert (np.triu(L[good], 1) == 0).all()


@pytest.mark.parametrize("n", [1, 5, 6, 7, 12, 21])
def test_triangular_inverse_inverts_each_matrix_whatever_the_stack(n):
    from omixed.lmm._objective import triangular_inverse

    rng = np.random.default_rng(n)
    X = rng.normal(size=(9, n, n))
    L = np.linalg.cholesky(X @ X.transpose(0, 2, 1) + n * np.eye(n))
    inverse = triangular_inverse(L)
    np.testing.assert_allclose(inverse @ L, np.broadcast_to(np.eye(n), L.shape), atol=1e-13)
    assert (np.triu(inverse, 1) == 0).all()
    np.testing.assert_array_equal(triangular_inverse(L[3:4]), inverse[3:4])


def test_grouped_fit_does_not_depend_on_jobs():
    """The buckets' chunks share one worker pool; results are the same bit for bit.

    300 proteins of 2-15 peptides: two buckets of more than 64 proteins, each split in two.
    """
    rng = np.random.default_rng(8)
    design = pd.DataFrame(
        {"batch": np.repeat(list("abc"), 4), "cond": np.tile(["x", "y"], 6)},
        index=[f"s{i:02d}" for i in range(12)],
    )
    rows = [
        (f"P{p:02d}", s, f"pep{j}", rng.normal() + 0.3 * j)
        for p in range(300)
        for j in range(2 + p % 14)
        for s in design.index
        if rng.random() > 0.15
    ]
    long = pd.DataFrame(rows, columns=["feature", "sample", "peptide", "y"])
    formula = "~ cond + (1|batch) + (1|sample) + (1|peptide)"
    one, _ = lmm.fit_grouped(long, design, formula)
    two, _ = lmm.fit_grouped(long, design, formula, n_jobs=2)
    pd.testing.assert_series_equal(two.criterion, one.criterion, check_exact=True)
    for attr in ("theta", "beta", "se", "variance"):
        pd.testing.assert_frame_equal(getattr(two, attr), getattr(one, attr), check_exact=True)
    for term, blup in one.blup.items():
        pd.testing.assert_frame_equal(two.blup[term], blup, check_exact=True)


def test_designs_are_built_from_codes_never_a_dense_indicator():
    """20 000 levels over 40 000 rows: a dense indicator would take 6.4 GB."""
    import tracemalloc

    from omixed.lmm._fit import plan_fit

    rng = np.random.default_rng(0)
    n = 40_000
    data = pd.DataFrame({"g": rng.integers(0, 20_000, n), "h": rng.integers(0, 50, n)})
    data = data.astype(str).assign(x=rng.normal(size=n))
    Y = rng.normal(size=(n, 2))
    tracemalloc.start()
    plan = plan_fit(Y, data, "~ x + (1|g) + (1|h)")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert plan.design.layout.sizes[0] > 15_000 and plan.design.rest_dim == 53
    assert peak < 200 * 2**20


def test_a_model_too_large_for_memory_is_refused_before_fitting(monkeypatch):
    """Two crossed factors leave a dense block of the second's levels: refused with its size."""
    from omixed.lmm import _fit

    rng = np.random.default_rng(0)
    n = 2000
    data = pd.DataFrame({"g": rng.integers(0, 600, n), "h": rng.integers(0, 500, n)}).astype(str)
    monkeypatch.setattr(_fit, "_available_memory", lambda: 2**20)  # 1 MiB available
    called = []
    monkeypatch.setattr(_fit, "_fit_chunk", lambda *a, **k: called.append(1))
    with pytest.raises(MemoryError, match=r"GiB per feature.*'h'.*dense block of \d+ columns"):
        lmm.fit(rng.normal(size=(n, 3)), data, "~ 1 + (1|g) + (1|h)")
    assert not called
    # One large factor alone is eliminated in closed form: nothing dense to refuse.
    monkeypatch.setattr(_fit, "_available_memory", lambda: 64 * 2**20)
    plan = _fit.plan_fit(rng.normal(size=(n, 3)), data, "~ 1 + (1|g)")
    assert plan.design.rest_dim == 2


def test_chunks_follow_the_memory_budget(monkeypatch, crossed):
    from omixed.lmm import _fit

    design, Y = crossed
    plan = _fit.plan_fit(Y, design, FORMULA)
    per_feature = plan.design.bytes_per_feature(len(design))
    monkeypatch.setattr(_fit, "_DEFAULT_CHUNK_BYTES", 3 * per_feature)  # 3 features a chunk
    assert _fit.plan_fit(Y, design, FORMULA).n_tasks == -(-Y.shape[1] // 3)


def test_blas_threads_times_workers_stay_within_the_cores(monkeypatch, crossed):
    from threadpoolctl import threadpool_info

    from omixed.lmm import _fit

    design, Y = crossed
    seen = []
    original = _fit._fit_features

    def record(*args):
        seen.extend(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
        return original(*args)

    monkeypatch.setattr(_fit, "_fit_features", record)
    lmm.fit(Y, design, FORMULA)
    assert seen and max(seen) == 1  # small per-feature matrices: one thread
    plan = _fit.plan_fit(Y, design, FORMULA)
    monkeypatch.setattr(_fit, "_THREADED_DIM", 1)  # as for a large single fit
    assert _fit._blas_threads(plan.design, 1, 1) == 1  # n_jobs are the cores given
    assert _fit._blas_threads(plan.design, 8, 1) == 8
    assert _fit._blas_threads(plan.design, 8, 3) == 2
    assert _fit._blas_threads(plan.design, 8, 40) == 1
