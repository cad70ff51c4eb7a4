"""Inputs mean what the user meant, and the ones that cannot are refused by name (issue 18)."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import crossed_design, simulate
from scipy import sparse

import omixed
from omixed import lmm

FORMULA = "~ condition + (1|batch)"
IO = Path(__file__).parent / "data" / "io"


def _adata(design: pd.DataFrame, Y: np.ndarray) -> ad.AnnData:
    return ad.AnnData(Y, obs=design.set_axis(design.index.astype(str)))


def test_interaction_levels_stay_distinct_when_their_text_would_coincide():
    design = pd.DataFrame(
        {"batch": ["a:b", "a:b", "a", "a"] * 3, "plate": ["c", "c", "b:c", "b:c"] * 3}
    )
    Y = simulate(design.assign(donor="d", condition="x"), n_features=3)
    res = lmm.fit(Y, design, "~ 1 + (1|batch:plate)")
    assert res.spec.term("batch:plate").levels == (("a", "b:c"), ("a:b", "c"))
    labels = res.blup["batch:plate"].columns.tolist()
    assert len(set(labels)) == 2  # joined by another separator, as ":" would repeat one


def test_a_column_mixing_numbers_and_text_is_refused():
    design = crossed_design()
    design["batch"] = [1 if b == "B0" else ("1" if b == "B1" else b) for b in design["batch"]]
    with pytest.raises(ValueError, match=r"'batch' mixes value types .*1 and '1'"):
        lmm.fit(simulate(crossed_design(), n_features=2), design, FORMULA)


def test_a_grouping_factor_with_one_observation_per_level_is_fixed_at_zero_with_a_note():
    design = crossed_design().assign(sample=lambda d: [f"s{i}" for i in range(len(d))])
    Y = simulate(design, n_features=4)
    res = lmm.fit(Y, design, "~ condition + (1|batch) + (1|sample)")
    assert (res.theta["sample"] == 0).all()
    assert res.notes.str.contains("sample has one observation per observed level").all()
    without = lmm.fit(Y, design, "~ condition + (1|batch)")
    np.testing.assert_allclose(res.criterion, without.criterion, rtol=1e-10)


@pytest.mark.parametrize("value", ["False", 0, None])
def test_reml_must_be_a_bool(value):
    design = crossed_design()
    with pytest.raises(TypeError, match="reml must be True or False"):
        lmm.fit(simulate(design, n_features=2), design, FORMULA, reml=value)


def test_text_in_pandas_string_dtype_is_a_factor():
    design = crossed_design()
    Y = simulate(design, n_features=3)
    typed = design.astype({"batch": "string", "condition": "string"})
    np.testing.assert_array_equal(
        lmm.fit(Y, typed, FORMULA).criterion, lmm.fit(Y, design, FORMULA).criterion
    )


def test_an_unused_category_makes_no_column():
    design = crossed_design()
    design["condition"] = pd.Categorical(design["condition"], ["control", "treated", "unused"])
    res = lmm.fit(simulate(design, n_features=3), design, FORMULA)
    assert res.spec.fixed_names == ("Intercept", "condition[T.treated]")


def test_inf_in_a_covariate_is_named():
    design = crossed_design().assign(age=1.0)
    design.loc[3, "age"] = np.inf
    with pytest.raises(ValueError, match="column 'age' has 1 infinite or undefined value"):
        lmm.fit(simulate(design, n_features=2), design, "~ age + (1|batch)")


@pytest.mark.parametrize("factor", [1e-200, 1e-300, 1e150])
def test_tiny_and_huge_scales_give_the_same_relative_answer(factor):
    design = crossed_design()
    Y = simulate(design, n_features=5)
    base = lmm.fit(Y, design, FORMULA)
    scaled = lmm.fit(Y * factor, design, FORMULA)
    assert scaled.converged.all()
    np.testing.assert_allclose(scaled.theta, base.theta, rtol=1e-7)
    np.testing.assert_allclose(scaled.beta / factor, base.beta, rtol=1e-7)


def test_values_whose_variance_overflows_get_a_reason():
    design = crossed_design()
    res = lmm.fit(simulate(design, n_features=3) * 1e300, design, FORMULA)
    assert not res.converged.any()
    assert res.reason.str.startswith("variances exceed the range of float64").all()


def test_a_backed_h5ad_with_sparse_x_is_fit(tmp_path):
    design = crossed_design()
    Y = np.abs(simulate(design, n_features=6))
    path = tmp_path / "sparse.h5ad"
    ad.AnnData(sparse.csr_matrix(Y), obs=design.set_axis(design.index.astype(str))).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    omixed.tl.fit(backed, FORMULA, progress=False)
    np.testing.assert_array_equal(
        backed.var["lmm_criterion"], lmm.fit(Y, design, FORMULA).criterion
    )


def test_a_level_with_a_bracket_keeps_its_term():
    design = crossed_design()
    design["condition"] = design["condition"].str.replace("treated", "tre]ated")
    design["age"] = np.linspace(20, 60, len(design))
    adata = _adata(design, simulate(design, n_features=4))
    omixed.tl.fit(adata, "~ condition + age + (1|batch)", progress=False)
    assert omixed.get.model(adata).spec.fixed_terms() == {
        "Intercept": [0],
        "condition": [1],
        "age": [2],
    }
    assert list(omixed.tl.variance_partition(adata).columns) == [
        "batch",
        "condition",
        "age",
        "Residual",
    ]
    omixed.tl.correct(adata, remove=["age"])


def test_a_design_column_removed_after_the_fit_is_named():
    design = crossed_design()
    adata = _adata(design, simulate(design, n_features=3))
    omixed.tl.fit(adata, FORMULA, progress=False)
    del adata.obs["batch"]
    with pytest.raises(ValueError, match=r"grouping factor .batch.*not a column"):
        omixed.tl.correct(adata, remove=["batch"])


def test_tests_on_a_subset_of_samples_read_the_fit_by_name():
    design = crossed_design(n_batch=4, n_donor=8, reps=3)
    adata = _adata(design, simulate(design, n_features=20))
    omixed.tl.fit(adata, "~ condition + (1|batch) + (1|donor)", progress=False)
    subset = adata[adata.obs["batch"] != "B3"].copy()
    top = omixed.tl.test(subset, contrast="condition[T.treated]")
    assert top["pvalue"].notna().all()


def test_removing_a_nested_term_works_and_is_named_as_written():
    design = crossed_design()
    design["rep"] = design.groupby("donor").cumcount().astype(str)
    adata = _adata(design, simulate(design, n_features=4))
    omixed.tl.fit(adata, "~ condition + (1|donor/rep)", progress=False)
    for method in ("blup", "full", "eb"):
        with pytest.warns(UserWarning, match="'donor:rep' is nested in \\['condition'\\]"):
            omixed.tl.correct(adata, remove=["donor:rep"], method=method)
    with pytest.raises(
        ValueError, match=r"cannot remove \['rep'\].*random terms: \['donor', 'donor:rep'\]"
    ):
        omixed.tl.correct(adata, remove=["rep"])


@pytest.mark.parametrize("value", ["0.01", -0.1, 2])
def test_q_value_thresholds_must_be_numbers_from_0_to_1(value):
    with pytest.raises(ValueError, match=r"Q\.Value threshold must be a number from 0 to 1"):
        omixed.io.read_diann(IO / "diann_report.tsv", q_value=value)


def test_no_warnings_escape_for_good_input():
    design = crossed_design()
    adata = _adata(design, simulate(design, n_features=5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        omixed.tl.fit(adata, FORMULA, progress=False)
        omixed.tl.correct(adata, remove=["batch"])
