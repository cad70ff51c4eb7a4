"""Drop features with too few observed (non-missing) values."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .._utils import get_matrix
from ._normalize import record_step

if TYPE_CHECKING:
    from anndata import AnnData


def filter_features(
    adata: AnnData,
    *,
    min_obs: int | None = None,
    min_fraction: float | None = None,
    group: str | None = None,
    min_obs_per_group: int | None = None,
    require: Literal["all", "any"] = "all",
    layer: str | None = None,
    inplace: bool = True,
) -> np.ndarray | None:
    """Keep features with enough observed (non-NaN) samples, overall and/or per group.

    All given criteria must hold. A feature fitted by a mixed model needs observations in the
    groups it compares; ``group="condition", min_obs_per_group=2`` asks for that.

    Parameters
    ----------
    adata
        Samples × features; NaN marks missing values.
    min_obs
        Minimum number of observed samples.
    min_fraction
        Minimum fraction (0–1) of observed samples.
    group
        Column of ``adata.obs`` whose levels are counted separately; needs ``min_obs_per_group``.
    min_obs_per_group
        Minimum number of observed samples within a level of ``obs[group]``.
    require
        ``"all"``: every level of ``obs[group]`` needs ``min_obs_per_group``;
        ``"any"``: one level suffices.
    layer
        Count missing values in ``adata.layers[layer]`` instead of ``adata.X``.
    inplace
        Subset ``adata`` to the kept features; otherwise leave it unchanged and return the mask.

    Returns
    -------
    If ``inplace=False``, a boolean mask over ``adata.var_names`` (True = keep); else None, and
    the history entry in ``adata.uns["omixed_pp"]`` records ``n_removed``.

    Examples
    --------
    >>> import omixed
    >>> adata = omixed.datasets.example()
    >>> omixed.pp.filter_features(adata, min_fraction=0.5, group="condition", min_obs_per_group=3)
    """
    if (group is None) != (min_obs_per_group is None):
        raise ValueError("group and min_obs_per_group must be given together")
    if min_obs is None and min_fraction is None and group is None:
        raise ValueError("give at least one of min_obs, min_fraction, group + min_obs_per_group")
    if require not in ("all", "any"):
        raise ValueError(f"require must be 'all' or 'any', got {require!r}")
    if min_fraction is not None and not 0 <= min_fraction <= 1:
        raise ValueError(f"min_fraction must lie in [0, 1], got {min_fraction}")

    observed = ~np.isnan(get_matrix(adata, layer))
    keep = np.ones(adata.n_vars, dtype=bool)
    if min_obs is not None:
        keep &= observed.sum(axis=0) >= min_obs
    if min_fraction is not None:
        keep &= observed.mean(axis=0) >= min_fraction
    if group is not None:
        enough = _observed_per_level(observed, adata.obs, group) >= min_obs_per_group
        keep &= enough.all(axis=0) if require == "all" else enough.any(axis=0)
    if not inplace:
        return keep

    n_removed = int((~keep).sum())
    adata._inplace_subset_var(keep)
    record_step(
        adata,
        "filter_features",
        min_obs=min_obs,
        min_fraction=min_fraction,
        group=group,
        min_obs_per_group=min_obs_per_group,
        require=require if group is not None else None,
        layer=layer,
        n_removed=n_removed,
    )
    return None


def _observed_per_level(observed: np.ndarray, obs: pd.DataFrame, group: str) -> np.ndarray:
    """Observed values per used level of ``obs[group]`` (levels × features)."""
    if group not in obs.columns:
        available = ", ".join(map(repr, obs.columns)) or "none"
        raise KeyError(f"group {group!r} not found in adata.obs (available: {available})")
    codes, levels = pd.factorize(obs[group])
    if (codes < 0).any():
        raise ValueError(
            f"obs[{group!r}] is missing for {int((codes < 0).sum())} samples; "
            "label them or remove those samples"
        )
    return np.stack([observed[codes == k].sum(axis=0) for k in range(len(levels))])
