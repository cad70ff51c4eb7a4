"""The profiled criterion for several random terms on one grouping factor, level by level.

Such terms are the components of a correlated (vector-valued) term ``(x|g)`` or scalar terms
that share a factor, ``(1|g) + (0 + x|g)`` (the expansion of ``(x||g)``).  With correlated
terms the criterion is minimized by :func:`minimize_dense` (several starts, see there).

Notation as in :mod:`._objective`, with ``Λ`` no longer diagonal: a correlated term with
components ``a = 1..b`` (intercept, slopes) has a lower-triangular ``T`` (``b × b``) and
``b_{l,a} = Σ_{c ≤ a} T_ac u_{l,c}`` for every level ``l``.  Its parameters are the diagonal
``T_aa ≥ 0`` (one per component, like a scalar term's θ) and the free off-diagonals ``T_ac``;
scalar terms on one factor make a diagonal ``T`` (no off-diagonal parameters).
With ``S = blockdiag(Λ, I_p, 1)`` (``S[r, c] = θ_j`` for the entries ``(r, c)`` of parameter
``j``) the criterion comes from ``Ω = S'AS + diag(I_q, 0, 0)`` exactly as in :mod:`._objective`
(the tests build that unreduced ``Ω`` as the reference for everything below).

Block elimination.  The terms on one factor ("term 1", ``b`` components: the factor with the
most random-effect columns, see ``_fit._design``) are eliminated level by level.  Their rows of
``Z`` belong to one level each, so ``Z₁'WZ₁`` is block diagonal with a ``b × b`` block ``C_l``
per level, and so is term 1's block of ``Ω``: ``M_l = T'C_l T + I``, where ``T`` holds term 1's
parameters at their entries (a correlated term's lower triangle, or the diagonal alone).
With ``B_l = A_{l,r}`` (term 1's rows at level ``l`` against the ``dr`` remaining columns: the
other random terms, ``X`` and ``y``), ``N_l = M_l⁻¹``, ``G_l = T N_l`` and ``P_l = T N_l T'``::

    log|Ω_[k]| = ℓ + log|Ω̃_[k']|,   ℓ = Σ_l log|M_l|,   Ω̃ = S_r'ÃS_r + diag(I_qr, 0, 0),
    Ã = A_rr − Σ_l B_l' P_l B_l,

and ``r²`` is the last pivot of ``Ω̃``.  ``M_l = R_l R_l'`` (Cholesky, ``b × b``, ``M_l ≥ I``)
gives ``ℓ = 2 Σ log diag R_l`` and ``P_l = W_l W_l'`` with ``W_l = T R_l⁻ᵀ``, so ``Ã`` is ``A_rr``
minus one Gram matrix.  Every evaluation is then per-level ``b × b`` algebra plus the Cholesky
factor of the small ``dr``-square ``Ω̃`` (``p + 1`` for ``(x|g)`` alone).

Derivatives.  As in :mod:`._objective`, with ``D_a = ∂Ω̃/∂θ_a``, ``D_ab = ∂²Ω̃/∂θ_a∂θ_b``,
``K = Ω̃⁻¹``, ``Kₖ`` the zero-padded inverse of the leading block and ``v = K e_last``::

    ∂_a     = ℓ_a  + tr(Kₖ D_a) + w r² v'D_a v
    ∂_a∂_b  = ℓ_ab + tr(Kₖ D_ab) − tr(Kₖ D_a Kₖ D_b)
              + w r² (v'D_ab v − 2 (D_a v)'K(D_b v)) + w r⁴ (v'D_a v)(v'D_b v).

A parameter of term 1 is one entry of ``T``, ``∂T/∂θ_a = e_i e_j'``; per level, with
``Q = I − PC`` (subscripts ``·_{:i}`` are columns)::

    ∂_a P  = Q_{:i} G_{:j}' + G_{:j} Q_{:i}'
    ∂_ab P = sym(N_jh Q_{:i} Q_{:k}' − (CQ)_ik G_{:h} G_{:j}' − (CG)_ih Q_{:k} G_{:j}'
                 − (CG)_kj Q_{:i} G_{:h}')                         for b = (k, h)
    ℓ_a    = 2 Σ_l (CG)_ij,     ℓ_ab = 2 Σ_l (N_jh (CQ)_ik − (CG)_ih (CG)_kj)

(``sym(X) = X + X'``), so ``∂Ã = −Σ_l B_l'(∂P_l)B_l`` is a sum of products of the columns of
``U_l = B_l'Q_l`` and ``V_l = B_l'G_l``, and ``D_a = S_r'(∂_aÃ)S_r``.  For two parameters of term
1, ``D_ab`` is never formed: with ``H = S_r(Kₖ + w r² v v')S_r'`` the terms it enters are::

    ℓ_ab + tr(Kₖ D_ab) + w r² v'D_ab v = 2 Σ_l (N_jh (CQ − U'HU)_ik + (CQ)_ik (V'HV)_hj
                                               + (CG)_ih (U'HV − CG)_kj + (CG)_kj (U'HV)_ih),

a ``b⁴`` table per feature from the per-level ``2b``-square ``[U V]'H[U V]``.  The other terms'
parameters enter linearly through ``S_r`` (``∂S_r/∂θ_a = E_a``): ``D_a = E_a'ÃS_r + S_r'ÃE_a``,
``D_ab = E_a'ÃE_b + E_b'ÃE_a``, and for ``a`` in term 1, ``b`` not, ``D_ab = E_b'(∂_aÃ)S_r +
S_r'(∂_aÃ)E_b``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property

import numpy as np

from ._crossprod import Cross
from ._objective import factor_criterion, factor_inverses, solve_reduced
from ._optimize import _AT_ZERO, Objective, OptSummary, minimize

__all__ = [
    "DenseLayout",
    "DenseReduced",
    "dense_criterion",
    "dense_estimates",
    "minimize_dense",
    "reduce_dense",
    "term_factor",
]


@dataclass(frozen=True)
class _Elimination:
    """Term 1's parameters as entries of ``T`` and the others' entries in the reduced system."""

    rest: np.ndarray  # (dr,) columns of A left after eliminating term 1 (response last)
    qr: int  # random-effect columns among them
    t_param: np.ndarray  # θ index of each parameter of term 1 ...
    t_i: np.ndarray  # ... and its entry (t_i, t_j) of T
    t_j: np.ndarray
    r_param: np.ndarray  # θ index of each other parameter ...
    r_entries: tuple[tuple[np.ndarray, np.ndarray], ...]  # ... and its (rows, cols) of S_r
    r_rows: np.ndarray  # all entries of S_r's random block: rows, cols and θ index
    r_cols: np.ndarray
    r_which: np.ndarray


@dataclass(frozen=True, eq=False)
class DenseLayout:
    """Where each parameter sits in ``S``: entries ``(rows[i], cols[i])`` hold ``θ[which[i]]``.

    ``levels[l, a]`` is the column of ``A`` of term 1's component ``a`` at level ``l`` (the
    terms on the factor eliminated level by level, see the module notes).
    """

    q: int
    p: int
    rows: np.ndarray
    cols: np.ndarray
    which: np.ndarray
    lower: np.ndarray  # per parameter: 0 for a diagonal (an SD), -inf for an off-diagonal
    levels: np.ndarray

    @property
    def dim(self) -> int:
        return self.q + self.p + 1

    @property
    def n_theta(self) -> int:
        return self.lower.size

    def _diagonal_of(self, entries: np.ndarray) -> np.ndarray:
        """Per parameter: for an off-diagonal, the diagonal parameter at the same row (or
        column) of ``S`` as its entries ``entries`` (``self.rows`` or ``self.cols``); -1 else."""
        out = np.full(self.n_theta, -1)
        for e in np.flatnonzero(~np.isfinite(self.lower)):
            c = entries[self.which == e][0]
            out[e] = self.which[(self.rows == c) & (self.cols == c)][0]
        return out

    @cached_property
    def column_of(self) -> np.ndarray:
        """Per parameter: for an off-diagonal ``T_ac``, the parameter ``T_cc``; -1 otherwise."""
        return self._diagonal_of(self.cols)

    @cached_property
    def row_of(self) -> np.ndarray:
        """Per parameter: for an off-diagonal ``T_ac``, the parameter ``T_aa``; -1 otherwise."""
        return self._diagonal_of(self.rows)

    @cached_property
    def elimination(self) -> _Elimination:
        n_levels, b = self.levels.shape
        component = np.full(self.dim, -1)
        component[self.levels] = np.arange(b)
        kept = np.ones(self.dim, dtype=bool)
        kept[self.levels.ravel()] = False
        rest = np.flatnonzero(kept)
        position = np.cumsum(kept) - 1  # index in the reduced system of a kept column
        in_t = component[self.rows] >= 0
        t_param = np.unique(self.which[in_t])
        first = np.array([np.flatnonzero(self.which == j)[0] for j in t_param], dtype=int)
        r_param = np.unique(self.which[~in_t])
        rows, cols = position[self.rows[~in_t]], position[self.cols[~in_t]]
        which = self.which[~in_t]
        return _Elimination(
            rest,
            self.q - n_levels * b,
            t_param,
            component[self.rows[first]],
            component[self.cols[first]],
            r_param,
            tuple((rows[which == j], cols[which == j]) for j in r_param),
            rows,
            cols,
            which,
        )


def term_factor(theta: np.ndarray, layout: DenseLayout, first: np.ndarray) -> np.ndarray:
    """``Λ`` restricted to the terms' first levels, ``(m, G, G)`` (``first``: their columns).

    A row of ``Λ`` at a term's first level is non-zero only in the first-level columns of its
    own correlated term, so ``ΛΛ'`` there is the terms' relative (co)variance matrix.
    """
    pos = np.full(layout.dim, -1)
    pos[first] = np.arange(first.size)
    keep = (pos[layout.rows] >= 0) & (pos[layout.cols] >= 0)
    F = np.zeros((theta.shape[0], first.size, first.size))
    F[:, pos[layout.rows[keep]], pos[layout.cols[keep]]] = theta[:, layout.which[keep]]
    return F


@dataclass(frozen=True)
class DenseReduced:
    """The θ-independent pieces of the eliminated criterion (see the module notes).

    ``A`` is ``A_rr`` ``(m, dr, dr)``; ``C`` holds term 1's level blocks ``C_l`` as ``(b, b, m,
    L)`` and ``B`` their rows ``B_l`` against the remaining columns as ``(b, dr, m, L)``.  The
    features and levels come last: a product of the small per-level matrices is then a few
    vectorized operations over all of them instead of one tiny matrix product each.
    """

    A: np.ndarray
    C: np.ndarray
    B: np.ndarray

    def take(self, rows: np.ndarray) -> DenseReduced:
        if rows.size == self.A.shape[0] and np.array_equal(rows, np.arange(rows.size)):
            return self
        # np.take keeps the copies C-contiguous (fancy indexing of a middle axis would not).
        return DenseReduced(self.A[rows], self.C.take(rows, axis=2), self.B.take(rows, axis=2))


def reduce_dense(cross: Cross, layout: DenseLayout) -> DenseReduced:
    """Split the cross-products into ``A_rr``, term 1's blocks ``C_l`` and rows ``B_l``.

    ``B`` is held densely here (``b · dr`` numbers per level and feature).
    """
    m = cross.n_features
    n_levels, b = layout.levels.shape
    dr = cross.rest.shape[1]
    st = cross.structure
    rows = np.zeros((m, n_levels * b, dr))
    rows[:, st.row_level, st.row_col] = cross.rows
    return DenseReduced(
        cross.rest,
        np.ascontiguousarray(cross.first.transpose(2, 3, 0, 1)),
        np.ascontiguousarray(rows.reshape(m, n_levels, b, dr).transpose(2, 3, 0, 1)),
    )


def _t(X: np.ndarray) -> np.ndarray:
    """Transpose of level-last matrices ``(b, c, ...)``."""
    return X.swapaxes(0, 1)


def _mm(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Products of level-last matrices: ``(a, c, ...) × (c, b, ...) → (a, b, ...)``."""
    return np.einsum("ac...,cb...->ab...", X, Y)


