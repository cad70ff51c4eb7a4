"""``pl.variance_partition``: distribution of the variance fractions per term (plotVarPart)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

import matplotlib.pyplot as plt
import numpy as np

from .._docs import doc_params
from ._utils import finish, new_figure

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from matplotlib.axes import Axes


@doc_params
def variance_partition(
    adata: AnnData,
    *,
    key: str = "lmm",
    sort: bool = True,
    kind: Literal["violin", "box"] = "violin",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Axes | None:
    """Violins (or boxes) of the percentage of variance each term explains, one per term.

    Like variancePartition's ``plotVarPart``: each feature contributes one value per term from
    :func:`omixed.tl.variance_partition` (random terms, fixed terms and ``Residual``).  Features
    that were not fit have no fractions; their number is given in the title.

    Parameters
    ----------
    {fitted_adata}
    key
        The ``key_added`` of that fit.  ``varm[f"{key}_varpart"]`` is used if present, otherwise
        it is computed (and stored) by :func:`omixed.tl.variance_partition`.
    sort
        Order the terms by decreasing median fraction (``Residual`` stays last), as
        ``plotVarPart`` does; otherwise keep the table's order.
    kind
        ``"violin"`` (with a narrow box inside showing the quartiles) or ``"box"``.
    {ax}
    {show_save}

    Returns
    -------
    The axes, unless the plot is shown.

    Examples
    --------
    {example_fit}
    >>> ax = omixed.pl.variance_partition(adata, show=False)
    >>> [t.get_text() for t in ax.get_xticklabels()][-1]
    'Residual'
    """
    if kind not in ("violin", "box"):
        raise ValueError(f"kind must be 'violin' or 'box', not {kind!r}")
    table = adata.varm.get(f"{key}_varpart")
    if table is None:
        from .. import tl  # the engine loads only when needed: plotting a stored table is quick

        table = tl.variance_partition(adata, key=key)
    fitted = table.dropna(how="all")
    if fitted.empty:
        raise ValueError(f"no feature has a variance partition under key {key!r}: none was fit")
    terms = term_order(fitted, sort=sort)
    data = [100 * fitted[t].to_numpy() for t in terms]
    colors = term_colors(terms)

    if ax is None:
        fig, axs = new_figure(1, 1, panel=(1.2 + 0.9 * len(terms), 4.0))
        ax = axs[0, 0]
    fig = ax.figure
    positions = np.arange(1, len(terms) + 1)
    if kind == "violin":
        parts = ax.violinplot(data, positions=positions, widths=0.8, showextrema=False)
        for body, color in zip(parts["bodies"], colors, strict=True):
            body.set(facecolor=color, edgecolor="black", linewidth=0.6, alpha=0.9)
        box_width, box_fill = 0.08, ["white"] * len(terms)
    else:
        box_width, box_fill = 0.6, colors
    boxes = ax.boxplot(
        data,
        positions=positions,
        widths=box_width,
        showfliers=kind == "box",
        patch_artist=True,
        medianprops={"color": "black"},
        flierprops={"markersize": 2},
    )
    for patch, color in zip(boxes["boxes"], box_fill, strict=True):
        patch.set_facecolor(color)
    ax.set_xticks(positions, terms, rotation=30 if len(terms) > 5 else 0)
    ax.set_ylim(0, 100)
    ax.set_ylabel("Variance explained (%)")
    n_unfit = len(table) - len(fitted)
    ax.set_title(f"{len(fitted)} features" + (f" ({n_unfit} not fit)" if n_unfit else ""))
    return finish(fig, ax, show=show, save=save)


def term_order(table: pd.DataFrame, *, sort: bool) -> list[str]:
    """Columns of ``table`` by decreasing median if ``sort``, with ``Residual`` last."""
    terms = [t for t in table.columns if t != "Residual"]
    if sort:
        medians = table[terms].median()
        terms = sorted(terms, key=lambda t: -medians[t])  # stable: ties keep the table's order
    return [*terms, "Residual"] if "Residual" in table.columns else terms


def term_colors(terms: list[str]) -> list:
    """tab10 colours for the terms, light grey for ``Residual`` (variancePartition's convention)."""
    cmap = plt.get_cmap("tab10")
    others = iter(range(len(terms)))
    return ["lightgray" if t == "Residual" else cmap(next(others) % 10) for t in terms]
