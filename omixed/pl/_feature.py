"""``pl.feature``: one feature's values per group, raw next to corrected, with fitted levels."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd

from .._docs import doc_params
from ._utils import (
    Layers,
    categories,
    finish,
    labelled,
    layer_values,
    new_figure,
    palette,
)

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

BOX_WIDTH = 0.5
JITTER = 0.15  # half-width of the horizontal scatter of the points within a group


@doc_params
def feature(
    adata: AnnData,
    feature: str,
    *,
    key: str | None = "lmm",
    groupby: str = "batch",
    layers: Layers = (None, "corrected"),
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Figure | None:
    """Values of one feature per group (box + points), one panel per layer, with fitted levels.

    When ``groupby`` is a random term of the fit ``key`` (e.g. ``batch`` in ``(1|batch)``), each
    group is marked with the level the model expects for it: the mean fixed-effect fit
    ``X_i β̂`` over the group's samples shown, plus, in the layer the model was fit to, the
    group's BLUP ``b̂_g`` (printed next to the mark).  Removing the batch term moves each batch
    from the first mark to the second.  Missing values are not drawn; each tick says how many of
    the group's samples are observed.

    Parameters
    ----------
    adata
        Samples × features; missing values are NaN.
    feature
        Name of the feature (``adata.var_names``).
    key
        The ``key_added`` of an :func:`omixed.tl.fit` whose levels to mark; ``None``: no marks.
    groupby
        ``obs`` column that defines the groups (missing values form the group "NA").
    layers
        Layers to show side by side on a shared y axis (``None`` is ``adata.X``), or a mapping
        from panel title to layer.
    {show_save}

    {returns_figure}

    Examples
    --------
    {example_corrected}
    >>> fig = omixed.pl.feature(adata, "F0003", show=False)
    >>> [ax.get_title() for ax in fig.axes]
    ['F0003: X', 'F0003: corrected']
    """
    if feature not in adata.var_names:
        raise KeyError(
            f"feature {feature!r} not in adata.var_names (e.g. {list(adata.var_names[:5])})"
        )
    layers = labelled(layers)
    groups = categories(adata, groupby)
    levels = fitted_levels(adata, key, feature, groupby) if key is not None else None
    unfit = key is not None and not bool(adata.var.loc[feature, f"{key}_converged"])
    one = adata[:, feature]
    fig, axs = new_figure(
        1, len(layers), panel=(1.5 + 0.8 * len(groups.categories), 3.8), sharey=True
    )
    for ax, (label, layer) in zip(axs[0], layers.items(), strict=True):
        values = layer_values(one, layer)[:, 0]
        draw_groups(ax, values, groups, palette(adata, groupby, groups.categories))
        if levels is not None:
            mark_levels(ax, values, groups, levels, with_blup=layer == levels.layer)
        ax.set_title(f"{feature}: {label}" + (" (not fit)" if unfit else ""))
        ax.set_xlabel(f"{groupby} (observed / samples)")
    axs[0, 0].set_ylabel("value")
    return finish(fig, fig, show=show, save=save)


class Levels(NamedTuple):
    """What a fit says about one feature."""

    fixed: np.ndarray  # X_i β̂ for every sample (NaN if the feature was not fit)
    blup: pd.Series  # b̂_g by group label; NaN where the fit has none
    layer: str | None  # the layer the model was fit to


def fitted_levels(adata: AnnData, key: str, feature: str, groupby: str) -> Levels | None:
    """The fit's levels for ``feature``; ``None`` if ``groupby`` is not a random term of it."""
    from .. import _fitstore  # the engine loads only when needed (``import omixed.pl`` stays quick)

    model = _fitstore.read(adata, key)
    term = next((t.name for t in model.spec.terms if t.group == (groupby,)), None)
    if term is None:
        return None
    design = model.spec.evaluate(adata.obs)
    beta = model.beta.loc[feature].to_numpy(dtype=float)
    if bool(model.converged.loc[feature]):
        fixed = design.X @ np.nan_to_num(beta)  # a coefficient the fit dropped contributes nothing
    else:
        fixed = np.full(adata.n_obs, np.nan)
    blup = model.blup[term].loc[feature].astype(float)
    return Levels(fixed, blup, _fitstore.info(adata, key).get("layer") or None)


def draw_groups(ax: Axes, values: np.ndarray, groups: pd.Categorical, colors: list) -> None:
    """A box and the jittered points of every group's observed values; ticks give n observed."""
    observed = np.isfinite(values)
    positions = np.arange(len(groups.categories))
    per_group = [values[(groups.codes == k) & observed] for k in positions]
    filled = [k for k in positions if per_group[k].size]
    if filled:  # matplotlib takes an empty list for one empty box
        ax.boxplot(
            [per_group[k] for k in filled],
            positions=filled,
            widths=BOX_WIDTH,
            showfliers=False,
            medianprops={"color": "black"},
        )
    jitter = np.random.default_rng(0).uniform(-JITTER, JITTER, values.size)
    for k, color in zip(positions, colors, strict=True):
        chosen = (groups.codes == k) & observed
        ax.scatter(positions[k] + jitter[chosen], values[chosen], color=color, s=14, zorder=3)
    n_total = np.bincount(groups.codes, minlength=positions.size)
    labels = [
        f"{level}\n{part.size}/{total}"
        for level, part, total in zip(groups.categories, per_group, n_total, strict=True)
    ]
    ax.set_xticks(positions, labels)


def mark_levels(
    ax: Axes, values: np.ndarray, groups: pd.Categorical, levels: Levels, *, with_blup: bool
) -> None:
    """Mark each group at its mean fixed-effect fit over the samples shown (+ BLUP if asked)."""
    observed = np.isfinite(values)
    positions = np.arange(len(groups.categories))
    marks = np.full(positions.size, np.nan)
    for k in positions:
        chosen = (groups.codes == k) & observed
        if chosen.any():
            marks[k] = levels.fixed[chosen].mean()
    if with_blup:
        blups = levels.blup.reindex([str(g) for g in groups.categories]).to_numpy()
        marks = marks + blups
        for x, y, b in zip(positions, marks, blups, strict=True):
            if np.isfinite(y):
                ax.annotate(f"{b:+.2f}", (x + BOX_WIDTH / 2, y), va="center", fontsize="x-small")
    shown = np.isfinite(marks)
    if shown.any():  # nothing to mark for a feature the fit could not handle
        label = "fixed effects + BLUP" if with_blup else "fixed effects"
        ax.scatter(
            positions[shown], marks[shown], marker="D", s=36, color="black", zorder=4, label=label
        )
        ax.legend(loc="best", fontsize="x-small", frameon=False)
