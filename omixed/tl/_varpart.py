"""``tl.variance_partition``: fractions of variance per term, as variancePartition reports them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import _fitstore
from .._docs import doc_params
from .._utils import get_matrix

if TYPE_CHECKING:
    from anndata import AnnData


@doc_params
def variance_partition(
    adata: AnnData, *, key: str = "lmm", key_added: str | None = None
) -> pd.DataFrame:
    """Fraction of each feature's variance explained by each term.

    As in variancePartition (Hoffman & Schadt 2016): a random term contributes its variance
    component ``σ²_g``; a fixed term ``t`` contributes the variance across the feature's
    observed samples of its fitted values ``X_t β̂_t``; the residual contributes ``σ²``.  Each is
    divided by their sum, so every row sums to 1.

    Parameters
    ----------
    {fitted_adata}
    {fit_key}
    key_added
        Where to store the table (default ``f"{key}_varpart"`` in ``varm``).

    Returns
    -------
    Features × (random terms, fixed terms, ``Residual``) fractions, also stored in
    ``adata.varm[key_added]``.  Features that were not fit are NaN.

    Examples
    --------
    {example_fit}
    >>> vp = omixed.tl.variance_partition(adata)
    >>> bool(np.allclose(vp.dropna().sum(axis=1), 1.0))
    True
    """
    model = _fitstore.read(adata, key)
    info = _fitstore.info(adata, key)
    X = model.spec.fixed.matrix(adata.obs)  # only the fixed effects' columns are needed
    beta = np.nan_to_num(model.beta.to_numpy())
    observed = np.isfinite(get_matrix(adata, info["layer"] or None))
    parts = {term: model.variance[term].to_numpy() for term in model.spec.term_names}
    for term, cols in model.spec.fixed_terms().items():
        if term == "Intercept":
            continue
        fitted = np.where(observed, X[:, cols] @ beta[:, cols].T, np.nan)
        with np.errstate(invalid="ignore"):
            parts[term] = _nanvar(fitted)
    parts["Residual"] = model.variance["Residual"].to_numpy()
    table = pd.DataFrame(parts, index=adata.var_names)
    table = table.div(table.sum(axis=1), axis=0)
    table[~model.converged.to_numpy(dtype=bool)] = np.nan
    key_added = _fitstore.check_key(key_added or f"{key}_varpart")
    adata.varm[key_added] = table
    _fitstore.register(adata, key, varm=[key_added])
    return table


def _nanvar(values: np.ndarray) -> np.ndarray:
    """Sample variance (ddof=1, like R's ``var``) per column over non-NaN rows."""
    n = np.isfinite(values).sum(axis=0)
    mean = np.nansum(values, axis=0) / np.maximum(n, 1)
    ss = np.nansum((values - mean) ** 2, axis=0)
    return np.where(n > 1, ss / np.maximum(n - 1, 1), 0.0)
