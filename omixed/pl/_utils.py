"""Shared plumbing of the plots: show/save, obs categories, colours, layers (docs: ``_docs``)."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .._utils import atomic_path, get_matrix

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Layers = Sequence[str | None] | Mapping[str, str | None]

NA_LABEL = "NA"
NA_COLOR = "lightgray"


def finish(
    fig: Figure, result: Figure | Axes, *, show: bool | None, save: str | os.PathLike | None
) -> Figure | Axes | None:
    """Save ``fig`` if asked, then show it (returning ``None``) or return ``result``."""
    if save is not None:
        save_figure(fig, save)
    if show is None:
        show = matplotlib.is_interactive()
    if show:
        plt.show()
        return None
    return result


def save_figure(fig: Figure, path: str | os.PathLike) -> None:
    """Write ``fig`` atomically in the format named by ``path``'s suffix."""
    fmt = os.path.splitext(path)[1].lstrip(".").lower()
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(
            f"cannot tell the figure format from {str(path)!r}; use one of the suffixes "
            + ", ".join(f".{s}" for s in sorted(supported))
        )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, bbox_inches="tight")


def new_figure(
    nrows: int, ncols: int, *, panel: tuple[float, float], sharey: bool = False
) -> tuple[Figure, np.ndarray]:
    """A figure with a ``nrows`` × ``ncols`` array of axes, each about ``panel`` inches."""
    return plt.subplots(
        nrows,
        ncols,
        figsize=(panel[0] * ncols, panel[1] * nrows),
        squeeze=False,
        sharey=sharey,
        layout="constrained",
    )


def obs_column(adata: AnnData, key: str) -> pd.Series:
    """``adata.obs[key]``, or a ``KeyError`` listing the available columns."""
    if key not in adata.obs.columns:
        available = ", ".join(map(repr, adata.obs.columns)) or "none"
        raise KeyError(f"{key!r} is not a column of adata.obs (available: {available})")
    return adata.obs[key]


def is_continuous(values: pd.Series) -> bool:
    """Numbers are coloured on a scale, everything else (strings, categories, booleans) by level."""
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def categories(adata: AnnData, key: str) -> pd.Categorical:
    """``obs[key]`` as a categorical in its level order; missing values form a last level "NA"."""
    values = pd.Categorical(obs_column(adata, key))
    if values.isna().any():
        values = values.add_categories(NA_LABEL).fillna(NA_LABEL)
    return values


def palette(adata: AnnData, key: str, levels: Sequence[Hashable]) -> list:
    """One colour per level: scanpy's ``uns[f"{key}_colors"]`` if it fits, else tab10/tab20."""
    stored = adata.uns.get(f"{key}_colors")
    real = [level for level in levels if level != NA_LABEL]
    if stored is not None and len(stored) == len(real):
        colors = list(stored)
    else:
        n = len(real)
        cmap = plt.get_cmap("tab10" if n <= 10 else "tab20" if n <= 20 else "turbo")
        colors = list(cmap(np.arange(n) if n <= 20 else np.linspace(0, 1, n)))
    it = iter(colors)
    return [NA_COLOR if level == NA_LABEL else next(it) for level in levels]


def layer_values(adata: AnnData, layer: str | None) -> np.ndarray:
    """Samples × features values of ``layer``; a missing layer names where layers come from."""
    if layer is not None and layer not in adata.layers:
        available = ", ".join(map(repr, adata.layers.keys())) or "none"
        raise KeyError(
            f"layer {layer!r} not found in adata.layers (available: {available}); corrected "
            "layers are written by omixed.tl.correct(adata, ..., layer_added=...)"
        )
    return get_matrix(adata, layer)


def layer_label(layer: str | None) -> str:
    """How a layer is named in titles: ``None`` is ``X``."""
    return "X" if layer is None else layer


def labelled(layers: Layers | str | None) -> dict[str, str | None]:
    """Label → layer; a plain sequence is labelled by the layer names (``X`` for ``None``)."""
    if isinstance(layers, Mapping):
        result = dict(layers)
    else:
        if layers is None or isinstance(layers, str):
            layers = [layers]
        result = {layer_label(layer): layer for layer in layers}
    if not result:
        raise ValueError("layers is empty; give at least one layer (None is adata.X)")
    return result
