"""``tl.fit``: one mixed model per feature of an AnnData, results stored in var/varm/uns."""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import lmm
from .._utils import get_matrix

if TYPE_CHECKING:
    from anndata import AnnData


def fixed_term(column: str) -> str:
    """The formula term a fixed-effect column belongs to: ``condition[T.b]`` → ``condition``."""
    return re.sub(r"\[.*?\]", "", column)


def nested_terms(obs: pd.DataFrame, spec: lmm.ModelSpec) -> dict[str, list[str]]:
    """For each random term, the fixed factors it is nested in (each level sits in one level).

    Donors nested in condition are a normal design; a *batch* nested in condition means batch and
    biology cannot be separated: the condition coefficient then compares batches.
    """
    nested: dict[str, list[str]] = {}
    factors = sorted({fixed_term(c) for c in spec.fixed_names} - {"Intercept"})
    for term in spec.terms:
        for factor in factors:
            if factor not in obs.columns or obs[factor].nunique() < 2:
                continue
            per_level = pd.Series(obs[factor].to_numpy()).groupby(term.codes).nunique()
            if (per_level == 1).all():
                nested.setdefault(term.name, []).append(factor)
    return nested


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

    ``var[f"{key_added}_criterion"]``, ``_converged``, ``_n_obs``, ``_reason``, ``_notes``
        REML criterion (lme4 scale), convergence, observations used, why a feature failed,
        adjustments made (dropped coefficients, variances fixed at 0).
    ``varm[f"{key_added}_beta"]``, ``_se``, ``_variance``, ``_theta``
        Fixed effects, standard errors, variance components (random terms + ``Residual``)
        and relative SDs, as DataFrames.
    ``varm[f"{key_added}_blup_{term}"]``
        Conditional modes of each random term, features × levels.
    ``uns[key_added]``
        Formula, REML/ML, terms and levels, fixed effects, version and counts of failures.

    Examples
    --------
    >>> import omixed
    >>> adata = omixed.datasets.example()
    >>> omixed.tl.fit(adata, "~ condition + (1|batch) + (1|donor)", progress=False)
    >>> adata.varm["lmm_variance"].columns.tolist()
    ['batch', 'donor', 'Residual']
    """
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
        adata.layers[f"{key_added}_huber"] = huber
    else:
        res = lmm.fit(Y, adata.obs, formula, **options)
    spec = res.spec
    nested = nested_terms(adata.obs, spec)
    for term, factors in nested.items():
        for factor in factors:
            if adata.obs[factor].nunique() == spec.terms[spec.term_names.index(term)].n_levels:
                warnings.warn(
                    f"{term!r} is completely confounded with {factor!r} (one {term} level per "
                    f"{factor} level): the {term} variance and the {factor} effect cannot be told "
                    "apart; the fit attributes the between-level differences to the fixed effect",
                    UserWarning,
                    stacklevel=2,
                )
    store(adata, res, key_added=key_added, layer=layer, nested=nested, weights_layer=weights_layer)
    return adata if copy else None


def store(
    adata: AnnData,
    res: lmm.LMMResult,
    *,
    key_added: str,
    layer: str | None,
    nested: dict[str, list[str]] | None = None,
    weights_layer: str | None = None,
) -> None:
    """Write an engine result into ``adata`` under ``key_added`` (see :func:`fit`).

    ``nested`` is :func:`nested_terms` of the fit (for ``tl.correct``'s warning), when the
    result's rows are ``adata``'s samples.
    """
    from .. import __version__

    key = key_added
    adata.var[f"{key}_criterion"] = res.criterion.to_numpy()
    adata.var[f"{key}_converged"] = res.converged.to_numpy()
    adata.var[f"{key}_n_obs"] = res.n_obs.to_numpy()
    adata.var[f"{key}_reason"] = res.reason.astype(str).to_numpy()
    adata.var[f"{key}_notes"] = res.notes.astype(str).to_numpy()
    for name, table in (
        ("beta", res.beta),
        ("se", res.se),
        ("variance", res.variance),
        ("theta", res.theta),
    ):
        adata.varm[f"{key}_{name}"] = table.set_axis(adata.var_names)
    for term, table in res.blup.items():
        adata.varm[f"{key}_blup_{term}"] = table.set_axis(adata.var_names)
    failures = res.reason[res.reason != ""].value_counts()
    adata.uns[key] = {
        "formula": res.spec.formula,
        "reml": bool(res.reml),
        "layer": "" if layer is None else layer,
        "weights_layer": weights_layer or "",
        "nested_in": nested or {},
        "terms": {
            t.name: {"levels": list(t.levels), "group": list(t.group), "covariate": t.expr}
            for t in res.spec.terms
        },
        "fixed_effects": list(res.spec.fixed_names),
        "fixed_terms": sorted({fixed_term(c) for c in res.spec.fixed_names}),
        "omixed_version": __version__,
        "n_features": int(res.n_features),
        "n_converged": int(res.converged.sum()),
        "n_failed": int((~res.converged).sum()),
        "failures": {str(k): int(v) for k, v in failures.items()},
    }
    if len(failures):
        summary = ", ".join(f"{v} × {k}" for k, v in failures.items())
        warnings.warn(
            f"{int((~res.converged).sum())} of {res.n_features} features were not fit: {summary} "
            f"(see var['{key}_reason'])",
            UserWarning,
            stacklevel=3,
        )


def fitted_design(adata: AnnData, key: str) -> lmm.ModelSpec:
    """The model specification of a stored fit, rebuilt from ``obs`` (same fixed columns)."""
    info = fit_info(adata, key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # already reported when the fit ran
        return lmm.build_spec(adata.obs, info["formula"], drop_aliased=True)


def fit_info(adata: AnnData, key: str) -> dict:
    """The ``uns`` record of a fit, with a clear error when there is none."""
    if key not in adata.uns or "formula" not in adata.uns[key]:
        raise KeyError(
            f"no fit stored under uns[{key!r}]; run omixed.tl.fit(adata, ..., key_added={key!r})"
        )
    return adata.uns[key]


def design_codes(obs: pd.DataFrame, group: list[str]) -> np.ndarray:
    """Level labels of a grouping factor for every sample (interactions joined by ':')."""
    labels = obs[group[0]].astype(str).to_numpy()
    for col in group[1:]:
        labels = np.char.add(np.char.add(labels.astype(str), ":"), obs[col].astype(str).to_numpy())
    return labels.astype(str)
