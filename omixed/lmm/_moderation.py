"""Empirical Bayes moderation of residual variances, as limma's ``squeezeVar`` (Smyth 2004).

Each feature's residual variance ``s²_i`` on ``d_i`` degrees of freedom is modelled as
``s²_i ~ s₀² F(d_i, d₀)``; the prior ``(d₀, s₀²)`` is estimated from all features and each
variance is replaced by its posterior mean ``s̃²_i = (d_i s²_i + d₀ s₀²)/(d_i + d₀)``.

Two estimators of the prior, as limma has them (``squeezeVar(legacy=)``):

* equal ``d_i`` (e.g. a linear model on complete data): limma's moment estimator
  (``fitFDist``), which matches its ``legacy = TRUE`` results.
* unequal ``d_i`` (mixed models on data with missing values: msqrob2's effective residual df,
  ``RSS/σ̂²``, spread from near 0 to ``n − p``): limma's weighted maximum likelihood
  (``fitFDistUnequalDF1``, Smyth & Chen 2024).  Each feature enters with weight ``1/ψ'(d_i/2)``,
  so variances on a fraction of a degree of freedom count for little.  The moment estimator is
  dominated by exactly those features — their ``ψ'(d_i/2)`` terms exceed the spread of
  ``log s²`` — and returns ``d₀ = ∞`` (one common variance for every feature) on real data;
  the likelihood never does (``d₀`` is searched in ``(2, 9998)``).

``robust=True`` adds limma's protection against outlying variances: features whose variance
is extreme for the fitted prior (two-sided, BH) are down-weighted and the prior refitted, and
features with outlyingly large variances get a smaller prior df of their own.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import special

__all__ = ["SqueezedVar", "squeeze_var", "trigamma_inverse"]

_MIN_DF = 0.01  # limma: smaller df carry no information about the prior
_D2_RANGE = (0.5, 0.9998)  # the search range of d₀/2 as d/(1 + d), limma's
_OUTLIER_FDR = 0.3


class SqueezedVar(NamedTuple):
    """limma's ``squeezeVar`` result.

    ``var_post`` (posterior variances), ``var_prior`` (``s₀²``), ``df_prior`` (``d₀``, a number,
    or one per feature with ``robust=True``) and ``n_prior`` (how many features informed it).
    """

    var_post: np.ndarray
    var_prior: float
    df_prior: float | np.ndarray
    n_prior: int = 0


def trigamma_inverse(x: float) -> float:
    """Solve ``ψ'(y) = x`` for ``y`` by limma's Newton iteration (``trigammaInverse``)."""
    if not x > 0:
        raise ValueError(f"trigamma_inverse needs x > 0, got {x}")
    if x > 1e7:
        return 1.0 / np.sqrt(x)
    if x < 1e-6:
        return 1.0 / x
    # 1/ψ'(y) is convex, nearly linear and > y − 1/2, so Newton on it converges monotonically.
    y = 0.5 + 1.0 / x
    for _ in range(50):
        tri = special.polygamma(1, y)
        step = tri * (1.0 - tri / x) / special.polygamma(2, y)
        y += step
        if -step / y < 1e-8:
            break
    return float(y)


def _log_minus_digamma(a: np.ndarray | float) -> np.ndarray | float:
    """``log(a) − ψ(a)``, the bias of ``log`` of a χ²_{2a}/2a variable."""
    return np.log(a) - special.digamma(a)


def _moments(x: np.ndarray, d: np.ndarray) -> tuple[float, float]:
    """limma's moment estimator (``fitFDist``): ``(s₀², d₀)``; ``d₀ = ∞`` without extra spread."""
    median = np.median(x)
    x = np.maximum(x, 1e-5 * (median if median > 0 else 1.0))  # limma's offset of zeros
    e = np.log(x) - special.digamma(d / 2.0) + np.log(d / 2.0)
    excess = e.var(ddof=1) - special.polygamma(1, d / 2.0).mean()
    if not excess > 0:
        return float(x.mean()), np.inf
    df_prior = 2.0 * trigamma_inverse(excess)
    return float(np.exp(e.mean() + special.digamma(df_prior / 2.0) - np.log(df_prior / 2.0))), (
        df_prior
    )


