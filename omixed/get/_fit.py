"""``get.model`` and ``get.fit_df``: a fit stored by ``tl.fit``, as a model or as one table."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from .. import _fitstore

if TYPE_CHECKING:
    from anndata import AnnData

    from ..lmm import LMMResult


def model(adata: AnnData, *, key: str = "lmm") -> LMMResult:
    """The fitted model stored under ``key``: specification and per-feature estimates.

    The result is rebuilt from exactly what :func:`omixed.tl.fit` stored (also after an h5ad
    round trip); its ``spec`` evaluates the formula on any data frame by name
    (``model.spec.evaluate(adata.obs)``), which is how every later step reads the fit.

    Parameters
    ----------
    adata
        AnnData fitted with :func:`omixed.tl.fit` (or :func:`omixed.tl.summarize_proteins`).
    key
        The ``key_added`` of that fit.

    Returns
    -------
    :class:`omixed.lmm.LMMResult`.

    Examples
    --------
    >>> import omixed
    >>> adata = omixed.datasets.example()
    >>> omixed.tl.fit(adata, "~ condition + (1|batch) + (1|donor)", progress=False)
    >>> fit = omixed.get.model(adata)
    >>> fit.spec.fixed_names
    ('Intercept', 'condition[T.treated]')
    """
    return _fitstore.read(adata, key)


def fit_df(adata: AnnData, *, key: str = "lmm") -> pd.DataFrame:
    """One row per feature: criterion, convergence, reason, variance components, β and SE.

    Parameters
    ----------
    adata
        AnnData fitted with :func:`omixed.tl.fit`.
    key
        The ``key_added`` of that fit.

    Returns
    -------
    DataFrame indexed by feature (index name ``feature``) with ``criterion``, ``converged``,
    ``n_obs``, ``reason``, ``notes``, ``var_<term>`` (variance components and ``var_Residual``),
    ``beta_<coefficient>`` and ``se_<coefficient>``.

    Examples
    --------
    >>> import omixed
    >>> adata = omixed.datasets.example()
    >>> omixed.tl.fit(adata, "~ condition + (1|batch)", progress=False)
    >>> omixed.get.fit_df(adata).columns[:5].tolist()
    ['criterion', 'converged', 'n_obs', 'reason', 'notes']
    """
    return _fitstore.read(adata, key).summary().rename_axis("feature")