def _small_cholesky(M: np.ndarray) -> np.ndarray:
    """Lower Cholesky factors of level-last positive definite matrices ``(b, b, ...)``."""
    b = M.shape[0]
    R = np.zeros_like(M)
    for j in range(b):
        R[j, j] = np.sqrt(M[j, j] - (R[j, :j] ** 2).sum(axis=0))
        for i in range(j + 1, b):
            R[i, j] = (M[i, j] - (R[i, :j] * R[j, :j]).sum(axis=0)) / R[j, j]
    return R


def _small_lower_inverse(R: np.ndarray) -> np.ndarray:
    """Inverses of level-last lower-triangular matrices ``(b, b, ...)``."""
    b = R.shape[0]
    X = np.zeros_like(R)
    for i in range(b):
        X[i, i] = 1.0 / R[i, i]
        for j in range(i):
            X[i, j] = -(R[i, j:i] * X[j:i, j]).sum(axis=0) * X[i, i]
    return X


@dataclass
class _State:
    """The eliminated system at θ (see the module notes); per-level arrays ``(b, b, m, L)``."""

    T: np.ndarray  # (b, b, m, 1)
    Rinv: np.ndarray  # R_l⁻¹
    W: np.ndarray  # T R_l⁻ᵀ
    ell: np.ndarray  # (m,): Σ_l log|M_l|
    A_t: np.ndarray  # (m, dr, dr): Ã
    S: np.ndarray  # (m, dr, dr): S_r
    Om: np.ndarray  # (m, dr, dr): S_r'ÃS_r (without the identity)


