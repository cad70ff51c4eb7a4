"""Transformations and normalizations of a samples × features matrix that may hold NaN (missing).

Every function records itself in ``adata.uns["omixed_pp"]`` (see :func:`record_step`), so a
workflow can report what was done to the data.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Literal

import numpy as np

from .._docs import doc_params
from .._utils import get_matrix, set_matrix

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData

HISTORY_KEY = "omixed_pp"


def record_step(adata: AnnData, step: str, **params: object) -> None:
    """Append ``{"step": step, **params}`` to the preprocessing history ``adata.uns["omixed_pp"]``.

    The history is a dict keyed ``"000"``, ``"001"``, ... in order of application rather than a
    list: h5ad files cannot hold a list of dicts, and zero-padded keys keep the order when read
    back. Parameters that are None are left out (anndata < 0.11 cannot write None); read them
    with ``.get``.
    """
    history = adata.uns.setdefault(HISTORY_KEY, {})
    params = {name: value for name, value in params.items() if value is not None}
    history[f"{len(history):03d}"] = {"step": step, **params}


@doc_params(action="Transform", result="transformed")
def log_transform(
    adata: AnnData,
    *,
    base: float = 2,
    pseudocount: float | None = None,
    layer: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Take logarithms of intensities or counts.

    Parameters
    ----------
    adata
        Samples × features; values must be finite and ≥ 0, NaN marks missing values.
    base
        Base of the logarithm.
    pseudocount
        None (intensity data): a zero means "not detected" and becomes NaN. A positive number
        (count data): compute ``log(x + pseudocount)``, so zeros stay finite.
    {layer_copy}

    Returns
    -------
    {returns_copy} The history entry counts the zeros turned
    missing as ``n_zeros_to_nan``.

    Examples
    --------
    >>> import omixed
    >>> adata = omixed.datasets.example()
    >>> adata.X = 2.0 ** adata.X
    >>> omixed.pp.log_transform(adata)
    """
    if not (base > 0 and base != 1):
        raise ValueError(f"base must be positive and not 1, got {base}")
    if pseudocount is not None and not pseudocount > 0:
        raise ValueError(f"pseudocount must be positive or None, got {pseudocount}")
    adata = adata.copy() if copy else adata
    values = get_matrix(adata, layer)
    _check_nonnegative(values, adata.var_names, "log_transform")
    if pseudocount is None:
        zeros = values == 0
        values[zeros] = np.nan
        n_zeros_to_nan = int(zeros.sum())
    else:
        values += pseudocount
        n_zeros_to_nan = 0
    return _store(
        adata,
        np.log(values) / np.log(base),
        copy=copy,
        step="log_transform",
        base=base,
        pseudocount=pseudocount,
        layer=layer,
        n_zeros_to_nan=n_zeros_to_nan,
    )


