from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from omixed import pp

nan = np.nan


def make_adata(values, **obs_columns) -> ad.AnnData:
    """Samples × features AnnData named S0.../F0... with optional obs columns."""
    values = np.asarray(values, dtype=float)
    obs = pd.DataFrame(obs_columns, index=[f"S{i}" for i in range(values.shape[0])])
    var = pd.DataFrame(index=[f"F{j}" for j in range(values.shape[1])])
    return ad.AnnData(values, obs=obs, var=var)


def history(adata: ad.AnnData) -> list[dict]:
    return list(adata.uns["omixed_pp"].values())


# --- log_transform -------------------------------------------------------------------------------


def test_log_transform_intensities_zeros_become_missing() -> None:
    adata = make_adata([[1.0, 8.0, 0.0], [nan, 0.0, 1024.0]])
    pp.log_transform(adata)
    np.testing.assert_allclose(adata.X, [[0.0, 3.0, nan], [nan, nan, 10.0]], atol=1e-12)
    assert history(adata) == [{"step": "log_transform", "base": 2, "n_zeros_to_nan": 2}]


def test_log_transform_counts_with_pseudocount_and_base() -> None:
    adata = make_adata([[0.0, 9.0], [99.0, nan]])
    pp.log_transform(adata, base=10, pseudocount=1)
    np.testing.assert_allclose(adata.X, [[0.0, 1.0], [2.0, nan]], atol=1e-12)
    assert history(adata)[0]["pseudocount"] == 1
    assert history(adata)[0]["n_zeros_to_nan"] == 0


def test_log_transform_layer_and_copy_leave_the_rest_alone() -> None:
    adata = make_adata([[4.0, 16.0]])
    adata.layers["raw"] = adata.X.copy()
    pp.log_transform(adata, layer="raw")
    np.testing.assert_array_equal(adata.X, [[4.0, 16.0]])
    np.testing.assert_allclose(adata.layers["raw"], [[2.0, 4.0]])
    assert history(adata)[0]["layer"] == "raw"

    original = make_adata([[4.0, 16.0]])
    result = pp.log_transform(original, copy=True)
    np.testing.assert_allclose(result.X, [[2.0, 4.0]])
    np.testing.assert_array_equal(original.X, [[4.0, 16.0]])
    assert "omixed_pp" not in original.uns


