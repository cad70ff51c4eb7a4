"""Starting values for θ from moment estimates, computed from the cross-products alone.

Newton converges in a few steps from a point near the optimum, and the optimum's θ differs a
lot between terms (a peptide term often has 3-5× the relative SD of a batch term), so one
common start for every term costs iterations.

With a scalar first term and a rest of up to ``_FULL_LIMIT`` columns, each term's variance comes
from Henderson's method III (:func:`_henderson`): its sum of squares adjusted for every other
term and the fixed effects, so crossed terms (donors spread over batches) do not carry each
other's variation.  The noise level ``σ̂²`` is the residual variance with every term fixed,
``RSS_all / (n − rank[Z X])``.

A term whose columns add nothing to the others' (nested in a finer term: batches over their
samples) has no method III sum of squares; it, and every term of larger designs or of a vector
first term, gets a one-way random-effects ANOVA on the ordinary least-squares residuals
``r = y − Xβ̂`` (Searle, Casella & McCulloch 1992, section 3.6)::

    SSB_g = Σ_l S_l² / c_l,     S_l = Σ_{i∈l} w_i r_i = (A_gy − A_gX β̂)_l,   c_l = (A_gg)_ll
    σ̂²_g  = max(0, SSB_g / (L_g − 1) − σ̂²) / n₀,   n₀ = (n − Σ_l c_l² / n) / (L_g − 1)

with ``L_g`` observed levels; a term nested in a coarser one (samples within batches) uses its
levels' variation within the coarser levels, ``SSB_g − SSB_h`` on ``L_g − L_h`` df
(:func:`_unnest`).  Where the rest is too large to factor per feature, each one-way within
variance stands in for ``σ̂²``.

The start is ``θ_g = σ̂_g / σ̂``.  Everything is per feature from ``A`` (no pass over the data).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from ._crossprod import Cross
from ._objective import _BLOCK_BYTES, Layout, Reduced, _batched_cholesky, triangular_inverse

__all__ = ["moment_starts"]

_FULL_LIMIT = 96  # largest rest factored per feature for the starts (method III: ~an iteration)


def moment_starts(
    cross: Cross, layout: Layout, n_obs: np.ndarray, red: Reduced | None = None
) -> np.ndarray:
    """``(m, n_theta)`` moment-based starting values (elimination order) from ``cross``.

    ``cross`` holds the cross-products ``[Z X y]'W[Z X y]`` (see :mod:`._crossprod`) laid out
    as ``layout`` says: its first ``b`` terms are the components on the first factor (``b =
    1`` for a scalar term).  ``n_obs`` are the observations per feature.  With a scalar first
    term, ``red`` is its :func:`~._objective.reduce` and the starts are Henderson's method III
    (:func:`_henderson`) for every term that adds columns to the others' (one-way estimates
    otherwise).  Features whose moments are not defined (e.g. no degrees of freedom within
    levels) start at 1.
    """
    m, k, p = cross.n_features, layout.n_theta, layout.p
    b = cross.structure.b
    rest = cross.rest
    method3 = red is not None and rest.shape[1] <= _FULL_LIMIT
    if method3:
        step = max(1, _BLOCK_BYTES // (8 * rest.shape[1] ** 2))
        parts = [
            _henderson(red.take(slice(a, a + step)), n_obs[a : a + step]) for a in range(0, m, step)
        ]
        h_between, h_df, h_residual = (np.concatenate(x) for x in zip(*parts, strict=True))
    qr = rest.shape[1] - p - 1
    fixed = slice(qr, qr + p)
    # OLS β̂ from X'WX; a tiny ridge keeps dropped (zeroed, unit-diagonal) columns harmless.
    beta = np.linalg.solve(rest[:, fixed, fixed] + 1e-12 * np.eye(p), rest[:, fixed, -1:])[..., 0]
    rss = rest[:, -1, -1] - np.einsum("mi,mi->m", rest[:, fixed, -1], beta)
    # Per term: level counts and level sums of the OLS residuals (term 1 from its rows).
    w = np.zeros((m, rest.shape[1]))
    w[:, fixed], w[:, -1] = -beta, 1.0
    counts, sums = [], []
    if b:
        first_sums = cross.times(w).reshape(m, -1, b)
        counts = [cross.first[:, :, a, a] for a in range(b)]
        sums = [first_sums[:, :, a] for a in range(b)]
    diagonal = np.diagonal(rest, axis1=1, axis2=2)
    resid_sums = np.einsum("mij,mj->mi", rest[:, :qr], w)
    for cols in _rest_columns(layout, b):
        counts.append(diagonal[:, cols])
        sums.append(resid_sums[:, cols])
    n = np.asarray(n_obs, dtype=np.float64)
    ssb, levels, n0, within = (np.empty((m, k)) for _ in range(4))
    with np.errstate(divide="ignore", invalid="ignore"):
        for g in range(k):
            c = counts[g]
            seen = c > 0
            levels[:, g] = seen.sum(axis=1)
            ssb[:, g] = np.where(seen, sums[g] ** 2 / np.where(seen, c, 1.0), 0.0).sum(axis=1)
            within[:, g] = (rss - ssb[:, g]) / (n - levels[:, g] - p + 1)
            n0[:, g] = (n - (c**2).sum(axis=1) / n) / (levels[:, g] - 1)
        ssb, df = _unnest(ssb, levels, _nested(cross, layout, counts))
        if rest.shape[1] <= _FULL_LIMIT:
            # The residual variance, not each one-way within variance: those also hold the
            # terms crossed with g (peptides within a sample), which level means average out.
            residual = h_residual if method3 else _residual_variance(cross, n)
            noise = residual[:, None]
        else:  # too large to factor per feature: the one-way within variances
            residual = np.min(np.where(within > 0, within, np.inf), axis=1)
            noise = within
        between = np.maximum(ssb / df - noise, 0.0) / n0
        if method3:
            # A term nested in a finer one (batches over their samples) adds no columns to
            # the others': it has no method III sum of squares and keeps its one-way start.
            between = np.where(h_df >= 1, h_between, between)
        theta = np.sqrt(between / residual[:, None])
    return np.where(np.isfinite(theta), theta, 1.0)


def _rest_columns(layout: Layout, b: int) -> list[slice]:
    """The columns of each term after the first factor's ``b`` in the rest block."""
    offsets = np.concatenate([[0], np.cumsum(layout.sizes[b:])]).astype(int)
    return [slice(offsets[i], offsets[i + 1]) for i in range(offsets.size - 1)]


