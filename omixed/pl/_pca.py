"""``pl.pca`` and ``pl.pca_compare``: samples on principal components, raw and corrected."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np

from .._docs import doc_params
from ._utils import (
    NA_COLOR,
    Layers,
    categories,
    finish,
    is_continuous,
    labelled,
    layer_values,
    new_figure,
    obs_column,
    palette,
)

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PANEL = (4.2, 3.6)


class PCs(NamedTuple):
    """Sample scores (samples × components) and the fraction of variance of each component."""

    scores: np.ndarray
    ratio: np.ndarray


@doc_params
def pca(
    adata: AnnData,
    *,
    layers: Layers = (None, "corrected"),
    color: str | Sequence[str] = ("batch", "condition"),
    components: tuple[int, int] = (1, 2),
    missing: Literal["drop", "mean"] = "drop",
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Figure | None:
    """Grid of PCA scatter plots: one row per layer, one column per ``obs`` key to colour by.

    Each layer gets its own PCA (features centred, not scaled) on the same features; a batch
    effect shows as samples grouping by batch in the ``X`` row and not in the corrected row.

    Parameters
    ----------
    adata
        Samples × features; missing values are NaN.
    layers
        Layers to compare (``None`` is ``adata.X``), or a mapping from row label to layer.
    color
        ``obs`` column(s) to colour the samples by: categories get a legend (colours from
        ``uns[f"{key}_colors"]`` when present, missing values in grey as "NA"), numbers a colour
        scale.
    components
        The two principal components to plot, counting from 1.
    missing
        ``"drop"``: use only the features observed in every sample of every layer (the default:
        no invented values, but low-abundance features with gaps are left out).  ``"mean"``: use
        every feature observed at least once, missing values set to the feature's mean in that
        layer (which pulls samples with many gaps towards the centre).  The number of features
        used is given in the figure title.
    {show_save}

    {returns_figure}

    Examples
    --------
    {example_corrected}
    >>> fig = omixed.pl.pca(adata, show=False)
    >>> len(fig.axes)
    4
    """
    layers = labelled(layers)
    keys = [color] if isinstance(color, str) else list(color)
    for key in keys:
        obs_column(adata, key)
    pcs, n_features = pca_scores(adata, layers, components=components, missing=missing)
    fig, axs = new_figure(len(layers), len(keys), panel=PANEL)
    for i, label in enumerate(layers):
        for j, key in enumerate(keys):
            scatter(axs[i, j], pcs[label], adata, key, legend=i == 0, components=components)
            axs[i, j].set_title(f"{label}: {key}")
    fig.suptitle(features_used(n_features, adata.n_obs, missing))
    return finish(fig, fig, show=show, save=save)


@doc_params
def pca_compare(
    adata: AnnData,
    *,
    layers: Mapping[str, str | None],
    color: str = "batch",
    components: tuple[int, int] = (1, 2),
    missing: Literal["drop", "mean"] = "drop",
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Figure | None:
    """One PCA panel per method, side by side, samples coloured by one ``obs`` key.

    Meant for comparing batch corrections, e.g. ``{"none": None, "omixed": "corrected",
    "ComBat": "combat"}``.  The PCA is computed as in :func:`pca`.

    Parameters
    ----------
    adata
        Samples × features; missing values are NaN.
    layers
        Panel title → layer (``None`` is ``adata.X``), in panel order.
    color
        ``obs`` column to colour the samples by; see :func:`pca`.
    components
        The two principal components to plot, counting from 1.
    missing
        How features with missing values are handled; see :func:`pca`.
    {show_save}

    {returns_figure}

    Examples
    --------
    {example_corrected}
    >>> fig = omixed.pl.pca_compare(adata, layers={"raw": None, "omixed": "corrected"}, show=False)
    >>> [ax.get_title() for ax in fig.axes]
    ['raw', 'omixed']
    """
    layers = labelled(layers)
    obs_column(adata, color)
    pcs, n_features = pca_scores(adata, layers, components=components, missing=missing)
    fig, axs = new_figure(1, len(layers), panel=PANEL)
    for j, label in enumerate(layers):
        last = j == len(layers) - 1
        scatter(axs[0, j], pcs[label], adata, color, legend=last, components=components)
        axs[0, j].set_title(label)
    fig.suptitle(features_used(n_features, adata.n_obs, missing))
    return finish(fig, fig, show=show, save=save)


def pca_scores(
    adata: AnnData,
    layers: dict[str, str | None],
    *,
    components: tuple[int, int],
    missing: Literal["drop", "mean"],
) -> tuple[dict[str, PCs], int]:
    """PCA of every layer on a shared feature set (see :func:`pca`); also the number of features."""
    if missing not in ("drop", "mean"):
        raise ValueError(f"missing must be 'drop' or 'mean', not {missing!r}")
    values = {label: layer_values(adata, layer) for label, layer in layers.items()}
    observed = [np.isfinite(v) for v in values.values()]
    if missing == "drop":
        keep = np.logical_and.reduce([o.all(axis=0) for o in observed])
    else:
        keep = np.logical_and.reduce([o.any(axis=0) for o in observed])
    n_features = int(keep.sum())
    n_pcs = min(adata.n_obs, n_features)
    if len(components) != 2 or not all(1 <= c <= n_pcs for c in components):
        raise ValueError(
            f"components must be two numbers in 1..{n_pcs}, not {components!r} ({adata.n_obs} "
            f"samples, {n_features} features usable with missing={missing!r}"
            + ("; missing='mean' also uses features with gaps)" if missing == "drop" else ")")
        )
    return {label: principal_components(v[:, keep]) for label, v in values.items()}, n_features


def principal_components(values: np.ndarray) -> PCs:
    """PCA by SVD of the column-centred matrix; NaN are set to the column mean (centred: 0).

    Signs follow scikit-learn's ``svd_flip``: the largest loading of each component is positive.
    """
    values = np.where(np.isfinite(values), values, np.nan)  # ±inf count as missing, like NaN
    centred = np.nan_to_num(values - np.nanmean(values, axis=0))
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    signs = np.sign(vt[np.arange(vt.shape[0]), np.abs(vt).argmax(axis=1)])
    total = np.sum(s**2)
    ratio = s**2 / total if total > 0 else np.zeros_like(s)
    return PCs(u * s * signs, ratio)


def scatter(
    ax: Axes, pcs: PCs, adata: AnnData, key: str, *, legend: bool, components: tuple[int, int]
) -> None:
    """Samples on two components coloured by ``obs[key]``, with a legend or colour bar."""
    x, y = (pcs.scores[:, c - 1] for c in components)
    values = obs_column(adata, key)
    style = {"s": 24, "edgecolors": "white", "linewidths": 0.3}
    if is_continuous(values):
        numbers = values.to_numpy(dtype=float)
        known = np.isfinite(numbers)
        ax.scatter(x[~known], y[~known], color=NA_COLOR, **style)
        points = ax.scatter(x[known], y[known], c=numbers[known], cmap="viridis", **style)
        if legend:
            ax.figure.colorbar(points, ax=ax, label=key)
    else:
        levels = categories(adata, key)
        for code, (level, color) in enumerate(
            zip(levels.categories, palette(adata, key, levels.categories), strict=True)
        ):
            chosen = levels.codes == code
            if chosen.any():  # unused categories get no legend entry
                ax.scatter(x[chosen], y[chosen], color=color, label=str(level), **style)
        if legend:
            ax.legend(
                title=key,
                loc="upper left",
                bbox_to_anchor=(1.0, 1.0),
                frameon=False,
                fontsize="small",
            )
    for set_label, c in zip((ax.set_xlabel, ax.set_ylabel), components, strict=True):
        set_label(f"PC{c} ({100 * pcs.ratio[c - 1]:.1f} %)")


def features_used(n_features: int, n_obs: int, missing: str) -> str:
    """Figure title stating which features the PCA used."""
    if missing == "drop":
        return f"PCA of the {n_features} features observed in all {n_obs} samples"
    return f"PCA of {n_features} features, missing values set to the feature mean"
