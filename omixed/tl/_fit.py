"""``tl.fit``: one mixed model per feature of an AnnData, results stored in var/varm/uns."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from .. import _fitstore, lmm
from .._utils import get_matrix

if TYPE_CHECKING:
    from anndata import AnnData


def fit(
    adata: AnnData,
    formula: str,
    *,
    layer: str | None = None,
    reml: bool = True,
    key_added: str = "lmm",
    n_jobs: int = 1,
    chunk_size: int | None = None,
    copy: bool = False,
    progress: bool | None = None,
    nonfinite: str = "raise",
    drop_aliased: bool = False,
    weights_layer: str | None = None,
    robust: bool = False,
) -> AnnData | None:
    """Fit a linear mixed model to every feature (variable) of ``adata``.

    Samples are observations; the formula's columns are read from ``adata.obs``.  Each feature
    is fit on its observed (non-NaN) samples by REML (or ML) with :func:`omixed.lmm.fit`.

    Parameters
    ----------
    adata
        Samples × features; missing values are NaN.
    formula
        lme4-style formula on ``adata.obs`` columns, e.g. ``"~ condition + (1|batch) + (1|donor)"``.
    layer
        Fit ``adata.layers[layer]`` instead of ``adata.X``.
    reml
        REML (default) or maximum likelihood.
    key_added
        Prefix of the stored results.
    n_jobs
        Worker processes over feature chunks; results do not depend on it.
    chunk_size
        Features per chunk (default: chosen from the model size); results do not depend on it.
    copy
        Return a modified copy instead of writing into ``adata``.
    progress
        Show a progress bar (``None``: only for large inputs).
    nonfinite
        ``"raise"`` (default) on ±inf values, or ``"missing"`` to treat them as missing.
    drop_aliased
        Drop aliased fixed-effect columns with a warning instead of raising.
    weights_layer
        Layer of precision weights (observation variance ``σ²/w``), e.g. voom weights for
        log-CPM values.
    robust
        Huber M-estimation (iteratively reweighted REML, :func:`omixed.lmm.fit_robust`), as
        msqrob2 does: outlying observations get weights below 1, stored in
        ``layers[f"{key_added}_huber"]``.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``.  Written:

    ``var[f"{key_added}_criterion"]``, ``_converged``, ``_n_obs``, ``_n_iter``, ``_reason``,
    ``_notes``
        REML criterion (lme4 scale), convergence, observations used, Newton iterations, why a
        feature failed, adjustments made (dropped coefficients, variances fixed at 0).
    ``varm[f"{key_added}_beta"]``, ``_se``, ``_variance``, ``_theta``
        Fixed effects, standard errors, variance components (random terms + ``Residual``)
        and relative SDs, as DataFrames; NaN for features that were not fit.
    ``varm[f"{key_added}_blup_{term}"]``
        Conditional modes of each random term, features × levels.
    ``uns[key_added]``
        The model's specification (how its formula reads the data: factor levels, contrasts,
        random-term levels; read back with :func:`omixed.get.model`), formula, REML/ML, the
        layers used, terms and levels, fixed effects, version and counts of failures.

    A fit replaces whatever was stored under ``key_added`` before, and everything derived from
    that earlier fit (corrected layers, variance partition, tests).

    Examples
    --------
    >>> import omixed
    >>> adata = omixed.datasets.example()
    >>> omixed.tl.fit(adata, "~ condition + (1|batch) + (1|donor)", progress=False)
    >>> adata.varm["lmm_variance"].columns.tolist()
    ['batch', 'donor', 'Residual']
    """
    _fitstore.check_key(key_added)
    adata = adata.copy() if copy else adata
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"adata is empty ({adata.n_obs} samples × {adata.n_vars} features)")
    for name, index in (("sample", adata.obs_names), ("feature", adata.var_names)):
        if not index.is_unique:
            dup = index[index.duplicated()].unique()[:5].tolist()
            raise ValueError(f"duplicated {name} names, e.g. {dup}; make them unique first")
    # A backed AnnData is read chunk by chunk by the engine, never all at once.
    Y = adata.X if adata.isbacked and layer is None else get_matrix(adata, layer)
    options = {
        "reml": reml,
        "n_jobs": n_jobs,
        "chunk_size": chunk_size,
        "feature_names": adata.var_names,
        "progress": progress,
        "nonfinite": nonfinite,
        "drop_aliased": drop_aliased,
        "weights": None if weights_layer is None else get_matrix(adata, weights_layer),
    }
    if robust:
        res, huber = lmm.fit_robust(Y, adata.obs, formula, **options)
    else:
        res = lmm.fit(Y, adata.obs, formula, **options)
    params = {"layer": layer or "", "weights_layer": weights_layer or "", "robust": bool(robust)}
    _fitstore.write(adata, res, key=key_added, params=params)
    if robust:
        adata.layers[f"{key_added}_huber"] = huber
    warn_failures(res, key_added)
    return adata if copy else None


def warn_failures(res: lmm.LMMResult, key: str) -> None:
    """One warning listing why features could not be fit, if any could not."""
    failures = res.reason[res.reason != ""].value_counts()
    if len(failures):
        summary = "; ".join(f"{reason} ({count})" for reason, count in failures.items())
        warnings.warn(
            f"{int((~res.converged).sum())} of {res.n_features} features were not fit and are "
            f"left out of later steps — {summary} (see var['{key}_reason'])",
            UserWarning,
            stacklevel=3,
        )