def _state(theta: np.ndarray, red: DenseReduced, layout: DenseLayout) -> _State:
    el = layout.elimination
    m, dr = red.A.shape[:2]
    n_levels, b = layout.levels.shape
    T = np.zeros((b, b, m, 1))
    T[el.t_i, el.t_j, :, 0] = theta[:, el.t_param].T
    M = _mm(_t(T), _mm(red.C, T))
    M[np.arange(b), np.arange(b)] += 1.0
    R = _small_cholesky(M)
    Rinv = _small_lower_inverse(R)
    W = _mm(T, _t(Rinv))
    # Sums along the contiguous level axis only: the same order for any number of features.
    ell = sum(2.0 * np.log(R[a, a]).sum(axis=-1) for a in range(b))
    Y = _mm(_t(W), red.B)  # W'B: Σ_l B'PB = Y'Y
    Y = Y.transpose(2, 1, 0, 3).reshape(m, dr, b * n_levels)
    A_t = red.A - Y @ Y.swapaxes(1, 2)
    S = np.zeros((m, dr, dr))
    idx = np.arange(el.qr, dr)
    S[:, idx, idx] = 1.0
    S[:, el.r_rows, el.r_cols] = theta[:, el.r_which]
    return _State(T, Rinv, W, ell, A_t, S, _tr(S) @ A_t @ S)