def _nested(cross: Cross, layout: Layout, counts: list[np.ndarray]) -> np.ndarray:
    """``(m, k, k)``: whether every observed level of term ``g`` meets one level of ``h``.

    Read off the observed cross-counts (``g`` is then nested in ``h`` for that feature); the
    components on the first factor are not compared with each other.
    """
    m, k = cross.n_features, layout.n_theta
    structure, rest = cross.structure, cross.rest
    b = structure.b
    nested = np.zeros((m, k, k), dtype=bool)
    columns = _rest_columns(layout, b)
    place_col = structure.row_col
    component = structure.row_level % max(b, 1)
    reached = (cross.rows != 0).astype(np.float64)
    places = np.arange(structure.n_places)
    for i, cols in enumerate(columns):
        h = b + i
        in_h = reached * ((place_col >= cols.start) & (place_col < cols.stop))
        per_level = structure.level_sums(in_h).reshape(m, -1, b) if b else None
        for a in range(b):
            # Component a in h: its levels' places in h's columns.
            nested[:, a, h] = np.all(per_level[:, :, a] <= (counts[a] > 0), axis=1)
            # h in component a: the levels of a that each of h's columns meets.
            to_col = sparse.csr_matrix(
                ((component == a).astype(np.float64), (place_col, places)),
                shape=(structure.dim, places.size),
            )
            per_col = (to_col @ in_h.T).T[:, cols]
            nested[:, h, a] = np.all(per_col <= (counts[h] > 0), axis=1)
        for j, other in enumerate(columns):
            if j != i:
                meets = (rest[:, other, cols] != 0).sum(axis=2)
                nested[:, b + j, h] = np.all(meets <= (counts[b + j] > 0), axis=1)
    return nested


