"""Plots: each renders without warnings, and what is drawn is the data (checked independently)."""

from __future__ import annotations

import inspect
import warnings

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import PathPatch
from sklearn.decomposition import PCA

import omixed
from omixed import pl, tl

FORMULA = "~ condition + (1|batch) + (1|donor)"
UNFIT = ["F0005", "F0006"]  # all values missing: the fit cannot handle them


@pytest.fixture(scope="module")
def fitted_module():
    adata = omixed.datasets.example()[:, :200].copy()
    adata.X[:, adata.var_names.get_indexer(UNFIT)] = np.nan
    with pytest.warns(UserWarning, match="2 of 200 features were not fit"):
        tl.fit(adata, FORMULA, progress=False)
    tl.correct(adata, remove=["batch"])
    return adata


@pytest.fixture
def fitted(fitted_module):
    return fitted_module.copy()


@pytest.fixture(autouse=True)
def strict_and_closed():
    """Every plot runs with warnings as errors, and its figures are closed afterwards."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield
    plt.close("all")


def points(ax: Axes, exclude_label: str | None = None) -> np.ndarray:
    """x, y of every scatter point in ``ax`` (optionally not the collection labelled so)."""
    offsets = [
        c.get_offsets()
        for c in ax.collections
        if isinstance(c, PathCollection) and c.get_label() != exclude_label
    ]
    return np.concatenate(offsets) if offsets else np.empty((0, 2))


def legend_labels(ax: Axes) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def assert_png(path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def sklearn_scores(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model = PCA(n_components=2, svd_solver="full").fit(values)
    return model.transform(values), model.explained_variance_ratio_


def assert_same_up_to_sign(a: np.ndarray, b: np.ndarray) -> None:
    signs = np.sign(np.sum(a * b, axis=0))
    np.testing.assert_allclose(a * signs, b, atol=1e-8)


# --- variance_partition --------------------------------------------------------------------------


def test_variance_partition_violins_span_the_fractions(fitted, tmp_path) -> None:
    assert "lmm_varpart" not in fitted.varm
    ax = pl.variance_partition(fitted, save=tmp_path / "vp.png", show=False)
    assert_png(tmp_path / "vp.png")
    assert isinstance(ax, Axes)
    table = fitted.varm["lmm_varpart"]  # computed because it was missing
    terms = [t.get_text() for t in ax.get_xticklabels()]
    assert sorted(terms) == ["Residual", "batch", "condition", "donor"]
    assert terms[-1] == "Residual"
    medians = table[terms[:-1]].median().to_numpy()
    assert np.all(np.diff(medians) <= 0)
    violins = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(violins) == 4
    for violin, term in zip(violins, terms, strict=True):
        y = violin.get_paths()[0].vertices[:, 1]
        fractions = 100 * table[term].dropna()
        np.testing.assert_allclose([y.min(), y.max()], [fractions.min(), fractions.max()])
    assert ax.get_title() == f"198 features ({len(UNFIT)} not fit)"


def test_variance_partition_boxes_show_quartiles_of_the_stored_table(fitted) -> None:
    table = tl.variance_partition(fitted) / 2  # a stored table is plotted as it is
    fitted.varm["lmm_varpart"] = table
    ax = pl.variance_partition(fitted, kind="box", sort=False, show=False)
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "batch",
        "donor",
        "condition",
        "Residual",
    ]
    boxes = [p for p in ax.patches if isinstance(p, PathPatch)]
    assert len(boxes) == 4
    for box, term in zip(boxes, table.columns, strict=True):
        y = box.get_path().vertices[:, 1]
        quartiles = np.percentile(100 * table[term].dropna(), [25, 75])
        np.testing.assert_allclose([y.min(), y.max()], quartiles)


def test_variance_partition_one_violin_per_term_of_the_chosen_fit(fitted) -> None:
    with pytest.warns(UserWarning, match="not fit"):
        tl.fit(fitted, "~ condition + (1|batch)", key_added="small", progress=False)
    fig, ax = plt.subplots()
    assert pl.variance_partition(fitted, key="small", ax=ax, show=False) is ax
    assert len(fig.axes) == 1
    assert [t.get_text() for t in ax.get_xticklabels()] == ["batch", "condition", "Residual"]
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 3


def test_variance_partition_errors(fitted) -> None:
    with pytest.raises(KeyError, match=r"run omixed.tl.fit\(adata, ..., key_added='other'\)"):
        pl.variance_partition(fitted, key="other")
    with pytest.raises(ValueError, match="kind must be 'violin' or 'box'"):
        pl.variance_partition(fitted, kind="bar")


# --- pca / pca_compare ---------------------------------------------------------------------------


def test_pca_grid_scores_match_sklearn_on_complete_features(fitted, tmp_path) -> None:
    fig = pl.pca(fitted, save=tmp_path / "pca.png", show=False)
    assert_png(tmp_path / "pca.png")
    assert isinstance(fig, Figure)
    axs = np.array(fig.axes).reshape(2, 2)
    complete = np.isfinite(fitted.X).all(axis=0)
    assert fig.get_suptitle() == f"PCA of the {complete.sum()} features observed in all 48 samples"
    for row, layer in zip(axs, [fitted.X, fitted.layers["corrected"]], strict=True):
        scores, ratio = sklearn_scores(layer[:, complete])
        for ax in row:
            xy = points(ax)
            assert xy.shape == (fitted.n_obs, 2)
            # one collection per category in category order: rows of xy are the samples regrouped
            order = np.argsort(fitted.obs[ax.get_title().split(": ")[1]].cat.codes, kind="stable")
            assert_same_up_to_sign(xy, scores[order])
            assert ax.get_xlabel() == f"PC1 ({100 * ratio[0]:.1f} %)"
            assert ax.get_ylabel() == f"PC2 ({100 * ratio[1]:.1f} %)"
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["X: batch", "X: condition", "corrected: batch", "corrected: condition"]
    assert legend_labels(axs[0, 0]) == ["B0", "B1", "B2", "B3"]
    assert legend_labels(axs[0, 1]) == ["control", "treated"]
    assert axs[1, 0].get_legend() is None


def test_pca_mean_imputation_and_other_components(fitted) -> None:
    fig = pl.pca(fitted, layers=None, color="batch", missing="mean", components=(2, 3), show=False)
    (ax,) = fig.axes
    keep = np.isfinite(fitted.X).any(axis=0)
    values = fitted.X[:, keep]
    imputed = np.where(np.isnan(values), np.nanmean(values, axis=0), values)
    model = PCA(n_components=3, svd_solver="full").fit(imputed)
    order = np.argsort(fitted.obs["batch"].cat.codes, kind="stable")
    assert_same_up_to_sign(points(ax), model.transform(imputed)[order, 1:])
    assert ax.get_xlabel() == f"PC2 ({100 * model.explained_variance_ratio_[1]:.1f} %)"
    assert (
        fig.get_suptitle()
        == f"PCA of {keep.sum()} features, missing values set to the feature mean"
    )


def test_pca_colours_numbers_on_a_scale_and_missing_categories_as_na(fitted) -> None:
    fitted.obs["order"] = np.arange(fitted.n_obs, dtype=float)
    fitted.obs["site"] = pd.Categorical(["a", "b", None] * 16, categories=["a", "b", "unused"])
    fitted.uns["site_colors"] = ["#ff0000", "#0000ff", "#00ff00"]
    fig = pl.pca(fitted, layers=None, color=["order", "site"], show=False)
    assert len(fig.axes) == 3  # two panels and the colour bar
    assert fig.axes[2].get_ylabel() == "order"
    site = fig.axes[1]
    assert legend_labels(site) == ["a", "b", "NA"]
    colors = [tuple(c.get_facecolor()[0]) for c in site.collections]
    assert colors == [to_rgba("#ff0000"), to_rgba("#0000ff"), to_rgba("lightgray")]
    assert points(site).shape == (48, 2)


def test_pca_compare_one_panel_per_method(fitted, tmp_path) -> None:
    layers = {"none": None, "omixed": "corrected", "truth": "truth"}
    fig = pl.pca_compare(fitted, layers=layers, save=tmp_path / "compare.pdf", show=False)
    assert (tmp_path / "compare.pdf").read_bytes()[:4] == b"%PDF"
    assert [ax.get_title() for ax in fig.axes] == list(layers)
    assert all(points(ax).shape == (48, 2) for ax in fig.axes)
    assert [ax.get_legend() is not None for ax in fig.axes] == [False, False, True]
    # features observed everywhere in all three layers ("truth" is complete)
    complete = np.isfinite(fitted.X).all(axis=0)
    _, ratio = sklearn_scores(fitted.layers["truth"][:, complete])
    assert fig.axes[2].get_xlabel() == f"PC1 ({100 * ratio[0]:.1f} %)"


def test_pca_errors_name_the_problem(fitted) -> None:
    with pytest.raises(
        KeyError, match=r"'plate' is not a column of adata.obs \(available: 'batch'"
    ):
        pl.pca(fitted, color="plate")
    with pytest.raises(KeyError, match=r"layer 'combat' not found.*omixed.tl.correct"):
        pl.pca_compare(fitted, layers={"ComBat": "combat"})
    complete = int(np.isfinite(fitted.X).all(axis=0).sum())  # 28 of the 200
    with pytest.raises(
        ValueError,
        match=rf"components must be two numbers in 1\.\.{complete}, not \(1, 49\) "
        rf"\(48 samples, {complete} features",
    ):
        pl.pca(fitted, components=(1, 49))
    with pytest.raises(ValueError, match="missing must be"):
        pl.pca(fitted, missing="zero")
    with pytest.raises(ValueError, match="layers is empty"):
        pl.pca_compare(fitted, layers={})


# --- feature -------------------------------------------------------------------------------------


def marks(ax: Axes) -> np.ndarray:
    (collection,) = [c for c in ax.collections if c.get_label().startswith("fixed effects")]
    return collection.get_offsets()


def test_feature_marks_fixed_fit_plus_blup_per_batch(fitted, tmp_path) -> None:
    name = "F0003"
    fig = pl.feature(fitted, name, save=tmp_path / "f.png", show=False)
    assert_png(tmp_path / "f.png")
    raw_ax, corrected_ax = fig.axes
    assert [raw_ax.get_title(), corrected_ax.get_title()] == [f"{name}: X", f"{name}: corrected"]
    j = fitted.var_names.get_loc(name)
    observed = np.isfinite(fitted.X[:, j])
    batch = fitted.obs["batch"].to_numpy()
    beta = fitted.varm["lmm_beta"].loc[name]
    fixed = beta["Intercept"] + beta["condition[T.treated]"] * (
        fitted.obs["condition"] == "treated"
    )
    blup = fitted.varm["lmm_blup_batch"].loc[name]
    expected = np.array([fixed[observed & (batch == b)].mean() for b in ["B0", "B1", "B2", "B3"]])
    np.testing.assert_allclose(marks(raw_ax)[:, 1], expected + blup.to_numpy())
    np.testing.assert_allclose(marks(corrected_ax)[:, 1], expected)
    np.testing.assert_allclose(marks(raw_ax)[:, 0], [0, 1, 2, 3])
    assert [t.get_text() for t in raw_ax.texts] == [f"{b:+.2f}" for b in blup]
    for ax, values in [(raw_ax, fitted.X[:, j]), (corrected_ax, fitted.layers["corrected"][:, j])]:
        y = points(ax, exclude_label=marks_label(ax))[:, 1]
        np.testing.assert_allclose(np.sort(y), np.sort(values[observed]))
    counts = pd.crosstab(batch, observed).reindex(columns=[True, False], fill_value=0)
    ticks = [t.get_text() for t in raw_ax.get_xticklabels()]
    assert ticks == [f"{b}\n{r[True]}/{r.sum()}" for b, r in counts.iterrows()]


def marks_label(ax: Axes) -> str:
    return next(c.get_label() for c in ax.collections if c.get_label().startswith("fixed effects"))


def test_feature_without_marks_and_unfit_feature(fitted) -> None:
    fig = pl.feature(fitted, "F0003", key=None, groupby="condition", layers=["truth"], show=False)
    (ax,) = fig.axes
    assert ax.get_legend() is None and not ax.texts
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["control", "treated"]
    assert len(points(ax)) == 48  # the truth layer is complete
    fig = pl.feature(fitted, "F0003", groupby="condition", show=False)  # not a random term
    assert all(ax.get_legend() is None for ax in fig.axes)
    fig = pl.feature(fitted, UNFIT[0], show=False)
    assert fig.axes[0].get_title() == f"{UNFIT[0]}: X (not fit)"
    assert all(len(points(ax)) == 0 and ax.get_legend() is None for ax in fig.axes)


def test_feature_errors(fitted) -> None:
    with pytest.raises(KeyError, match=r"feature 'nope' not in adata.var_names \(e.g. \['F0000'"):
        pl.feature(fitted, "nope")
    with pytest.raises(KeyError, match=r"'plate' is not a column of adata\.obs"):
        pl.feature(fitted, "F0003", groupby="plate")
    with pytest.raises(KeyError, match=r"no fit stored under uns\['other'\]; run omixed.tl.fit"):
        pl.feature(fitted, "F0003", key="other")
    del fitted.layers["corrected"]
    with pytest.raises(KeyError, match="layer 'corrected' not found"):
        pl.feature(fitted, "F0003")


# --- show / save ---------------------------------------------------------------------------------


def test_show_and_save_handling(fitted, tmp_path, monkeypatch) -> None:
    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(True))
    assert pl.pca(fitted, layers=None, color="batch", show=True) is None
    assert shown == [True]
    monkeypatch.setattr(matplotlib, "is_interactive", lambda: True)
    assert pl.variance_partition(fitted) is None  # show=None shows in interactive sessions
    assert shown == [True, True]
    monkeypatch.setattr(matplotlib, "is_interactive", lambda: False)
    assert isinstance(pl.variance_partition(fitted), Axes)

    target = tmp_path / "out" / "vp.png"
    target.parent.mkdir()
    target.write_bytes(b"old")
    pl.variance_partition(fitted, save=target, show=False)
    assert_png(target)
    with pytest.raises(ValueError, match=r"cannot tell the figure format from .*vp\.txt.*\.png"):
        pl.variance_partition(fitted, save=tmp_path / "vp.txt", show=False)
    assert not (tmp_path / "vp.txt").exists()


def test_public_signatures_and_shared_docs() -> None:
    for name in pl.__all__:
        func = getattr(pl, name)
        params = list(inspect.signature(func).parameters.values())
        assert params[0].name == "adata"
        first_option = 2 if name == "feature" else 1
        assert all(p.kind is p.KEYWORD_ONLY for p in params[first_option:]), name
        assert {"show", "save"} <= {p.name for p in params}
        assert "{" + "show_save}" not in func.__doc__
        assert "\n    save\n        Write the figure" in func.__doc__
