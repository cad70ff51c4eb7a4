"""Removing fitted effects from data: BLUPs, unshrunk GLS effects and ComBat's empirical Bayes.

Notation, for one feature (every function is vectorized over features):
``y = Xβ + Bγ + Zu + e``, where ``B`` holds the 0/1 indicators of the K levels of the term being
removed (the batch) and ``γ`` their effects, ``Z``/``u ~ N(0, σ²ΛΛ')`` are the other random
terms and ``e ~ N(0, σ²I)``.  With batch taken as fixed, ``V = Var(y) = σ²(I + ZΛΛ'Z')``.

Three estimates of a removed random term's effects (see ``omixed.tl.correct`` for when to use
which): ``"blup"`` (the fit's conditional modes), ``"full"`` (:func:`unshrunk_effects`, the GLS
effects with the term refit as a sum-coded fixed factor) and ``"eb"`` (:func:`empirical_bayes`,
ComBat's prior on those).  A fixed term's contribution is ``X_t β̂_t``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from .._choices import CORRECTION_METHODS
from ._fit import fit
from ._result import LMMResult
from ._spec import ModelSpec, Specification

__all__ = [
    "CORRECTION_METHODS",
    "Removal",
    "check_removal",
    "removed_contribution",
]

_CHUNK_BYTES = 64 * 2**20


class Removal(NamedTuple):
    """What a correction removes: random terms and fixed terms (formula terms), in order."""

    random: list[str]
    fixed: list[str]


def check_removal(
    spec: Specification,
    remove: Sequence[str],
    *,
    method: str = "eb",
    scale: bool = False,
) -> Removal:
    """Check that ``remove`` can be removed from a fit of ``spec`` with ``method``.

    Every correction path (``tl.correct``, the command line, the workflow's configuration
    check) calls this, so they accept and refuse the same requests with the same messages.

    Raises
    ------
    ValueError
        A term is not in the model (the model's terms are listed), is given twice, is the
        intercept, is a random slope with a method that re-estimates intercepts, or ``scale``
        is asked for with a method or number of terms it does not support.
    """
    if isinstance(remove, str):
        remove = [remove]
    remove = list(remove)
    if not remove:
        raise ValueError("nothing to remove: name at least one term (e.g. remove=['batch'])")
    if method not in CORRECTION_METHODS:
        raise ValueError(f"method must be one of {CORRECTION_METHODS}, got {method!r}")
    twice = sorted({t for t in remove if remove.count(t) > 1})
    if twice:
        raise ValueError(f"remove lists {twice} more than once; each term is removed once")
    random_terms = list(spec.term_names)
    fixed_terms = [t for t in spec.fixed_terms() if t != "Intercept"]
    if "Intercept" in remove:
        raise ValueError("the intercept is the data's level, not an effect to remove")
    unknown = [t for t in remove if t not in random_terms and t not in fixed_terms]
    if unknown:
        raise ValueError(
            f"cannot remove {unknown}: not in the fit {spec.formula!r} (random terms: "
            f"{random_terms}, fixed terms: {fixed_terms})"
        )
    random = [t for t in remove if t in random_terms]
    slopes = [t for t in random if not spec.term(t).is_intercept]
    if slopes and method != "blup":
        raise ValueError(
            f"method={method!r} re-estimates random intercepts; {slopes} are random slopes: "
            "remove them with method='blup'"
        )
    if scale and (method != "eb" or len(random) != 1):
        raise ValueError(
            "scale=True needs method='eb' and exactly one random term in remove, got "
            f"method={method!r} and random terms {random}"
        )
    return Removal(random, [t for t in remove if t not in random])


def nested_warning(spec: Specification, term: str) -> str | None:
    """Why removing ``term`` cannot separate it from biology, if its levels sit in a factor's."""
    factors = list(spec.nested_in.get(term, []))
    if not factors:
        return None
    return (
        f"{term!r} is nested in {factors}: its levels differ in {factors} too, so part of that "
        f"biology sits in the fixed effect estimated between {term} levels and removing "
        f"{term!r} cannot separate them"
    )


def per_sample(effects: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Samples × features matrix of features × levels ``effects`` at each sample's level code.

    0 where the code is -1 (a level absent from the fit: no correction) or the effect is NaN.
    """
    out = np.zeros((codes.size, effects.shape[0]))
    known = codes >= 0
    out[known] = np.nan_to_num(effects[:, codes[known]].T)
    return out


def blup_contribution(result: LMMResult, design: ModelSpec, term: str) -> np.ndarray:
    """Samples × features ``Z_g b̂_g`` of random ``term`` (0 where a BLUP is NaN).

    A BLUP is NaN when the feature was not fit, or the sample's level was never observed in
    that feature (then the feature has no value in any sample of that level).
    """
    spec_term = next(t for t in design.terms if t.name == term)
    contribution = per_sample(result.blup[term].to_numpy(), spec_term.codes)
    return contribution * spec_term.row_values()[:, None]  # a slope's effect scales with x


def fixed_contribution(result: LMMResult, design: ModelSpec, term: str) -> np.ndarray:
    """Samples × features ``X_t β̂_t`` of the fixed formula term ``t`` (e.g. a covariate)."""
    cols = result.spec.fixed_terms()[term]
    beta = result.beta.to_numpy()[:, cols]
    return design.X[:, cols] @ np.nan_to_num(beta).T


class Unshrunk(NamedTuple):
    """GLS level effects of a term with the other random terms kept random (all per feature).

    ``gamma``, ``var``: features × levels effects ``γ̂`` (sum to zero over the observed levels)
    and their sampling variances, NaN for levels not observed and features not fit.
    ``fitted``: samples × features ``Xβ̂`` of the other fixed effects.  ``sd``: the SD of the data
    around ``Xβ̂ + Bγ̂``, ``sqrt(σ² + Σ other variance components)``.  ``codes``: each sample's
    level (-1 if absent from the fit).  ``converged``: whether the refit converged (features
    whose variance components ran to a bound are corrected but do not inform a prior).
    """

    gamma: np.ndarray
    var: np.ndarray
    fitted: np.ndarray
    sd: np.ndarray
    codes: np.ndarray
    converged: np.ndarray


def unshrunk_effects(
    result: LMMResult,
    Y: np.ndarray,
    design: ModelSpec,
    term: str,
    weights: np.ndarray | None = None,
) -> Unshrunk:
    """Estimate the level effects of random ``term`` without shrinkage.

    The model is refit with ``term`` as a fixed factor (sum-to-zero coding) and the other
    random terms random — each as a scalar term, so ``(x||g)`` keeps its slope when the
    intercept goes — for REML variance components of those; the effects and their sampling
    variances are the GLS solution at these components (:func:`gls_effects`).  This is limma's
    ``removeBatchEffect`` with crossed donors/samples handled by the mixed model.  The refit is
    built from the evaluated ``design`` (columns and level codes), so it does not depend on
    the order of the samples.
    """
    removed = next(t for t in design.terms if t.name == term)
    codes = removed.codes
    levels = removed.n_levels
    B = (codes[:, None] == np.arange(levels)).astype(float)
    # Sum-to-zero coding over the levels present in these rows.
    present = np.flatnonzero(B.any(axis=0))
    coded = B[:, present[:-1]] - B[:, present[-1:]]
    columns = {f"x{j}": design.X[:, j] for j in range(design.X.shape[1])}
    columns |= {f"b{j}": coded[:, j] for j in range(coded.shape[1])}
    others = [t for t in design.terms if t.name != term]
    parts = []
    for i, other in enumerate(others):
        columns[f"g{i}"] = pd.Categorical(other.codes)
        if other.is_intercept:
            parts.append(f"(1|g{i})")
        else:
            columns[f"s{i}"] = other.row_values()
            parts.append(f"(0 + s{i}|g{i})")
    fixed_names = [c for c in columns if c[0] in "xb"]
    formula = "~ 0 + " + " + ".join([*fixed_names, *parts])
    with warnings.catch_warnings():
        # Levels aliased with the fixed effects (a term nested in a factor) are dropped from the
        # refit by design; tl.correct has already said why removing such a term is limited.
        warnings.simplefilter("ignore", UserWarning)
        refit = fit(
            Y, pd.DataFrame(columns), formula, reml=result.reml, weights=weights, drop_aliased=True
        )
    X = design.X
    Z = [t.indicator().toarray() for t in others]
    term_of = np.repeat(np.arange(len(Z)), [z.shape[1] for z in Z])
    Z = np.hstack([np.zeros((design.n_rows, 0)), *Z])
    sigma2 = refit.variance["Residual"].to_numpy()
    theta = refit.theta[[f"g{i}" if t.is_intercept else f"g{i}.s{i}" for i, t in enumerate(others)]]
    gamma, var, beta = gls_effects(Y, X, B, Z, term_of, theta.to_numpy(), sigma2, weights)
    sd = np.sqrt(refit.variance.to_numpy().sum(axis=1))
    fitted = X @ np.nan_to_num(beta).T
    return Unshrunk(gamma, var, fitted, sd, codes, refit.converged.to_numpy(dtype=bool))


def gls_effects(
    Y: np.ndarray,
    X: np.ndarray,
    B: np.ndarray,
    Z: np.ndarray,
    term_of: np.ndarray,
    theta: np.ndarray,
    sigma2: np.ndarray,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GLS effects ``γ̂`` of the indicator columns ``B`` and ``β̂`` of ``X``, per feature of ``Y``.

    On each feature's observed rows, with ``Λ = diag(θ[term_of])``,
    ``P = V⁻¹ − V⁻¹X(X'V⁻¹X)⁺X'V⁻¹`` absorbs ``X``, ``γ̂ = (B'PB)⁺B'Py``, ``Var(γ̂) = (B'PB)⁺``
    and ``β̂ = (X'V⁻¹X)⁺X'V⁻¹(y − Bγ̂)``.  With an intercept in ``X``, ``B'PB`` is singular along
    the all-ones vector and the pseudo-inverse picks the solution with ``Σ γ̂ = 0`` over the
    observed levels (sum-to-zero coding).  ``V⁻¹`` enters through Woodbury,
    ``σ²V⁻¹ = I − ZΛ(I + ΛZ'ZΛ)⁻¹ΛZ'``, applied to the cross-products of ``[Z X B y]``.

    Precision ``weights`` (rows × features) make the residual covariance ``σ² diag(1/w)``.

    Returns ``γ̂`` and the diagonal of ``Var(γ̂)`` (features × levels; NaN for a level without
    observations and a feature with non-finite θ or σ²) and ``β̂`` (features × columns of ``X``).
    """
    n, m = Y.shape
    q, p, k = Z.shape[1], X.shape[1], B.shape[1]
    M = np.hstack([Z, X, B])
    D = M.shape[1] + 1
    gamma, var, beta = np.full((m, k), np.nan), np.full((m, k), np.nan), np.full((m, p), np.nan)
    ok = np.flatnonzero(np.isfinite(sigma2) & np.isfinite(theta).all(axis=1))
    xs, bs = slice(0, p), slice(p, p + k)
    step = max(1, _CHUNK_BYTES // (8 * (n + 4 * D) * D))
    for rows in np.array_split(ok, -(-ok.size // step)) if ok.size else []:
        Yt = Y[:, rows].T
        W = np.isfinite(Yt).astype(float)
        if weights is not None:
            W = np.where(W > 0, weights[:, rows].T, 0.0)
        MY = np.concatenate(
            [np.broadcast_to(M, (rows.size, n, D - 1)), np.nan_to_num(Yt)[:, :, None]], axis=2
        )
        G = (MY * W[:, :, None]).transpose(0, 2, 1) @ MY
        Q = G[:, q:, q:]  # σ² [X B y]'V⁻¹[X B y] after absorbing the other random effects
        if q:
            lam = theta[rows][:, term_of]
            omega = lam[:, :, None] * G[:, :q, :q] * lam[:, None, :] + np.eye(q)
            ZR = lam[:, :, None] * G[:, :q, q:]
            Q = Q - ZR.transpose(0, 2, 1) @ np.linalg.solve(omega, ZR)
        Qxx = pinv_psd(Q[:, xs, xs], Q[:, xs, xs])
        QbxQ = Q[:, bs, xs] @ Qxx
        S = pinv_psd(Q[:, bs, bs] - QbxQ @ Q[:, xs, bs], Q[:, bs, bs])
        g = np.einsum("fij,fj->fi", S, Q[:, bs, -1] - np.einsum("fij,fj->fi", QbxQ, Q[:, xs, -1]))
        # A level is estimable when its effect has sampling variance: it is observed and not
        # aliased with the fixed effects on this feature's rows (e.g. batch = condition there).
        v = np.diagonal(S, axis1=1, axis2=2)
        gamma[rows] = np.where(v > 0, g, np.nan)
        var[rows] = np.where(v > 0, sigma2[rows, None] * v, np.nan)
        resid = Q[:, xs, -1] - np.einsum("fij,fj->fi", Q[:, xs, bs], g)
        beta[rows] = np.einsum("fij,fj->fi", Qxx, resid)
    return gamma, var, beta


def pinv_psd(A: np.ndarray, reference: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """Pseudo-inverse of a stack of symmetric PSD matrices, by eigendecomposition.

    Eigenvalues below ``rtol`` times the largest diagonal entry of ``reference`` (the same
    matrix before a Schur complement) count as zero: a direction that the complement removed
    entirely leaves only rounding noise, which a cutoff relative to ``A`` itself would keep.
    """
    w, U = np.linalg.eigh(A)
    cut = rtol * np.abs(np.diagonal(reference, axis1=1, axis2=2)).max(axis=1, initial=0.0)
    keep = w > cut[:, None]
    inv = np.where(keep, 1.0 / np.where(keep, w, 1.0), 0.0)
    return (U * inv[:, None, :]) @ U.transpose(0, 2, 1)


class Prior(NamedTuple):
    """ComBat's prior per level, in units of each feature's SD ``sd`` (see :class:`Unshrunk`).

    Location ``γ ~ N(gamma_bar, tau2)``; scale ``δ² ~ InvGamma(shape, rate)`` (NaN when the
    scale is not adjusted; ``shape = ∞`` is a point mass at ``rate``).
    """

    gamma_bar: np.ndarray
    tau2: np.ndarray
    shape: np.ndarray
    rate: np.ndarray


def moments(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance (ddof 1) per level (column) over the features with a finite value.

    The variance is ∞ for a level with fewer than two values (nothing to pool).
    """
    seen = np.isfinite(values)
    count = seen.sum(axis=0)
    mean = np.where(seen, values, 0.0).sum(axis=0) / np.maximum(count, 1)
    ss = (np.where(seen, values - mean, 0.0) ** 2).sum(axis=0)
    var = np.where(count >= 2, ss / np.maximum(count - 1, 1), np.inf)
    return np.where(count > 0, mean, np.nan), var


def posterior_mean(
    g: np.ndarray, s2: np.ndarray, gamma_bar: np.ndarray, tau2: np.ndarray
) -> np.ndarray:
    """``γ* = (τ²γ̂ + s²γ̄)/(τ² + s²)``, computed as ``γ̂ + w(γ̄ − γ̂)``, ``w = s²/(τ² + s²)``.

    ``τ² = ∞`` leaves ``γ̂`` unchanged; ``τ² = 0`` gives ``γ̄``.
    """
    total = np.broadcast_to(tau2 + s2, np.broadcast_shapes(np.shape(g), np.shape(s2)))
    w = np.divide(s2, total, out=np.zeros(total.shape), where=np.isfinite(total) & (total > 0))
    return g + w * (gamma_bar - g)


def scale_prior(d2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ComBat's inverse-gamma prior of ``δ²`` per level, by moments of ``δ̂²`` over features.

    With mean ``m`` and variance ``v``: shape ``a = (2v + m²)/v``, rate ``b = (mv + m³)/v``.
    Without spread (``v = 0`` or a single feature) the prior is a point mass at ``m``
    (``a = ∞``, ``b = m``).
    """
    m, v = moments(d2)
    spread = np.isfinite(v) & (v > 0)
    safe = np.where(spread, v, 1.0)
    return np.where(spread, 2.0 + m**2 / safe, np.inf), np.where(spread, m + m**3 / safe, m)


def posterior_scale(
    g: np.ndarray,
    s2: np.ndarray,
    prior: Prior,
    n: np.ndarray,
    sum1: np.ndarray,
    sum2: np.ndarray,
    d2: np.ndarray,
    *,
    tol: float = 1e-4,
    max_iter: int = 1000,
) -> tuple[np.ndarray, np.ndarray]:
    """ComBat's joint location and scale posterior (``it.sol``), iterated to its fixed point.

    ``n``, ``sum1 = Σz``, ``sum2 = Σz²`` are taken over a level's observed samples of the
    standardized data ``z``.  Starting from ``δ*² = δ̂²`` (``d2``), repeat
    ``γ* = posterior_mean(γ̂, s²δ*², γ̄, τ²)`` and ``δ*² = (b + ½Σ(z − γ*)²)/(n/2 + a − 1)``
    until no value changes by more than ``tol`` times ``max(|value|, 1)`` (ComBat stops on the
    relative change alone, which never settles for an effect near 0).
    """
    a, b = prior.shape, prior.rate
    finite_a = np.isfinite(a)
    g_new, d_new = g, d2
    for _ in range(max_iter):
        g_old, d_old = g_new, d_new
        g_new = posterior_mean(g, s2 * d_old, prior.gamma_bar, prior.tau2)
        ss = np.maximum(sum2 - 2 * g_new * sum1 + n * g_new**2, 0.0)
        d_new = np.where(finite_a, (b + ss / 2) / (n / 2 + np.where(finite_a, a, 2.0) - 1), b)
        old = np.concatenate([g_old, d_old], axis=1)
        step = np.abs(np.concatenate([g_new, d_new], axis=1) - old)
        if np.nanmax(step / np.maximum(np.abs(old), 1.0), initial=0.0) <= tol:
            break
    return g_new, d_new


def empirical_bayes(Y: np.ndarray, est: Unshrunk, *, scale: bool) -> tuple[np.ndarray, Prior]:
    """Samples × features contribution of the removed term under ComBat's prior, and the prior.

    See :func:`correct` (``method="eb"``) for the model.
    """
    g, s2 = est.gamma / est.sd[:, None], est.var / est.sd[:, None] ** 2
    gamma_bar, tau2 = moments(g[est.converged])
    if not scale:
        none = np.full_like(tau2, np.nan)
        post = posterior_mean(g, s2, gamma_bar, tau2) * est.sd[:, None]
        return per_sample(post, est.codes), Prior(gamma_bar, tau2, none, none)
    B = (est.codes[:, None] == np.arange(g.shape[1])).astype(float)
    observed = np.isfinite(Y)
    z = np.where(observed, (Y - est.fitted) / est.sd, 0.0)  # NaN sd (not fit): no correction
    n, sum1, sum2 = (B.T @ observed).T, (B.T @ z).T, (B.T @ z**2).T
    two = np.isfinite(g) & (n >= 2)  # δ̂² needs two values of the level
    d2 = np.where(two, (sum2 - sum1**2 / np.where(two, n, 1)) / np.where(two, n - 1, 1), np.nan)
    shape, rate = scale_prior(d2[est.converged])
    prior = Prior(gamma_bar, tau2, shape, rate)
    start = np.where(np.isfinite(d2), d2, np.broadcast_to(rate / (shape - 1), d2.shape))
    post, d_post = posterior_scale(g, s2, prior, n, sum1, sum2, start)
    # y* = Xβ̂ + sd·(z − γ*)/δ*: the part removed is y − y* = sd·(z − (z − γ*)/δ*).
    delta = np.sqrt(np.where(np.isfinite(post) & (d_post > 0), d_post, 1.0))
    spread = per_sample(delta, est.codes)  # 0 for a sample whose level is not in the fit
    z_star = (z - per_sample(post, est.codes)) / np.where(spread > 0, spread, 1.0)
    known = per_sample(np.isfinite(post).astype(float), est.codes) > 0
    return np.where(known, (z - z_star) * np.nan_to_num(est.sd), 0.0), prior


def removed_contribution(
    result: LMMResult,
    Y: np.ndarray,
    design: ModelSpec,
    term: str,
    *,
    method: str,
    scale: bool = False,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, dict | None]:
    """Samples × features part of ``Y`` that ``term`` contributes, and the ``"eb"`` prior.

    ``design`` is ``result.spec`` evaluated on ``Y``'s rows.  Features that did not converge
    contribute 0 (they stay unchanged).
    """
    if term not in result.spec.term_names:
        contribution, prior = fixed_contribution(result, design, term), None
    elif method == "blup":
        contribution, prior = blup_contribution(result, design, term), None
    else:
        est = unshrunk_effects(result, Y, design, term, weights)
        if method == "full":
            contribution, prior = per_sample(est.gamma, est.codes), None
        else:
            contribution, hyper = empirical_bayes(Y, est, scale=scale)
            kept = hyper._asdict() if scale else {"gamma_bar": hyper.gamma_bar, "tau2": hyper.tau2}
            prior = {"levels": list(result.spec.term(term).labels), **kept}
    contribution[:, ~result.converged.to_numpy(dtype=bool)] = 0.0
    return contribution, prior