def _likelihood(x: np.ndarray, d: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """Weighted maximum likelihood of ``(s₀², d₀)`` for unequal df (limma's Smyth & Chen 2024).

    ``s₀²`` follows from ``d₀`` through the weighted mean of the bias-corrected ``log s²``.
    """
    from scipy import optimize  # loaded when used: it brings scipy.stats (0.3-0.5 s)

    informative = (x > 0) & (weights > 0)
    xpos = np.maximum(x, 1e-12 * np.median(x[informative]))
    d1 = d / 2.0
    w = weights / special.polygamma(1, d1)
    e = np.log(xpos) + _log_minus_digamma(d1)
    mean = np.sum(w * e) / np.sum(w)

    def minus_twice_loglik(par: float) -> float:
        d2 = par / (1.0 - par)
        scaled = d2 * np.exp(mean - _log_minus_digamma(d2))  # d₀/2 · s₀²
        terms = (
            -(d1 + d2) * np.log1p(d1 * xpos / scaled)
            - d1 * np.log(scaled)
            + special.gammaln(d1 + d2)
            - special.gammaln(d2)
        )
        return float(-2.0 * np.sum(weights * terms))

    best = optimize.minimize_scalar(
        minus_twice_loglik, bounds=_D2_RANGE, method="bounded", options={"xatol": 1e-10}
    )
    d2 = best.x / (1.0 - best.x)
    return float(np.exp(mean - _log_minus_digamma(d2))), float(2.0 * d2)


def _robust(
    x: np.ndarray, d: np.ndarray, weights: np.ndarray, scale: float, df2: float
) -> tuple[float, float | np.ndarray]:
    """limma's robust refit: outlying variances down-weighted, large ones given their own d₀."""
    from scipy import stats  # loaded when used: 0.3-0.5 s to import

    F = x / scale
    right = stats.f.sf(F, d, df2)
    left = stats.f.cdf(F, d, df2)
    two_sided = np.minimum(2.0 * np.minimum(left, right), 1.0)
    fdr = np.ones_like(two_sided)
    fdr[weights > 0] = stats.false_discovery_control(two_sided[weights > 0], method="bh")
    fdr[fdr > _OUTLIER_FDR] = 1.0
    if fdr.min() == 1.0:
        return scale, df2
    scale, df2 = _likelihood(x, d, weights * fdr)
    # Right outliers (variances too large for the prior) get a smaller prior df: the chance
    # that a variance is an outlier, from a QQ comparison of its right tail probability.
    right = stats.f.sf(x / scale, d, df2)
    n = right.size
    uniform = (n - stats.rankdata(x / scale) + 0.5) / n
    not_outlier = np.minimum(right / uniform, 1.0)
    if not_outlier.min() == 1.0:
        return scale, df2
    worst = int(np.argmin(right))
    if right[worst] == 0.0:
        df_outlier = 0.0
    else:
        df_outlier = np.log(0.5) / np.log(right[worst]) * df2
        log_right = stats.f.logsf(x[worst] / scale, d[worst], df_outlier)
        df_outlier = np.log(0.5) / log_right * df_outlier
    shrunk = not_outlier * df2 + (1.0 - not_outlier) * df_outlier
    # Monotone in the right tail probability, as limma forces it.
    order = np.argsort(right, kind="stable")
    ordered = shrunk[order]
    running = np.cumsum(ordered) / np.arange(1, n + 1)
    lowest = int(np.argmin(running))
    ordered[: lowest + 1] = running[lowest]
    shrunk[order] = np.maximum.accumulate(ordered)
    return scale, shrunk


def squeeze_var(var, df, *, robust: bool = False, legacy: bool | None = None) -> SqueezedVar:
    """limma's ``squeezeVar``: empirical Bayes posterior variances (Smyth 2004).

    Parameters
    ----------
    var
        Sample variances, one per feature (NaN: no variance).
    df
        Their degrees of freedom (scalar or one per feature); entries with ``df < 0.01``, NaN
        or infinite variances do not inform the prior.
    robust
        Protect the prior against outlying variances (limma's ``robust = TRUE``); ``df_prior``
        is then one value per feature.
    legacy
        ``True``: limma's moment estimator; ``False``: its weighted likelihood; ``None``
        (default): the moment estimator when every df is equal, else the likelihood, as limma.

    Returns
    -------
    :class:`SqueezedVar`; ``var_post`` is ``s₀²`` for a feature without a variance.

    Examples
    --------
    >>> sq = squeeze_var([0.5, 1.0, 2.0, 0.9, 1.1], 4)
    >>> round(sq.df_prior, 3), round(sq.var_prior, 4)
    (inf, 1.1)
    """
    var = np.asarray(var, dtype=np.float64)
    df = np.broadcast_to(np.asarray(df, dtype=np.float64), var.shape)
    informs = np.isfinite(var) & (var > -1e-15) & np.isfinite(df) & (df >= _MIN_DF)
    n = int(informs.sum())
    if n == 0:
        raise ValueError("no finite variance with positive df to squeeze")
    x, d = np.maximum(var[informs], 0.0), df[informs]
    if n < 3:  # limma: no advantage from empirical Bayes with fewer than three variances
        return SqueezedVar(var.copy(), float(np.nanmean(x)), 0.0, n)
    if legacy is None:
        legacy = bool(np.all(d == d[0])) and not robust
    if legacy:
        scale, df_prior = _moments(x, d)
    else:
        scale, df_prior = _likelihood(x, d, np.ones_like(x))
        if robust:
            scale, shrunk = _robust(x, d, np.ones_like(x), scale, df_prior)
            if np.ndim(shrunk):
                df_prior = np.full(var.shape, float(np.max(shrunk)))
                df_prior[informs] = shrunk
            else:
                df_prior = shrunk
    prior = np.broadcast_to(df_prior, var.shape)
    with np.errstate(invalid="ignore"):
        post = np.where(
            np.isinf(prior), scale, (df * np.nan_to_num(var) + prior * scale) / (df + prior)
        )
    post = np.where(np.isfinite(var) | (df == 0), post, np.nan)
    return SqueezedVar(post, float(scale), df_prior, n)