def _tr(a: np.ndarray) -> np.ndarray:
    """Transpose of the last two axes."""
    return np.swapaxes(a, -1, -2)


def _scatter_rows(X: np.ndarray, entries: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``E'X`` for ``E`` with ones at ``(rows, cols)`` (distinct columns): a row scatter."""
    rows, cols = entries
    out = np.zeros_like(X)
    out[:, cols, :] = X[:, rows, :]
    return out


def _sym(X: np.ndarray) -> np.ndarray:
    return X + _tr(X)


def _trace(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``tr(a b)`` for stacks of square matrices."""
    return np.einsum("mij,mji->m", a, b)


def _quad(u: np.ndarray, mat: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``u' mat v`` for stacks."""
    return np.einsum("mi,mi->m", u, np.einsum("mij,mj->mi", mat, v))


def dense_criterion(
    theta: np.ndarray,
    red: DenseReduced,
    n_obs: np.ndarray,
    p_eff: np.ndarray,
    layout: DenseLayout,
    *,
    reml: bool = True,
    order: int = 0,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Profiled criterion and, for ``order`` ≥ 1 / 2, its gradient and Hessian in θ.

    Parameters
    ----------
    theta
        ``(m, n_theta)``: the terms' SDs, then the off-diagonals (the layout's order).
    red
        The reduced cross-products from :func:`reduce_dense`.
    n_obs, p_eff
        Observations and estimable fixed effects per feature.
    layout
        Where the parameters sit (:class:`DenseLayout`).
    reml
        REML criterion if true, else the ML deviance.
    order
        0: criterion only; 1: also the gradient; 2: also the Hessian.

    Returns
    -------
    The criterion per feature (``inf`` where the system is not positive definite), the gradient
    and the Hessian (``None`` when not asked for; NaN where the criterion is ``inf``).
    """
    el = layout.elimination
    theta = np.asarray(theta, dtype=np.float64)
    st = _state(theta, red, layout)
    m, dr = red.A.shape[:2]
    qr, k = el.qr, layout.n_theta
    crit, L, r2, bad = factor_criterion(st.Om.copy(), qr, st.ell, n_obs, p_eff, reml)
    if order == 0:
        return crit, None, None

    K, Kk = factor_inverses(L, bad, qr, reml)  # Ω̃⁻¹ and the log-determinant's block
    v = K[:, :, -1]
    r2 = np.where(bad, 1.0, r2)
    w = (n_obs - p_eff - 1.0) if reml else n_obs.astype(np.float64)

    # Term 1's pieces per level: N, G = TN, Q = I − PC, U = B'Q, V = B'G (module notes).
    C = red.C
    b = C.shape[0]
    N = _mm(_t(st.Rinv), st.Rinv)
    G = _mm(st.W, st.Rinv)
    CG = _mm(C, G)
    Q = -_mm(_mm(st.W, _t(st.W)), C)
    Q[np.arange(b), np.arange(b)] += 1.0
    CQ = _mm(C, Q)
    UV = _mm(_t(red.B), np.concatenate([Q, G], axis=1))  # [U V], (dr, 2b, m, L)

    # D_a in local order: term 1's parameters first, D_a = S_r'(∂_aÃ)S_r, then the others.
    n_t = el.t_param.size
    params = np.concatenate([el.t_param, el.r_param])
    dA = np.stack(
        [
            -_sym(np.einsum("dml,eml->mde", UV[:, i], UV[:, b + j]))
            for i, j in zip(el.t_i, el.t_j, strict=True)
        ]
    )
    D = np.empty((k, m, dr, dr))
    D[:n_t] = _tr(st.S) @ dA @ st.S
    AS = st.A_t @ st.S
    for s, entries in enumerate(el.r_entries):
        D[n_t + s] = _sym(_scatter_rows(AS, entries))
    ell = np.zeros((m, k))
    ell[:, :n_t] = 2.0 * CG[el.t_i, el.t_j].sum(axis=-1).T
    Dv = np.einsum("amij,mj->ami", D, v)
    vDv = np.einsum("ami,mi->ma", Dv, v)
    wr2 = w * r2
    grad = np.empty((m, k))
    trace = np.stack([_trace(Kk, Da) for Da in D], axis=1)  # tr(Kk D_a)
    grad[:, params] = ell + trace + wr2[:, None] * vDv
    grad[bad] = np.nan
    if order == 1:
        return crit, grad, None

    # ℓ_ab + tr(Kk D_ab) + w r² v'D_ab v: for two parameters of term 1 from the b⁴ table of
    # the module notes (every pair of entries (i, j), (k, h) of T at once), else from D_ab.
    Sv = np.einsum("mij,mj->mi", st.S, v)
    H = st.S @ Kk @ _tr(st.S) + wr2[:, None, None] * Sv[:, :, None] * Sv[:, None, :]
    H = np.ascontiguousarray(H.transpose(1, 2, 0))[..., None]  # level-last, (dr, dr, m, 1)
    XHX = _mm(_t(UV), _mm(H, UV))  # (2b, 2b, m, L)
    UHU, UHV, VHV = XHX[:b, :b], XHX[:b, b:], XHX[b:, b:]
    quartic = 2.0 * (
        np.einsum("jhml,ikml->ijkhm", N, CQ - UHU)
        + np.einsum("ikml,hjml->ijkhm", CQ, VHV)
        + np.einsum("ihml,kjml->ijkhm", CG, UHV - CG)
        + np.einsum("kjml,ihml->ijkhm", CG, UHV)
    )
    ps, pt = np.triu_indices(n_t)
    second = np.zeros((m, k, k))
    second[:, ps, pt] = second[:, pt, ps] = quartic[
        el.t_i[ps], el.t_j[ps], el.t_i[pt], el.t_j[pt]
    ].T
    for s in range(k):
        for t in range(max(s, n_t), k):
            if s < n_t:  # term 1 and another term: E_b'(∂_aÃ)S_r + S_r'(∂_aÃ)E_b
                Dab = _sym(_scatter_rows(dA[s] @ st.S, el.r_entries[t - n_t]))
            else:  # E_a'ÃE_b + E_b'ÃE_a
                (ra, ca), (rb, cb) = el.r_entries[s - n_t], el.r_entries[t - n_t]
                Dab = np.zeros_like(st.A_t)
                Dab[:, ca[:, None], cb[None, :]] = st.A_t[:, ra[:, None], rb[None, :]]
                Dab = _sym(Dab)
            second[:, s, t] = second[:, t, s] = _trace(Kk, Dab) + wr2 * _quad(v, Dab, v)
    KD = Kk @ D
    KDv = np.einsum("mij,bmj->bmi", K, Dv)
    local = (
        second
        - np.einsum("amij,bmji->mab", KD, KD)
        - 2.0 * wr2[:, None, None] * np.einsum("ami,bmi->mab", Dv, KDv)
        + (wr2 * r2)[:, None, None] * vDv[:, :, None] * vDv[:, None, :]
    )
    hess = np.empty((m, k, k))
    hess[:, params[:, None], params[None, :]] = 0.5 * (local + _tr(local))
    hess[bad] = np.nan
    return crit, grad, hess


def dense_estimates(
    theta: np.ndarray,
    cross: Cross,
    layout: DenseLayout,
    n_obs: np.ndarray,
    p_eff: np.ndarray,
    reml: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """β̂, SE(β̂), BLUPs Λũ (the layout's column order) and σ̂² at θ, through the elimination.

    ``Ω̃`` is the Schur complement of term 1's block in ``Ω``: its leading block solves for
    ``x = (ũ_r, β̂)``, the β block of its inverse is ``Cov(β̂)/σ̂²``, and term 1's effects follow
    per level by back-substitution, ``Tũ_l = P_l (A_ly − A_{l,r} S_r x)``.
    """
    el = layout.elimination
    red = reduce_dense(cross, layout)
    st = _state(theta, red, layout)
    m = red.A.shape[0]
    n_levels, b = layout.levels.shape
    qr = el.qr
    sol, se, sigma2 = solve_reduced(st.Om, qr, n_obs, p_eff, reml)
    x = np.einsum("mij,mj->mi", st.S[:, :-1, :-1], sol)  # the unscaled (Λ_r ũ_r, β̂)
    blup = np.empty((m, layout.q))
    blup[:, el.rest[:qr]] = x[:, :qr]
    resid = cross.times(np.concatenate([-x, np.ones((m, 1))], axis=1))
    resid = resid.reshape(m, n_levels, b).transpose(2, 0, 1)  # (b, m, L)
    P = _mm(st.W, _t(st.W))  # T N T'
    blup[:, layout.levels.T] = np.einsum("ijml,jml->iml", P, resid).transpose(1, 0, 2)
    return sol[:, qr:], se, blup, sigma2


def minimize_dense(
    objective: Objective, starts: np.ndarray, fixed: np.ndarray, layout: DenseLayout
) -> OptSummary:
    """Minimize from every start, then from sign flips and escapes on the bound; keep the best.

    Correlated terms can have several local optima, so every start ``(n_starts, m, k)`` is
    descended (as copies of the features, in one batch).  A column ``c`` of ``T`` can also end
    with ``T_cc = 0`` held by the bound although the criterion falls into ``T_cc > 0``: negating
    the column gives the same ``TT'`` and flips the sign of the gradient in ``T_cc``, so such
    points (column not all zero) are descended again from their flipped copy.  Fits that end
    singular (a component's own SD 0: perfectly correlated), far out (relative SDs above
    ``_FAR``, where σ² → 0 and the criterion has several valleys) or no better than θ = 0 are
    descended again from :func:`_escape_starts` (large SDs with correlations of both signs,
    and rank-one factors), as lme4 finds such optima from its single start.
    """
    _, m, k = starts.shape
    opt = _best_of(objective, starts, fixed, layout.lower)

    off = np.flatnonzero(layout.column_of >= 0)
    at_zero = opt.theta[:, layout.column_of[off]] <= _AT_ZERO
    redo = np.flatnonzero(np.any(at_zero & (opt.theta[:, off] != 0.0), axis=1))
    if redo.size:
        flipped = opt.theta[redo]
        flipped[:, off] = np.where(at_zero[redo], -flipped[:, off], flipped[:, off])
        _keep_better(
            opt, redo, _best_of(_rows_of(objective, redo), flipped[None], fixed[redo], layout.lower)
        )

    f0, _, _ = objective(np.zeros_like(opt.theta), np.arange(m), 0)
    diagonal = np.isfinite(layout.lower)
    singular = np.any(opt.theta[:, layout.row_of[off]] <= _AT_ZERO, axis=1)
    far = np.abs(opt.theta[:, diagonal]).max(axis=1, initial=0.0) > _FAR
    again = np.flatnonzero((singular | far | ~(opt.fmin < f0)) & opt.converged)
    if again.size:
        escapes = np.broadcast_to(_escape_starts(layout)[:, None, :], (_N_ESCAPES, again.size, k))
        escapes = np.where(fixed[again], 0.0, escapes)
        _keep_better(
            opt, again, _best_of(_rows_of(objective, again), escapes, fixed[again], layout.lower)
        )
    return opt


_FAR = 4.0
_ESCAPE_SDS = (4.0, 16.0)


def _escape_starts(layout: DenseLayout) -> np.ndarray:
    """``(n, k)`` starts far out and on the rank-one boundary (see :func:`minimize_dense`).

    For each SD in ``_ESCAPE_SDS``: every SD at it with every correlation ``±1/2`` (``T_ac =
    ±SD/2``), and the rank-one factor whose later components follow the first (their own SDs
    0, ``T_a0 = ±SD``).
    """
    diagonal = np.isfinite(layout.lower)
    off = np.flatnonzero(~diagonal)
    later = np.zeros(layout.n_theta, dtype=bool)
    later[layout.row_of[off]] = True
    first_column = np.zeros(layout.n_theta, dtype=bool)
    first_column[off] = ~later[layout.column_of[off]]
    starts = []
    for sd in _ESCAPE_SDS:
        for sign in (-1.0, 1.0):
            starts.append(np.where(diagonal, sd, sign * sd / 2))
            starts.append(np.where(diagonal, np.where(later, 0.0, sd), sign * sd * first_column))
    return np.array(starts)


_N_ESCAPES = 4 * len(_ESCAPE_SDS)


def _best_of(
    objective: Objective, starts: np.ndarray, fixed: np.ndarray, lower: np.ndarray
) -> OptSummary:
    """Descend every start ``(n_starts, m, k)`` (as copies of the features) and keep the best."""
    n_c, m, k = starts.shape

    def each_start(th, sub, order):
        return objective(th, sub % m, order)

    runs = minimize(
        each_start, starts.reshape(1, n_c * m, k), np.tile(fixed, (n_c, 1)), lower=lower
    )
    return _take(runs, np.argmin(runs.fmin.reshape(n_c, m), axis=0) * m + np.arange(m))


def _rows_of(objective: Objective, rows: np.ndarray) -> Objective:
    """``objective`` restricted to the features ``rows``."""

    def restricted(th, sub, order):
        return objective(th, rows[sub], order)

    return restricted


def _keep_better(opt: OptSummary, rows: np.ndarray, other: OptSummary) -> None:
    """Take ``other``'s results for the features ``rows`` where its criterion is lower."""
    better = other.fmin < opt.fmin[rows]
    for field in fields(opt):
        getattr(opt, field.name)[rows[better]] = getattr(other, field.name)[better]


def _take(opt: OptSummary, rows: np.ndarray) -> OptSummary:
    return OptSummary(**{field.name: getattr(opt, field.name)[rows] for field in fields(opt)})
