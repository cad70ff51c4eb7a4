"""Starting values for θ from moment estimates, computed from the cross-products alone.

Newton converges in a few steps from a point near the optimum, and the optimum's θ differs a
lot between terms (a peptide term often has 3-5× the relative SD of a batch term), so one
common start for every term costs iterations.  Each term ``g`` gets a one-way random-effects
ANOVA on the ordinary least-squares residuals ``r = y − Xβ̂``, ignoring the other terms
(Searle, Casella & McCulloch 1992, section 3.6)::

    SSB_g = Σ_l S_l² / c_l,     S_l = Σ_{i∈l} w_i r_i = (A_gy − A_gX β̂)_l,   c_l = (A_gg)_ll
    σ̂²_w,g = (RSS − SSB_g) / (n − L_g − p + 1)
    σ̂²_g  = max(0, SSB_g / (L_g − 1) − σ̂²_w,g) / n₀,   n₀ = (n − Σ_l c_l² / n) / (L_g − 1)

with ``L_g`` observed levels.  Those within-level variances still hold the other terms'
variance, so the residual variance comes from the model with every term fixed instead (the
first step of Henderson's method III): ``σ̂² = RSS_full / (n − rank[Z X])``, with the first
term projected out in closed form and one Cholesky factor of the rest (where that is small
enough; otherwise the smallest within-level variance).  The start is ``θ_g = σ̂_g / σ̂``.
Everything is per feature from ``A`` (no pass over the data); it is only a start, and the
optimizer also tries the usual ones.
"""

from __future__ import annotations

import numpy as np

from ._objective import Layout, _batched_cholesky

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
    between, within = np.empty((m, k)), np.empty((m, k))
    with np.errstate(divide="ignore", invalid="ignore"):
        for g in range(k):
            cols = slice(offsets[g], offsets[g + 1])
            c = counts[:, cols]
            sums = A[:, cols, -1] - np.einsum("mlj,mj->ml", A[:, cols, fixed], beta)
            seen = c > 0
            levels = seen.sum(axis=1)
            ssb = np.where(seen, sums**2 / np.where(seen, c, 1.0), 0.0).sum(axis=1)
            within[:, g] = (rss - ssb) / (n - levels - p + 1)
            n0 = (n - (c**2).sum(axis=1) / n) / (levels - 1)
            between[:, g] = np.maximum(ssb / (levels - 1) - within[:, g], 0.0) / n0
        if A.shape[1] - (layout.sizes[0] if k else 0) <= _FULL_LIMIT:
            residual = _residual_variance(A, layout, n)
        else:  # too large to factor per feature: the smallest one-way within variance
            residual = np.min(np.where(within > 0, within, np.inf), axis=1)
        theta = np.sqrt(between / residual[:, None])
    return np.where(np.isfinite(theta), theta, 1.0)


def _residual_variance(A: np.ndarray, layout: Layout, n: np.ndarray) -> np.ndarray:
    """``RSS / (n − rank)`` of the response on all columns of ``A`` (random terms as fixed).

    The first term's block is diagonal (distinct levels of one scalar term), so its columns
    are projected out in closed form; one Cholesky factor of the correlation-scaled rest gives
    its rank (pivots of aliased columns vanish) and the residual sum of squares.
    """
    q1 = layout.sizes[0] if layout.sizes else 0
    d1 = np.diagonal(A[:, :q1, :q1], axis1=1, axis2=2)
    inv = np.where(d1 > 0, 1.0 / np.where(d1 > 0, d1, 1.0), 0.0)
    B = A[:, :q1, q1:]
    rest = A[:, q1:, q1:] - (B.transpose(0, 2, 1) * inv[:, None, :]) @ B
    d = rest.shape[1] - 1
    # Scaled by the columns' own norms, so a column in the first term's span keeps a ~0 pivot.
    scale = np.sqrt(np.maximum(np.diagonal(A[:, q1:, q1:], axis1=1, axis2=2), 1e-300))
    corr = rest / scale[:, :, None] / scale[:, None, :]
    corr[:, np.arange(d), np.arange(d)] += 1e-9  # aliased columns get pivots ~3e-5, not 0
    pivots = np.diagonal(_batched_cholesky(corr)[0], axis1=1, axis2=2)  # NaN if it fails
    rank = (d1 > 0).sum(axis=1) + (pivots[:, :d] > 1e-3).sum(axis=1)
    return (pivots[:, -1] * scale[:, -1]) ** 2 / (n - rank)