@doc_params(action="Normalize", result="normalized")
def median_center(
    adata: AnnData,
    *,
    by: Literal["sample", "feature"] = "sample",
    reference: Literal["median"] | None = "median",
    layer: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Subtract each sample's (or feature's) median over its observed values.

    With ``reference="median"`` the median of these medians is added back, so the data keep their
    scale (MSstats' ``equalizeMedians``): ``x_ij − median_j(x_i·) + median_i(median_j(x_i·))``.

    Parameters
    ----------
    adata
        Samples × features on a log scale; NaN marks missing values and is ignored.
    by
        ``"sample"`` equalizes the sample medians (the usual normalization), ``"feature"`` centres
        each feature.
    reference
        ``"median"`` adds back the median of the medians; None leaves every median at 0.
    {layer_copy}

    Returns
    -------
    {returns_copy} A sample (feature) without observed values
    stays all-NaN.

    Examples
    --------
    >>> import omixed
    >>> adata = omixed.datasets.example()
    >>> omixed.pp.median_center(adata)
    """
    axes = {"sample": 1, "feature": 0}
    if by not in axes:
        raise ValueError(f"by must be 'sample' or 'feature', got {by!r}")
    if reference not in ("median", None):
        raise ValueError(f"reference must be 'median' or None, got {reference!r}")
    adata = adata.copy() if copy else adata
    values = get_matrix(adata, layer)
    medians = _nanmedian(values, axis=axes[by])
    shift = 0.0 if reference is None else float(_nanmedian(medians, axis=0))
    values -= np.expand_dims(medians - shift, axes[by])
    return _store(
        adata,
        values,
        copy=copy,
        step="median_center",
        by=by,
        reference=reference,
        added_back=shift,
        layer=layer,
    )


@doc_params(action="Normalize", result="normalized")
def quantile_normalize(
    adata: AnnData,
    *,
    layer: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Give every sample the same distribution of values, allowing missing values.

    As limma's ``normalizeQuantiles``: each sample's sorted observed values, placed at positions
    ``0, 1/(n_i−1), ..., 1`` and linearly interpolated to a common grid of ``n_features`` points,
    are averaged into a reference curve; a value of rank ``r`` (ties get their mean rank) among a
    sample's ``n_i`` observed values becomes the reference curve at ``(r − 1)/(n_i − 1)``.
    Without missing values this is the textbook method; ties share one value.

    Parameters
    ----------
    adata
        Samples × features; NaN marks missing values and stays NaN.
    {layer_copy}

    Returns
    -------
    {returns_copy}

    Examples
    --------
    >>> import omixed
    >>> adata = omixed.datasets.example()
    >>> omixed.pp.quantile_normalize(adata)
    """
    adata = adata.copy() if copy else adata
    values = get_matrix(adata, layer)
    observed = ~np.isnan(values)
    n_obs = observed.sum(axis=1)
    if np.any(n_obs == 1):
        names = _preview(adata.obs_names[n_obs == 1])
        raise ValueError(
            f"quantile_normalize needs 0 or at least 2 observed values per sample; "
            f"these samples have exactly 1: {names}"
        )
    # all-missing samples stay NaN and do not shape the reference
    samples = np.flatnonzero(n_obs > 0)
    grid = np.arange(values.shape[1]) / max(values.shape[1] - 1, 1)
    curves = [
        np.interp(grid, np.arange(n_obs[i]) / (n_obs[i] - 1), np.sort(values[i, observed[i]]))
        for i in samples
    ]
    reference = np.mean(curves, axis=0)
    from scipy.stats import rankdata  # scipy.stats takes 0.5 s to import: only here

    for i in samples:
        ranks = rankdata(values[i, observed[i]])
        values[i, observed[i]] = np.interp((ranks - 1) / (n_obs[i] - 1), grid, reference)
    return _store(adata, values, copy=copy, step="quantile_normalize", layer=layer)


@doc_params(action="Transform", result="transformed")
def clr(
    adata: AnnData,
    *,
    pseudocount: float = 0.5,
    layer: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Centred log-ratio transform of compositional counts (e.g. microbiome abundances).

    For each sample, ``clr(x)_j = log x_j − mean_k log x_k`` (natural log) over its observed
    features; zeros are replaced by ``pseudocount`` first, NaN stays NaN and is left out of the mean
    (the log geometric mean).

    Parameters
    ----------
    adata
        Samples × features of counts or proportions (finite, ≥ 0); NaN marks missing values.
    pseudocount
        Value that replaces zeros, whose logarithm is undefined.
    {layer_copy}

    Returns
    -------
    {returns_copy} The history entry counts the replaced zeros
    as ``n_zeros_replaced``.

    Examples
    --------
    >>> import anndata, numpy as np, omixed
    >>> counts = anndata.AnnData(np.array([[0.0, 3.0, 12.0], [5.0, 0.0, 40.0]]))
    >>> omixed.pp.clr(counts)
    """
    if not pseudocount > 0:
        raise ValueError(f"pseudocount must be positive, got {pseudocount}")
    adata = adata.copy() if copy else adata
    values = get_matrix(adata, layer)
    _check_nonnegative(values, adata.var_names, "clr")
    zeros = values == 0
    values[zeros] = pseudocount
    logs = np.log(values)
    observed = ~np.isnan(logs)
    n_obs = observed.sum(axis=1, keepdims=True)
    total = np.where(observed, logs, 0.0).sum(axis=1, keepdims=True)
    log_geomean = np.divide(total, n_obs, out=np.full(total.shape, np.nan), where=n_obs > 0)
    return _store(
        adata,
        logs - log_geomean,
        copy=copy,
        step="clr",
        pseudocount=pseudocount,
        layer=layer,
        n_zeros_replaced=int(zeros.sum()),
    )


def _store(
    adata: AnnData, values: np.ndarray, *, copy: bool, step: str, **params: object
) -> AnnData | None:
    """Write ``values`` to ``params["layer"]``, record ``step`` with ``params`` (in their order).

    Returns what the public functions return: ``adata`` if it is the copy asked for, else None.
    """
    set_matrix(adata, values, params["layer"])
    record_step(adata, step, **params)
    return adata if copy else None


def _check_nonnegative(values: np.ndarray, var_names: pd.Index, func: str) -> None:
    """Raise a ValueError naming how many values are infinite or negative, and in which features."""
    n_inf = int(np.isinf(values).sum())
    if n_inf:
        raise ValueError(f"{func} found {n_inf} infinite values; use NaN for missing values")
    negative = values < 0  # NaN compares False
    if negative.any():
        features = np.flatnonzero(negative.any(axis=0))
        raise ValueError(
            f"{func} needs values >= 0; found {int(negative.sum())} negative values in "
            f"{features.size} features: {_preview(var_names[features])}"
        )


def _nanmedian(values: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmedian`` that returns NaN for an all-missing slice without a RuntimeWarning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
        return np.nanmedian(values, axis=axis)


def _preview(names: pd.Index, limit: int = 5) -> str:
    """Comma-separated names, shortened to the first ``limit``."""
    shown = ", ".join(map(str, names[:limit]))
    return shown + (f", ... ({len(names)} in total)" if len(names) > limit else "")