def _unnest(
    ssb: np.ndarray, levels: np.ndarray, nested: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Between-level sums of squares and their df, of nested terms within the coarser term.

    The means of a nested term's levels (samples) also vary with the coarser term's effects
    (batches), so its one-way sum of squares holds both; the part within the coarser levels is
    ``SSB_g − SSB_h`` on ``L_g − L_h`` df (the coarser sums are sums of the nested ones).
    Nesting is read per feature off the observed cross-counts (``nested``, see :func:`_meets`):
    every observed level of ``g`` meets one level of ``h``, which has fewer (and at least two)
    observed levels; of several such ``h`` the finest (largest ``SSB_h``) is taken.
    """
    coarser = np.zeros_like(ssb)
    coarser_levels = np.ones_like(levels)
    for g in range(ssb.shape[1]):
        for h in range(ssb.shape[1]):
            if h == g:
                continue
            take = (
                nested[:, g, h]
                & (levels[:, h] < levels[:, g])
                & (levels[:, h] >= 2)
                & (ssb[:, h] > coarser[:, g])
            )
            coarser[:, g] = np.where(take, ssb[:, h], coarser[:, g])
            coarser_levels[:, g] = np.where(take, levels[:, h], coarser_levels[:, g])
    return ssb - coarser, levels - coarser_levels


def _henderson(red: Reduced, n_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Henderson's method III for a scalar first term: ``(m, k)`` variances ``σ̂²_g``, the
    ``(m, k)`` columns each term adds to the others' rank, and ``(m,)`` residual variances ``σ̂²``.

    Each term's sum of squares is adjusted for every other term and the fixed effects (the
    reduction ``R(g | others) = RSS_others − RSS_all``), so a donor's mean no longer carries the
    batch effects of its samples, nor a sample's those of its batch.  With ``M`` the projection
    off the others' columns, ``E[R(g | others)] = σ² (rank_all − rank_others) + σ_g² tr(Z_g'MZ_g)``
    (Searle, Casella & McCulloch 1992, section 5.5).  Term 1 is projected out in closed form
    (its block is diagonal, ``red`` by level or by count class); its own trace is ``Σ c_l −
    tr(A_oo⁻¹ A_o1 A_1o)`` over the rest's columns ``o``.  The other terms come from one factor
    of the term-1-eliminated rest with their columns moved last: the trailing block of that
    factor is ``Z_g'MZ_g``'s and the response's row holds ``RSS_others``.
    """
    layout, c, mult = red.layout, red.counts, red.mult
    inverse = np.where(c > 0, 1.0 / np.where(c > 0, c, 1.0), 0.0)
    products = red.weighted(np.stack([inverse, (c > 0).astype(np.float64)], axis=1))
    eliminated = red.A - products[:, 0]  # term 1 as fixed
    scale = np.sqrt(np.maximum(np.diagonal(red.A, axis1=1, axis2=2), 1e-300))
    rank1 = mult.sum(axis=1)  # observed levels
    d = red.A.shape[1] - 1
    k = layout.n_theta
    excess = np.empty((red.A.shape[0], k))  # R(g | others) − σ̂² df_g, once σ̂² is known
    trace, df = np.empty_like(excess), np.empty_like(excess)
    # One factor per other term, its columns last (with term 1 alone, one in any order).
    lasts = [np.arange(t.start, t.stop) for t in _rest_columns(layout, 1)] or [np.arange(0)]
    for g, cols in enumerate(lasts, start=1):
        order = np.concatenate([np.setdiff1d(np.arange(d), cols), cols, [d]])
        L, pivots = _scaled_factor(eliminated, scale, order)
        n_other = d - cols.size
        rank_others = rank1 + _rank(pivots[:, :n_other])
        rank_all = rank_others + _rank(pivots[:, n_other:d])
        rss_all = (pivots[:, -1] * scale[:, -1]) ** 2
        if g < k:
            tail = L[:, n_other:d, n_other:d] * scale[:, cols, None]
            trace[:, g] = (tail**2).sum(axis=(1, 2))
            excess[:, g] = (L[:, -1, n_other:] ** 2).sum(axis=1) * scale[:, -1] ** 2 - rss_all
            df[:, g] = rank_all - rank_others
    # Term 1: the rest's columns, nothing eliminated.
    L, pivots = _scaled_factor(red.A, scale)
    rank_others = _rank(pivots[:, :d])
    Linv = triangular_inverse(L[:, :d, :d])
    s = scale[:, :d]
    crossed = products[:, 1, :d, :d] / s[:, :, None] / s[:, None, :]  # A_o1 A_1o, scaled
    trace[:, 0] = (mult * c).sum(axis=1) - (np.matmul(Linv, crossed) * Linv).sum(axis=(1, 2))
    excess[:, 0] = (pivots[:, -1] * scale[:, -1]) ** 2 - rss_all
    df[:, 0] = rank_all - rank_others
    with np.errstate(divide="ignore", invalid="ignore"):
        residual = rss_all / (n_obs - rank_all)
        between = np.maximum(excess - residual[:, None] * df, 0.0) / trace
    return between, df, residual


def _scaled_factor(
    mat: np.ndarray, scale: np.ndarray, order: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Cholesky factor of ``mat`` (its rows and columns in ``order``) scaled by the columns'
    norms, and its pivots.

    Scaled by the columns' own norms, a column in the span of the earlier ones (or of term 1)
    keeps a ~0 pivot; a ridge of 1e-9 makes those pivots ~3e-5 rather than 0 (the response,
    last, gets none).  NaN where the factor fails.
    """
    corr = mat / scale[:, :, None] / scale[:, None, :]
    if order is not None:
        corr = corr.take(order, axis=1).take(order, axis=2)
    d = corr.shape[1] - 1
    corr[:, np.arange(d), np.arange(d)] += 1e-9
    L = _batched_cholesky(corr)[0]
    return L, np.diagonal(L, axis1=1, axis2=2)


def _rank(pivots: np.ndarray) -> np.ndarray:
    """Columns of a :func:`_scaled_factor` with a pivot above ~0 (aliased ones get ~3e-5)."""
    return (pivots > 1e-3).sum(axis=1)


def _residual_variance(cross: Cross, n: np.ndarray) -> np.ndarray:
    """``RSS / (n − rank)`` of the response on all columns of ``A`` (random terms as fixed).

    The first factor's block is block diagonal (a ``b × b`` block per level), so its columns
    are projected out level by level; one Cholesky factor of the correlation-scaled rest gives
    its rank and the residual sum of squares.
    """
    st, b = cross.structure, cross.structure.b
    m, n_levels, dr = cross.n_features, st.n_levels, st.dim
    rows = np.zeros((m, n_levels * b, dr))
    rows[:, st.row_level, st.row_col] = cross.rows
    rows = rows.reshape(m, n_levels, b, dr)
    pinv = np.linalg.pinv(cross.first, hermitian=True)  # unobserved levels: 0
    rest = cross.rest - np.einsum("mlad,mlac,mlce->mde", rows, pinv, rows)
    rank1 = np.linalg.matrix_rank(cross.first, hermitian=True).sum(axis=1)
    d = rest.shape[1] - 1
    scale = np.sqrt(np.maximum(np.diagonal(cross.rest, axis1=1, axis2=2), 1e-300))
    pivots = _scaled_factor(rest, scale)[1]
    rank = rank1 + _rank(pivots[:, :d])
    return (pivots[:, -1] * scale[:, -1]) ** 2 / (n - rank)
