"""The fitted model is one stored object: every later step reads it by name, never by position.

Each test reproduces a case where an earlier version silently reinterpreted a fit (issue 17).
"""

from __future__ import annotations

import logging
import pickle
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import crossed_design, simulate

import omixed
from omixed import cli, lmm

FORMULA = "~ condition + (1|batch) + (1|donor)"


@pytest.fixture(scope="module")
def example() -> ad.AnnData:
    adata = omixed.datasets.example()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        omixed.tl.fit(adata, FORMULA, progress=False)
    return adata


def test_reordered_categories_do_not_flip_a_contrast(example):
    adata = example.copy()
    before = omixed.tl.test(adata, contrast="condition[T.treated]").sort_index()
    adata.obs["condition"] = adata.obs["condition"].cat.reorder_categories(["treated", "control"])
    after = omixed.tl.test(adata, contrast="condition[T.treated]").sort_index()
    pd.testing.assert_frame_equal(before, after)
    assert (before["estimate"].dropna().abs() > 0).all()


def test_a_subset_missing_a_factor_level_removes_the_right_coefficient():
    rng = np.random.default_rng(0)
    obs = pd.DataFrame(
        {
            "group": np.repeat(["A", "B", "C"], 12),
            "age": rng.uniform(20, 80, 36),
            "batch": np.tile(["b1", "b2", "b3", "b4"], 9),
        },
        index=[f"s{i}" for i in range(36)],
    )
    Y = rng.normal(size=(36, 5)) + 0.1 * obs["age"].to_numpy()[:, None]
    adata = ad.AnnData(Y, obs=obs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        omixed.tl.fit(adata, "~ group + age + (1|batch)", progress=False)
    subset = adata[adata.obs["group"] != "C"].copy()
    omixed.tl.correct(subset, remove=["age"])
    beta_age = subset.varm["lmm_beta"]["age"].to_numpy()
    expected = subset.X - subset.obs["age"].to_numpy()[:, None] * beta_age
    np.testing.assert_allclose(subset.layers["corrected"], expected, rtol=1e-12)


def test_a_refit_replaces_everything_derived_from_the_old_fit(example):
    adata = example.copy()
    omixed.tl.correct(adata, remove=["batch"], method="blup")
    omixed.tl.variance_partition(adata)
    omixed.tl.test(adata, contrast="condition[T.treated]")
    assert {"lmm_varpart", "lmm_blup_donor", "lmm_test_condition_T_treated"} <= set(adata.varm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        omixed.tl.fit(adata, "~ condition + (1|batch)", progress=False)
    assert "corrected" not in adata.layers
    assert "lmm_correct" not in adata.uns
    assert not {"lmm_varpart", "lmm_blup_donor", "lmm_test_condition_T_treated"} & set(adata.varm)
    assert list(omixed.tl.variance_partition(adata).columns) == ["batch", "condition", "Residual"]


def test_each_term_is_removed_once(example, tmp_path):
    with pytest.raises(ValueError, match=r"remove lists \['batch'\] more than once"):
        omixed.tl.correct(example.copy(), remove=["batch", "batch"])
    path = tmp_path / "fitted.h5ad"
    example.write_h5ad(path)
    out = tmp_path / "out.h5ad"
    assert cli.main(["correct", str(path), "--remove", "batch", "batch", "-o", str(out)]) == 1
    assert not out.exists()


@pytest.mark.parametrize("method", ["eb", "full", "blup"])
def test_corrections_do_not_depend_on_the_sample_order(method):
    data = omixed.datasets.example()
    order = np.random.default_rng(1).permutation(data.n_obs)
    results = []
    for adata in (data.copy(), data[order].copy()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            omixed.tl.fit(adata, FORMULA, progress=False)
        omixed.tl.correct(adata, remove=["batch"], method=method)
        results.append(adata.to_df("corrected").loc[data.obs_names])
    # The fits agree to the optimizer's tolerance, nothing more: before, the refit of "full"
    # and "eb" landed on different points of a flat criterion (up to 0.047 apart).
    np.testing.assert_allclose(results[0], results[1], atol=1e-7)


def test_features_that_were_not_fit_are_left_unchanged_and_have_no_estimates():
    # the example data fit every feature: the first keeps 2 observations, too few to fit
    adata = omixed.datasets.example()[:, :200].copy()
    adata.X[2:, 0] = np.nan
    with pytest.warns(UserWarning, match="1 of 200 features were not fit"):
        omixed.tl.fit(adata, FORMULA, progress=False)
    failed = ~adata.var["lmm_converged"].to_numpy(dtype=bool)
    assert failed.sum() == 1
    for name in ("lmm_beta", "lmm_se", "lmm_variance", "lmm_theta", "lmm_blup_batch"):
        assert adata.varm[name].loc[failed].isna().all(axis=None), name
    assert (adata.var.loc[failed, "lmm_reason"] != "").all()
    for method in ("eb", "full", "blup"):
        omixed.tl.correct(adata, remove=["batch"], method=method)
        np.testing.assert_array_equal(adata.layers["corrected"][:, failed], adata.X[:, failed])


def test_correlated_slopes_never_store_negative_variances():
    rng = np.random.default_rng(5)
    data = pd.DataFrame({"g": np.repeat(list("abcdef"), 4), "x": np.tile([0.0, 1, 2, 3], 6)})
    Y = rng.normal(size=(24, 200)) + rng.normal(size=(6, 200)).repeat(4, axis=0)
    Y[rng.random(Y.shape) < 0.5] = np.nan
    res = lmm.fit(Y, data, "~ x + (x|g)")
    variances = res.variance[["g", "g.x", "Residual"]].to_numpy()
    assert np.all(np.isnan(variances) | (variances >= 0))
    assert np.isnan(variances[~res.converged.to_numpy()]).all()


def test_feature_plot_works_after_dropping_aliased_columns():
    design = crossed_design().assign(cond2=lambda d: d["condition"])
    adata = ad.AnnData(
        simulate(design, n_features=3), obs=design.set_axis(design.index.astype(str))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        omixed.tl.fit(adata, "~ condition + cond2 + (1|batch)", drop_aliased=True, progress=False)
    assert omixed.get.model(adata).spec.fixed_names == ("Intercept", "condition[T.treated]")
    omixed.tl.correct(adata, remove=["batch"], method="blup")
    fig = omixed.pl.feature(adata, adata.var_names[0], groupby="batch", show=False)
    assert fig is not None


def test_the_command_line_reports_what_tl_fit_warns(tmp_path, caplog):
    design = crossed_design().assign(lot=lambda d: d["condition"])  # lot = condition
    adata = ad.AnnData(
        simulate(design, n_features=8), obs=design.set_axis(design.index.astype(str))
    )
    data = tmp_path / "data.h5ad"
    adata.write_h5ad(data)
    formula = "~ condition + (1|batch) + (1|lot)"
    with pytest.warns(UserWarning, match="'lot' is completely confounded with 'condition'"):
        omixed.tl.fit(adata.copy(), formula, progress=False)
    chunks = [tmp_path / "c1.h5ad", tmp_path / "c2.h5ad"]
    assert cli.main(["split", str(data), "-o", *map(str, chunks)]) == 0
    fits = [c.with_suffix(".fit.h5ad") for c in chunks]
    for chunk, fitted in zip(chunks, fits, strict=True):
        assert cli.main(["fit", str(chunk), "--formula", formula, "-o", str(fitted)]) == 0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="omixed"):
        merged = tmp_path / "merged.h5ad"
        assert cli.main(["merge", "--data", str(data), *map(str, fits), "-o", str(merged)]) == 0
    assert "'lot' is completely confounded with 'condition'" in caplog.text


def test_chunk_files_that_are_not_h5ad_fits_are_refused_without_running_them(tmp_path):
    adata = omixed.datasets.example()
    data = tmp_path / "data.h5ad"
    adata.write_h5ad(data)
    planted = tmp_path / "chunk.fit.h5ad"
    marker = tmp_path / "ran"
    planted.write_bytes(pickle.dumps(_Boom(str(marker))))
    out = tmp_path / "merged.h5ad"
    assert cli.main(["merge", "--data", str(data), str(planted), "-o", str(out)]) == 1
    assert not marker.exists()
    assert not out.exists()


class _Boom:
    """Unpickling this writes a file: proof that a loader ran code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_fit_read_back_from_h5ad_gives_bitwise_the_same_results(example, tmp_path):
    path = tmp_path / "fit.h5ad"
    example.write_h5ad(path)
    again = ad.read_h5ad(path)
    for adata in (example.copy(), again):
        omixed.tl.correct(adata, remove=["batch"])
        omixed.tl.variance_partition(adata)
        omixed.tl.test(adata, contrast="condition[T.treated]", moderate=True)
    first = example.copy()
    omixed.tl.correct(first, remove=["batch"])
    vp = omixed.tl.variance_partition(first)
    top = omixed.tl.test(first, contrast="condition[T.treated]", moderate=True)
    np.testing.assert_array_equal(first.layers["corrected"], again.layers["corrected"])
    pd.testing.assert_frame_equal(vp, again.varm["lmm_varpart"])
    pd.testing.assert_frame_equal(
        top.sort_index(), again.varm["lmm_test_condition_T_treated"].sort_index()
    )
    model, read = omixed.get.model(example), omixed.get.model(again)
    assert model.spec.same_model(read.spec)
    pd.testing.assert_frame_equal(model.beta, read.beta)


def test_an_altered_fit_is_refused(example):
    adata = example.copy()
    adata.varm["lmm_beta"] = adata.varm["lmm_beta"].iloc[:, ::-1]
    with pytest.raises(ValueError, match="no longer matches the fit"):
        omixed.tl.correct(adata, remove=["batch"])


def test_levels_the_fit_never_saw_are_refused_by_correct(example):
    adata = example.copy()
    adata.obs["batch"] = adata.obs["batch"].cat.rename_categories({"B0": "B9"})
    with pytest.raises(ValueError, match=r"'batch' has level\(s\) the model never saw: \['B9'\]"):
        omixed.tl.correct(adata, remove=["batch"])


@pytest.mark.parametrize("key", ["a/b", "with space", ""])
def test_keys_that_cannot_round_trip_are_refused_before_fitting(key):
    adata = omixed.datasets.example()[:, :5].copy()
    with pytest.raises(ValueError, match="cannot be stored"):
        omixed.tl.fit(adata, FORMULA, key_added=key)
    assert not any(k.startswith(key) for k in adata.uns if key)


def test_specification_round_trips_through_json():
    rng = np.random.default_rng(2)
    data = pd.DataFrame(
        {
            "c": pd.Categorical(rng.choice(["u", "v", "w"], 40), categories=["w", "v", "u", "z"]),
            "x": rng.normal(size=40),
            "g": rng.choice(["a", "b", "c", "d"], 40),
            "h": rng.choice([1, 2, 3], 40),
        }
    )
    formula = "~ C(c, contr.sum) + poly(x, 2) + (1 + x|g) + (1|g:h)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        spec = lmm.build_spec(data, formula)
    again = lmm.Specification.from_json(spec.specification.to_json())
    assert again.same_model(spec.specification)
    design = again.evaluate(data.sample(frac=1.0, random_state=3))
    order = data.sample(frac=1.0, random_state=3).index
    np.testing.assert_allclose(design.X, spec.X[order], rtol=1e-12)
    for a, b in zip(design.terms, spec.terms, strict=True):
        np.testing.assert_array_equal(a.codes, b.codes[order])
    assert "z" not in str(spec.fixed_names)  # an unused category makes no column
