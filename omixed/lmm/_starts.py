"""Starting values for θ from moment estimates, computed from the cross-products alone.

Newton converges in a few steps from a point near the optimum, and the optimum's θ differs a
lot between terms (a peptide term often has 3-5× the relative SD of a batch term), so one
common start for every term costs iterations.  Each term ``g`` gets a one-way random-effects
ANOVA on the ordinary least-squares residuals ``r = y − Xβ̂`` (Searle, Casella & McCulloch
1992, section 3.6)::

    SSB_g = Σ_l S_l² / c_l,     S_l = Σ_{i∈l} w_i r_i = (A_gy − A_gX β̂)_l,   c_l = (A_gg)_ll
    σ̂²_g  = max(0, SSB_g / (L_g − 1) − σ̂²) / n₀,   n₀ = (n − Σ_l c_l² / n) / (L_g − 1)

with ``L_g`` observed levels, and two corrections for the other terms:

* a term nested in a coarser one (samples within batches) uses its levels' variation within
  the coarser levels, ``SSB_g − SSB_h`` on ``L_g − L_h`` df (:func:`_unnest`);
* the noise level ``σ̂²`` is the residual variance of the model with every term fixed (the
  first step of Henderson's method III), ``RSS_full / (n − rank[Z X])``: a one-way within
  variance would also hold the terms crossed with ``g`` (peptides within a sample), which the
  level means average out.  The first term is projected out in closed form and the rest
  factored once; where the rest is too large to factor per feature, each one-way within
  variance stands in.

The start is ``θ_g = σ̂_g / σ̂``.  Everything is per feature from ``A`` (no pass over the data).
"""

from __future__ import annotations

import numpy as np

from ._objective import Layout, _batched_cholesky, reduce

__all__ = ["moment_starts"]

_FULL_LIMIT = 96  # largest system (after the first term) factored for the residual variance


def moment_starts(A: np.ndarray, layout: Layout, n_obs: np.ndarray) -> np.ndarray:
    """``(m, n_theta)`` moment-based starting values (elimination order) from ``A``.

    ``A`` holds the augmented cross-products ``[Z X y]'W[Z X y]`` laid out as ``layout`` says,
    ``n_obs`` the observations per feature.  Features whose moments are not defined (e.g. no
    degrees of freedom within levels) start at 1.
    """
    m, k, q, p = A.shape[0], layout.n_theta, layout.q, layout.p
    fixed = slice(q, q + p)
    # OLS β̂ from X'WX; a tiny ridge keeps dropped (zeroed, unit-diagonal) columns harmless.
    beta = np.linalg.solve(A[:, fixed, fixed] + 1e-12 * np.eye(p), A[:, fixed, -1:])[..., 0]
    rss = A[:, -1, -1] - np.einsum("mi,mi->m", A[:, fixed, -1], beta)
    counts = np.diagonal(A[:, :q, :q], axis1=1, axis2=2)
    n = np.asarray(n_obs, dtype=np.float64)
    offsets = np.concatenate([[0], np.cumsum(layout.sizes)]).astype(int)
    ssb, levels, n0, within = (np.empty((m, k)) for _ in range(4))
    with np.errstate(divide="ignore", invalid="ignore"):
        for g in range(k):
            cols = slice(offsets[g], offsets[g + 1])
            c = counts[:, cols]
            sums = A[:, cols, -1] - np.einsum("mlj,mj->ml", A[:, cols, fixed], beta)
            seen = c > 0
            levels[:, g] = seen.sum(axis=1)
            ssb[:, g] = np.where(seen, sums**2 / np.where(seen, c, 1.0), 0.0).sum(axis=1)
            within[:, g] = (rss - ssb[:, g]) / (n - levels[:, g] - p + 1)
            n0[:, g] = (n - (c**2).sum(axis=1) / n) / (levels[:, g] - 1)
        ssb, df = _unnest(ssb, levels, A, counts, offsets)
        if A.shape[1] - (layout.sizes[0] if k else 0) <= _FULL_LIMIT:
            # The residual variance, not each one-way within variance: those also hold the
            # terms crossed with g (peptides within a sample), which level means average out.
            residual = _residual_variance(A, layout, n)
            noise = residual[:, None]
        else:  # too large to factor per feature: the one-way within variances
            residual = np.min(np.where(within > 0, within, np.inf), axis=1)
            noise = within
        between = np.maximum(ssb / df - noise, 0.0) / n0
        theta = np.sqrt(between / residual[:, None])
    return np.where(np.isfinite(theta), theta, 1.0)


def _unnest(
    ssb: np.ndarray, levels: np.ndarray, A: np.ndarray, counts: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Between-level sums of squares and their df, of nested terms within the coarser term.

    The means of a nested term's levels (samples) also vary with the coarser term's effects
    (batches), so its one-way sum of squares holds both; the part within the coarser levels is
    ``SSB_g − SSB_h`` on ``L_g − L_h`` df (the coarser sums are sums of the nested ones).
    Nesting is read per feature off the observed cross-counts: every observed level of ``g``
    meets one level of ``h``, which has fewer (and at least two) observed levels; of several
    such ``h`` the finest (largest ``SSB_h``) is taken.
    """
    seen = counts > 0
    coarser = np.zeros_like(ssb)
    coarser_levels = np.ones_like(levels)
    for g in range(ssb.shape[1]):
        cg = slice(offsets[g], offsets[g + 1])
        for h in range(ssb.shape[1]):
            ch = slice(offsets[h], offsets[h + 1])
            if h == g:
                continue
            meets = (A[:, cg, ch] != 0).sum(axis=2)
            nested = (
                np.all(meets <= seen[:, cg], axis=1)
                & (levels[:, h] < levels[:, g])
                & (levels[:, h] >= 2)
                & (ssb[:, h] > coarser[:, g])
            )
            coarser[:, g] = np.where(nested, ssb[:, h], coarser[:, g])
            coarser_levels[:, g] = np.where(nested, levels[:, h], coarser_levels[:, g])
    return ssb - coarser, levels - coarser_levels


def _residual_variance(A: np.ndarray, layout: Layout, n: np.ndarray) -> np.ndarray:
    """``RSS / (n − rank)`` of the response on all columns of ``A`` (random terms as fixed).

    The first term's block is diagonal (distinct levels of one scalar term), so its columns
    are projected out in closed form; one Cholesky factor of the correlation-scaled rest gives
    its rank (pivots of aliased columns vanish) and the residual sum of squares.
    """
    red = reduce(A, Layout(layout.sizes, layout.p))  # by level
    d1 = red.counts
    rest = red.eliminated(np.where(d1 > 0, 1.0 / np.where(d1 > 0, d1, 1.0), 0.0))
    d = rest.shape[1] - 1
    # Scaled by the columns' own norms, so a column in the first term's span keeps a ~0 pivot.
    scale = np.sqrt(np.maximum(np.diagonal(red.A, axis1=1, axis2=2), 1e-300))
    corr = rest / scale[:, :, None] / scale[:, None, :]
    corr[:, np.arange(d), np.arange(d)] += 1e-9  # aliased columns get pivots ~3e-5, not 0
    pivots = np.diagonal(_batched_cholesky(corr)[0], axis1=1, axis2=2)  # NaN if it fails
    rank = (d1 > 0).sum(axis=1) + (pivots[:, :d] > 1e-3).sum(axis=1)
    return (pivots[:, -1] * scale[:, -1]) ** 2 / (n - rank)