def test_log_transform_rejects_negative_and_infinite_values() -> None:
    adata = make_adata([[1.0, -2.0, 3.0, -1.0], [-5.0, 1.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match=r"3 negative values in 3 features: F0, F1, F3"):
        pp.log_transform(adata)
    with pytest.raises(ValueError, match="2 infinite values"):
        pp.log_transform(make_adata([[np.inf, 1.0], [1.0, -np.inf]]))
    np.testing.assert_array_equal(adata.X[0], [1.0, -2.0, 3.0, -1.0])  # untouched
    assert "omixed_pp" not in adata.uns
    with pytest.raises(ValueError, match="base"):
        pp.log_transform(make_adata([[1.0]]), base=1)
    with pytest.raises(ValueError, match="pseudocount"):
        pp.log_transform(make_adata([[1.0]]), pseudocount=0)
    with pytest.raises(KeyError, match="counts"):
        pp.log_transform(make_adata([[1.0]]), layer="counts")


# --- median_center -------------------------------------------------------------------------------

MEDIAN_INPUT = [[1.0, 2.0, 3.0, nan], [4.0, nan, 8.0, 6.0], [10.0, 0.0, nan, nan]]


def test_median_center_by_sample_hand_computed() -> None:
    # sample medians 2, 6, 5; their median 5 is added back
    adata = make_adata(MEDIAN_INPUT)
    pp.median_center(adata)
    expected = [[4.0, 5.0, 6.0, nan], [3.0, nan, 7.0, 5.0], [10.0, 0.0, nan, nan]]
    np.testing.assert_allclose(adata.X, expected)
    assert history(adata)[0]["added_back"] == 5.0

    centred = pp.median_center(make_adata(MEDIAN_INPUT), reference=None, copy=True)
    np.testing.assert_allclose(np.nanmedian(centred.X, axis=1), 0.0)


def test_median_center_by_feature_hand_computed() -> None:
    # feature medians 4, 1, 5.5, 6; their median 4.75 is added back
    result = pp.median_center(make_adata(MEDIAN_INPUT), by="feature", copy=True)
    expected = [[1.75, 5.75, 2.25, nan], [4.75, nan, 7.25, 4.75], [10.75, 3.75, nan, nan]]
    np.testing.assert_allclose(result.X, expected)


def test_median_center_keeps_all_missing_sample_quietly() -> None:
    adata = make_adata([[1.0, 3.0], [nan, nan], [5.0, 9.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pp.median_center(adata)
    # sample medians 2, (none), 7; their median 4.5 is added back
    np.testing.assert_allclose(adata.X, [[3.5, 5.5], [nan, nan], [2.5, 6.5]])
    with pytest.raises(ValueError, match="by must be"):
        pp.median_center(adata, by="samples")


# --- quantile_normalize --------------------------------------------------------------------------


def test_quantile_normalize_textbook_example() -> None:
    # Wikipedia's example (samples in columns there): rank means 2, 3, 14/3, 17/3; the tie in the
    # second sample shares the mean of the 3rd and 4th rank means.
    values = np.array([[5, 4, 3], [2, 1, 4], [3, 4, 6], [4, 2, 8]], dtype=float).T
    adata = make_adata(values)
    pp.quantile_normalize(adata)
    expected = np.array(
        [[17 / 3, 31 / 6, 2], [2, 2, 3], [3, 31 / 6, 14 / 3], [14 / 3, 3, 17 / 3]]
    ).T
    np.testing.assert_allclose(adata.X, expected, rtol=1e-12)


def test_quantile_normalize_invariants_with_missing_values() -> None:
    rng = np.random.default_rng(1)
    n_samples, n_features = 9, 41  # odd n_features: the reference grid has a node at 1/2
    values = rng.normal(5, 1, (n_samples, n_features)) * rng.uniform(0.5, 2, (n_samples, 1))
    values[rng.random(values.shape) < 0.25] = nan
    values[0, :20] = nan  # a sample with 21 (odd) observed values
    values[1] = nan  # a sample with nothing observed
    values[2, 3:6] = 5.0  # ties
    before = values.copy()
    adata = make_adata(values)
    pp.quantile_normalize(adata)
    after = adata.X
    np.testing.assert_array_equal(np.isnan(after), np.isnan(before))
    present = [i for i in range(n_samples) if i != 1]
    for i in present:
        observed = ~np.isnan(before[i])
        # order within a sample is kept, ties stay ties
        np.testing.assert_array_equal(
            stats.rankdata(after[i, observed]), stats.rankdata(before[i, observed])
        )
    # extremes map to the mean extremes, the median (odd counts) to the mean median
    before, after = before[present], after[present]
    np.testing.assert_allclose(np.nanmin(after, axis=1), np.nanmin(before, axis=1).mean())
    np.testing.assert_allclose(np.nanmax(after, axis=1), np.nanmax(before, axis=1).mean())
    odd = (~np.isnan(before)).sum(axis=1) % 2 == 1
    assert odd[0] and not odd.all()
    np.testing.assert_allclose(
        np.nanmedian(after[odd], axis=1), np.nanmedian(before, axis=1).mean()
    )


def test_quantile_normalize_without_missing_values_equalizes_distributions() -> None:
    rng = np.random.default_rng(2)
    adata = make_adata(rng.lognormal(3, 1, (5, 30)))
    pp.quantile_normalize(adata)
    np.testing.assert_allclose(np.sort(adata.X, axis=1), np.sort(adata.X, axis=1)[[0]].repeat(5, 0))
    with pytest.raises(ValueError, match="exactly 1: S1"):
        pp.quantile_normalize(make_adata([[1.0, 2.0], [nan, 3.0]]))


# --- clr -----------------------------------------------------------------------------------------


def test_clr_hand_computed_with_zeros_and_missing_values() -> None:
    adata = make_adata([[1.0, 2.0, 4.0], [0.0, 2.0, nan], [nan, nan, nan]])
    pp.clr(adata)
    log2 = np.log(2)
    np.testing.assert_allclose(adata.X, [[-log2, 0.0, log2], [-log2, log2, nan], [nan] * 3])
    assert history(adata) == [{"step": "clr", "pseudocount": 0.5, "n_zeros_replaced": 1}]


def test_clr_is_scale_invariant_and_centred() -> None:
    rng = np.random.default_rng(3)
    counts = rng.poisson(20, (4, 12)).astype(float) + 1
    counts[0, 0] = nan
    scaled = counts * np.array([[1.0], [3.0], [0.1], [7.0]])
    first = pp.clr(make_adata(counts), copy=True).X
    np.testing.assert_allclose(pp.clr(make_adata(scaled), copy=True).X, first)
    np.testing.assert_allclose(np.nansum(first, axis=1), 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="1 negative values in 1 features: F1"):
        pp.clr(make_adata([[1.0, -1.0]]))


# --- filter_features -----------------------------------------------------------------------------


def filter_input() -> ad.AnnData:
    # observed per feature overall: 6, 4, 3, 2; in group a (S0-S2) / b (S3-S5): 3/3, 3/1, 0/3, 1/1
    values = np.array(
        [
            [1.0, 1.0, nan, 1.0],
            [1.0, 1.0, nan, nan],
            [1.0, 1.0, nan, nan],
            [1.0, nan, 1.0, nan],
            [1.0, nan, 1.0, 1.0],
            [1.0, 1.0, 1.0, nan],
        ]
    )
    return make_adata(values, group=pd.Categorical(list("aaabbb"), categories=["a", "b", "c"]))


@pytest.mark.parametrize(
    ("options", "kept"),
    [
        ({"min_obs": 3}, [True, True, True, False]),
        ({"min_fraction": 2 / 3}, [True, True, False, False]),
        ({"group": "group", "min_obs_per_group": 1}, [True, True, False, True]),
        ({"group": "group", "min_obs_per_group": 3, "require": "any"}, [True, True, True, False]),
        ({"min_obs": 4, "group": "group", "min_obs_per_group": 2}, [True, False, False, False]),
    ],
)
def test_filter_features_mask(options: dict, kept: list[bool]) -> None:
    adata = filter_input()
    mask = pp.filter_features(adata, inplace=False, **options)
    np.testing.assert_array_equal(mask, kept)
    assert adata.n_vars == 4 and "omixed_pp" not in adata.uns  # unused level "c" is ignored


def test_filter_features_in_place_records_removed() -> None:
    adata = filter_input()
    assert pp.filter_features(adata, min_obs=3) is None
    assert list(adata.var_names) == ["F0", "F1", "F2"]
    assert history(adata) == [
        {"step": "filter_features", "min_obs": 3, "n_removed": 1},
    ]


def test_filter_features_bad_input() -> None:
    adata = filter_input()
    with pytest.raises(ValueError, match="at least one"):
        pp.filter_features(adata)
    with pytest.raises(ValueError, match="together"):
        pp.filter_features(adata, group="group")
    with pytest.raises(KeyError, match=r"'batch' not found .* 'group'"):
        pp.filter_features(adata, group="batch", min_obs_per_group=1)
    adata.obs["group"] = pd.Categorical(["a", "a", None, "b", "b", "b"])
    with pytest.raises(ValueError, match="missing for 1 samples"):
        pp.filter_features(adata, group="group", min_obs_per_group=1)
    with pytest.raises(ValueError, match="min_fraction"):
        pp.filter_features(adata, min_fraction=1.5)
    assert adata.n_vars == 4


# --- provenance ----------------------------------------------------------------------------------


def test_history_survives_h5ad(tmp_path) -> None:
    rng = np.random.default_rng(4)
    adata = make_adata(rng.lognormal(10, 1, (6, 8)), group=list("aabbcc"))
    adata.X[0, :3] = 0.0
    adata.X[1, :2] = 0.0  # features F0, F1 end up unobserved in group "a"
    pp.log_transform(adata)
    pp.filter_features(adata, group="group", min_obs_per_group=1)
    pp.median_center(adata)
    pp.quantile_normalize(adata)
    steps = history(adata)
    assert [s["step"] for s in steps] == [
        "log_transform",
        "filter_features",
        "median_center",
        "quantile_normalize",
    ]
    assert steps[0]["n_zeros_to_nan"] == 5 and steps[1]["n_removed"] == 2

    path = tmp_path / "pp.h5ad"
    adata.write_h5ad(path)
    read_back = history(ad.read_h5ad(path))
    assert read_back == steps
