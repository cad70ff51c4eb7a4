"""``pl.volcano``: effect size against evidence for one stored test of ``tl.test``."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from .._docs import doc_params
from ._utils import finish, new_figure

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes


@doc_params
def volcano(
    adata: AnnData,
    *,
    key: str,
    alpha: float = 0.05,
    label: int = 10,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Axes | None:
    """Volcano plot of a test stored by :func:`omixed.tl.test`: estimate against −log10 p.

    Features called at ``alpha`` (BH-adjusted) are drawn in colour and the ``label`` with the
    smallest p-values are named.  For a test with the hurdle component the combined p-value is
    plotted, and features tested by detection alone (their intensity contrast not estimable)
    are placed at their log odds ratio, marked with triangles.

    Parameters
    ----------
    adata
        AnnData holding the test in ``varm[key]`` (and its parameters in ``uns[key]``).
    key
        The ``key_added`` of the test (e.g. ``"lmm_test_condition_T_treated"``).
    alpha
        Adjusted p-value below which a feature counts as called.
    label
        How many of the called features to name.
    {ax}
    {show_save}

    Returns
    -------
    The axes, unless the plot is shown.

    Examples
    --------
    {example_fit}
    >>> top = omixed.tl.test(adata, contrast="condition[T.treated]")
    >>> ax = omixed.pl.volcano(adata, key="lmm_test_condition_T_treated", show=False)
    >>> ax.get_xlabel()
    'estimate (condition[T.treated])'
    """
    if key not in adata.varm or key not in adata.uns:
        tests = [k for k in adata.varm if k in adata.uns and "contrast" in adata.uns[k]]
        raise KeyError(f"no test stored under {key!r}; tests stored: {tests}")
    table = adata.varm[key]
    params = adata.uns[key]
    hurdle = "hurdle_pvalue" in table.columns
    p = table["hurdle_pvalue" if hurdle else "pvalue"].to_numpy(dtype=float)
    padj = table["hurdle_padj" if hurdle else "padj"].to_numpy(dtype=float)
    x = table["estimate"].to_numpy(dtype=float)
    detection_only = np.zeros(len(table), dtype=bool)
    if hurdle:
        detection_only = np.isnan(x) & np.isfinite(table["logOR"].to_numpy(dtype=float))
        x = np.where(detection_only, table["logOR"].to_numpy(dtype=float), x)
    shown = np.isfinite(x) & np.isfinite(p)
    y = -np.log10(np.clip(p, np.finfo(float).tiny, 1.0))
    called = shown & (padj < alpha)
    if ax is None:
        fig, axs = new_figure(1, 1, panel=(5.5, 4.5))
        ax = axs[0, 0]
    else:
        fig = ax.figure
    for mask, color, size in ((shown & ~called, "0.7", 8), (called, "tab:red", 14)):
        ax.scatter(x[mask & ~detection_only], y[mask & ~detection_only], s=size, c=color, lw=0)
        ax.scatter(
            x[mask & detection_only], y[mask & detection_only], s=size * 2, c=color, marker="^"
        )
    for i in np.argsort(np.where(called, p, np.inf))[: min(label, int(called.sum()))]:
        ax.annotate(
            str(table.index[i]), (x[i], y[i]), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    ax.axvline(0.0, color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel(f"estimate ({params['contrast']})")
    ax.set_ylabel("−log10 p" + (" (intensity + detection)" if hurdle else ""))
    ax.set_title(
        f"{int(called.sum())} of {int(shown.sum())} features at adjusted p < {alpha:g}"
        + (f" (▲ detection only: {int((detection_only & shown).sum())})" if hurdle else ""),
        fontsize=9,
    )
    return finish(fig, ax, show=show, save=save)
