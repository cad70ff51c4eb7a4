"""Profiled REML/ML criterion of the relative covariance parameters θ, for many features at once.

Notation (Bates et al. 2015, "Fitting linear mixed-effects models using lme4", section 3)
------------------------------------------------------------------------------------------
For one feature with observed rows (weights ``w``: 1 observed, 0 missing), ``n`` observations,
``p`` fixed effects and random-intercept terms ``g = 1..G`` with ``q_g`` levels (``q = Σ q_g``)::

    y = X β + Z Λ u + ε,    u ~ N(0, σ² I_q),    ε ~ N(0, σ² I_n),
    Λ = diag(θ_g repeated over the levels of term g),   so  σ²_g = σ² θ_g².

Everything the criterion needs is the augmented cross-product ``A = [Z X y]' W [Z X y]``,
a ``(q+p+1)``-square matrix per feature, stacked as ``A[f]`` over features ``f``.  With
``S = diag(Λ, I_p, 1)`` and ``Ω = S A S + diag(I_q, 0, 0)``, the Cholesky factor of ``Ω`` holds

* ``log|M|`` with ``M = Λ'Z'WZΛ + I`` (the first q pivots),
* ``log|R_X|²`` with ``R_X'R_X = X'WX − X'WZΛ M⁻¹ Λ'Z'WX`` (the next p pivots),
* ``r²``, the penalized residual sum of squares at (β̂, û) (the last pivot squared),

and lme4's criteria are::

    REML(θ) = log|M| + log|R_X|² + ν (1 + log(2π r² / ν)),     ν = n − p
    ML(θ)   = log|M|             + n (1 + log(2π r² / n)).

Block elimination.  Terms are ordered by number of levels, largest first.  The first term's
block of Ω is diagonal, ``D₁ = 1 + θ₁² c`` with ``c`` the level counts, so it is eliminated in
closed form: what remains is the same problem without term 1 and with ``A`` replaced by
``Ã(θ₁) = A_rr − Σ_i s_i a_i a_i'``, ``s_i = θ₁²/(1 + θ₁² c_i)``, ``a_i = A_r,i``.  Levels with
equal counts share ``s_i``, so :func:`reduce` sums their outer products once per feature into
``G_k`` (one per count class ``k``) and every evaluation only forms ``Ã = A_rr − Σ_k s_k G_k``
and factors the ``Ω̃ = S_r Ã S_r + diag(I, 0, 0)`` (``dr = q − q₁ + p + 1`` square).  Where
classes do not pay (or counts are weighted), the sum runs over the levels, densely for small
designs or over the few places each ``a_i`` has (:class:`~._crossprod.Triples`).  ``Ω̃`` is held
densely: the remaining terms are crossed through term 1's levels (batches share donors), which
fills it in.

Derivatives.  The criterion is ``ℓ(θ₁) + log|Ω̃_[k]| + w log r²`` with
``ℓ = Σ_k n_k log(1 + θ₁² c_k)`` (``n_k`` levels in class k), ``k = dr, w = ν − 1`` for
REML and ``k = q − q₁`` (the leading block, i.e. ``log|M|`` without term 1), ``w = n`` for
ML.  With ``K = Ω̃⁻¹``, ``v = K e_last`` (so ``r² = 1/v_last``), ``Kₖ`` the inverse of the
leading k block (zero-padded), and ``D_a = ∂Ω̃/∂θ_a``, ``D_ab = ∂²Ω̃/∂θ_a∂θ_b`` (Ω̃ is
quadratic in the remaining θ and rational in θ₁, see :func:`criterion`)::

    ∂/∂θ_a    log|Ω̃_[k]| = tr(Kₖ D_a)
    ∂²/∂θ_a∂θ_b          = tr(Kₖ D_ab) − tr(Kₖ D_a Kₖ D_b)
    ∂/∂θ_a    log r²     = r² v'D_a v
    ∂²/∂θ_a∂θ_b          = r² (v'D_ab v − 2 (D_a v)'K(D_b v)) + r⁴ (v'D_a v)(v'D_b v)

Parameters are packed as ``theta[f, j]`` in the *elimination order* of the terms; the caller maps
them back to formula order.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from scipy.linalg import lapack

from ._crossprod import Cross, CrossProducts

__all__ = [
    "Layout",
    "Reduced",
    "criterion",
    "estimates",
    "reduce",
    "solve_leading",
    "solve_reduced",
]

_LOG2PI = np.log(2.0 * np.pi)
# Bytes of one (features, dr, dr) stack per block of features (criterion, reduce): large enough
# for the per-call overhead to vanish, small enough to bound the temporaries and _Workspace.
_BLOCK_BYTES = 2**20
_KEEP_ITEMS = 2**20  # _Workspace holds buffers up to this many float64 items (8 MiB)
_TRIANGLE_LEAF = 6  # rows below which triangular_inverse substitutes row by row
_LAPACK_FROM = 40  # rows from which a LAPACK call per matrix factors faster than numpy's stack
# Relative SDs of the remaining terms above which the REML Hessian takes C and H from K alone.
_DIRECT_ABOVE = 1e-3


class _Workspace(threading.local):
    """Buffers for criterion's large temporaries, kept between calls (one set per thread).

    Allocated afresh, each call's few MB are freed at its end; glibc then trims the top of the
    heap and the next call page-faults it back in, which took 40 % of an evaluation here.
    They are kept for the life of the thread (freeing them after each chunk cost 15 % on the
    peptide benchmark); blocks of ``_BLOCK_BYTES`` bound them to a few MiB each.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def __call__(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A C-contiguous ``shape`` array (uninitialized) that lives until ``name`` is reused."""
        size = math.prod(shape)
        if size > _KEEP_ITEMS:  # rare (thousands of levels): not worth holding on to
            return np.empty(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.size < size:
            buf = self.buffers[name] = np.empty(size)
        return buf[:size].reshape(shape)


_scratch = _Workspace()
Scratch = Callable[[str, tuple[int, ...]], np.ndarray]  # (name, shape) -> array to write into


def _fresh(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A new array for every request: the scratch of callers that keep their results."""
    return np.empty(shape)


@dataclass(frozen=True)
class Layout:
    """Where each block sits in the augmented cross-product ``A``.

    ``sizes`` are the numbers of levels of the random terms in elimination order (largest
    first); ``p`` is the number of fixed effects; the response is the last row/column.
    ``count_classes`` > 0 groups the first term's levels by their observed count ``1 ..
    count_classes`` (the largest number of rows of one level); 0 keeps one class per level.
    ``dense_rows`` holds term 1's rows against the rest densely (a batched matrix product per
    evaluation) instead of as pairs of places (:class:`~._crossprod.Triples`), which pays only
    when ``q₁ · dr`` is small.  Both are properties of the design, so every feature is reduced
    the same way in any chunk.
    """

    sizes: tuple[int, ...]
    p: int
    count_classes: int = 0
    dense_rows: bool = False  # term 1's rows held densely, (m, q₁, dr): for small designs

    @property
    def q(self) -> int:
        return sum(self.sizes)

    @property
    def dim(self) -> int:
        return self.q + self.p + 1

    @property
    def n_theta(self) -> int:
        return len(self.sizes)

    def term_of(self) -> np.ndarray:
        """Term index of every random-effect column (length q)."""
        return np.repeat(np.arange(self.n_theta), self.sizes)


@dataclass(frozen=True)
class Reduced:
    """The θ-independent pieces of the criterion after eliminating term 1 (see module docs).

    ``A`` is ``A_rr`` (``(m, dr, dr)``).  The eliminated columns come in one of three forms:
    count classes, ``G`` the class sums of outer products ``(m, K, dr²)``; or levels, either
    ``B = A_1r`` dense ``(m, q₁, dr)`` or ``rows``, its values at the places some data row
    reaches ``(m, places)``, with the ``structure`` that says where they are.  ``counts`` and
    ``mult`` are the count ``c_k`` and number of levels ``n_k`` of each class (or each level's
    count and whether it is observed).
    """

    A: np.ndarray
    G: np.ndarray | None
    B: np.ndarray | None
    rows: np.ndarray | None
    counts: np.ndarray
    mult: np.ndarray
    layout: Layout
    structure: CrossProducts | None = None  # with rows: where its places are

    def take(self, rows: np.ndarray | slice) -> Reduced:
        """The features ``rows``: indices, or a slice (views, no copies)."""
        whole = not isinstance(rows, slice) and np.array_equal(rows, np.arange(self.A.shape[0]))
        if whole:
            return self
        G = None if self.G is None else self.G[rows]
        B = None if self.B is None else self.B[rows]
        places = None if self.rows is None else self.rows[rows]
        return Reduced(
            self.A[rows],
            G,
            B,
            places,
            self.counts[rows],
            self.mult[rows],
            self.layout,
            self.structure,
        )

    def weighted(self, s: np.ndarray, scratch: Scratch = _fresh) -> np.ndarray:
        """``Σ_i s_i a_i a_i'`` over the eliminated columns, for several weightings at once.

        ``s`` is ``(m, j, K)``: ``j`` weightings per class (or per level); returns
        ``(m, j, dr, dr)``, in ``scratch`` buffers if given.
        """
        m, dr = self.A.shape[:2]
        j = s.shape[1]
        out = scratch("W", (m, j, dr * dr))
        if self.G is not None:
            return np.matmul(s, self.G, out=out).reshape(m, j, dr, dr)
        if self.B is not None:
            q1 = self.B.shape[1]
            # Written in C order so the reshape below is a view: numpy would otherwise lay the
            # product out like the transposed B and the reshape would copy it.
            rows = scratch("rows", (m, j, dr, q1))
            np.multiply(self.B.transpose(0, 2, 1)[:, None], s[:, :, None, :], out=rows)
            out = out.reshape(m, j * dr, dr)
            return np.matmul(rows.reshape(m, j * dr, q1), self.B, out=out).reshape(m, j, dr, dr)
        from ._kernels import level_sums  # numba, loaded at the first fit only

        st = self.structure
        tri = st.triples
        weights = np.ascontiguousarray(s, dtype=np.float64)
        level_sums(self.rows, weights, st.row_level, st.row_col, tri.e1, tri.e2, out)
        return out.reshape(m, j, dr, dr)

    def eliminated(self, s: np.ndarray) -> np.ndarray:
        """``A_rr − Σ_i s_i a_i a_i'``: the rest of ``A`` after eliminating term 1 with ``s``."""
        return self.A - self.weighted(s[:, None, :])[:, 0]

    def eliminated_tail(self, s: np.ndarray, start: int) -> np.ndarray:
        """:meth:`eliminated` on the rows and columns from ``start`` on only."""
        m, dr = self.A.shape[:2]
        t = dr - start
        if self.G is not None:
            G = self.G.reshape(m, -1, dr, dr)[:, :, start:, start:].reshape(m, -1, t * t)
            W = np.matmul(s[:, None, :], G).reshape(m, t, t)
        elif self.B is not None:
            B = self.B[:, :, start:]
            W = np.matmul(B.transpose(0, 2, 1) * s[:, None, :], B)
        else:
            W = self.weighted(s[:, None, :])[:, 0, start:, start:]
        return self.A[:, start:, start:] - W


def reduce(cross: Cross, layout: Layout) -> Reduced:
    """Term 1's counts and its rows (or their products), by count class or by level.

    Count classes pay when they are few: their sums take ``K·dr²`` numbers per feature against
    a few per level for the levels themselves (:func:`use_count_classes`).
    """
    m = cross.n_features
    if not layout.sizes:
        empty = np.zeros((m, 0))
        return Reduced(cross.rest, None, None, np.zeros((m, 0)), empty, empty, layout)
    counts = cross.first[:, :, 0, 0]
    q1, dr = layout.sizes[0], cross.rest.shape[1]
    st = cross.structure
    B = None
    if layout.dense_rows:
        B = np.zeros((m, q1, dr))
        B[:, st.row_level, st.row_col] = cross.rows
    if not layout.count_classes:
        observed = (counts > 0).astype(np.float64)
        places, structure = (None, None) if B is not None else (cross.rows, st)
        return Reduced(cross.rest, None, B, places, counts.copy(), observed, layout, structure)
    n_classes = layout.count_classes
    values = np.arange(1.0, n_classes + 1.0)
    member = np.clip(np.rint(counts).astype(np.int64) - 1, 0, n_classes - 1)  # (m, q1)
    mult = (counts[:, :, None] == values).sum(axis=1).astype(np.float64)
    G = np.empty((m, n_classes, dr * dr))
    if B is not None:
        # Class sums of the outer products a_i a_i', a block of features at a time so the
        # (features, q₁, dr²) temporary stays small (see _BLOCK_BYTES).
        onehot = (member[:, :, None] == np.arange(n_classes)).astype(np.float64)
        step = max(1, _BLOCK_BYTES // (8 * q1 * dr * dr))
        for a in range(0, m, step):
            prod = B[a : a + step, :, :, None] * B[a : a + step, :, None, :]
            prod = prod.reshape(-1, q1, dr * dr)
            np.matmul(onehot[a : a + step].transpose(0, 2, 1), prod, out=G[a : a + step])
    else:
        from ._kernels import class_sums

        tri = st.triples
        class_sums(cross.rows, member, st.row_level, st.row_col, tri.e1, tri.e2, G)
    class_counts = np.broadcast_to(values, (m, n_classes)).copy()
    return Reduced(cross.rest, G, None, None, class_counts, mult, layout)


def use_dense_rows(n_levels: int, dr: int, n_scatter: int) -> bool:
    """Whether term 1's rows held densely cost no more per evaluation than their triples.

    A dense product costs ``q₁ · dr²`` multiply-adds at matrix-product speed, about ten times
    the speed of the sparse operations on the ``n_scatter`` places of the triples (see
    :class:`~._crossprod.Triples`).
    """
    return n_levels * dr * dr <= 8 * n_scatter


def use_count_classes(n_classes: int, n_levels: int, dr: int) -> bool:
    """Whether ``n_classes`` count classes store less than the ``n_levels`` rows do.

    Their sums take ``K·dr²`` numbers per feature against ``q₁·dr`` for the rows themselves;
    a class then costs one ``dr²`` product per evaluation, no more than its levels' rows.
    """
    return 0 < n_classes < n_levels and n_classes * dr <= 2 * n_levels


def _batched_cholesky(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cholesky of a stack; matrices that are not positive definite give NaN instead of raising."""
    m, n, _ = mat.shape
    if n >= _LAPACK_FROM:  # one LAPACK call per matrix: faster than numpy's stacked routine
        out = np.empty_like(mat)
        ok = np.ones(m, dtype=bool)
        for i in range(m):
            out[i], info = lapack.dpotrf(mat[i], lower=1, clean=1)
            ok[i] = info == 0
        out[~ok] = np.nan
        return out, ok
    try:
        return np.linalg.cholesky(mat), np.ones(m, dtype=bool)
    except np.linalg.LinAlgError:
        ok = np.ones(m, dtype=bool)
        out = np.full_like(mat, np.nan)
        for i in range(m):  # rare path: locate the failures
            try:
                out[i] = np.linalg.cholesky(mat[i])
            except np.linalg.LinAlgError:
                ok[i] = False
        return out, ok


def factor_criterion(
    Om: np.ndarray,
    q: int,
    logdet_rest: np.ndarray,
    n_obs: np.ndarray,
    p_eff: np.ndarray,
    reml: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The criterion from ``Ω`` (its first ``q`` diagonal entries still without the ``+1``).

    ``logdet_rest`` is the part of ``log|M|`` already eliminated.  Returns the criterion
    (``inf`` where ``Ω`` is not positive definite), the Cholesky factor, ``r²`` and that mask.
    """
    idx = np.arange(q)
    Om[:, idx, idx] += 1.0
    L, ok = _batched_cholesky(Om)
    diag = np.diagonal(L, axis1=1, axis2=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        logdiag = np.log(diag)
        r2 = diag[:, -1] ** 2
        if reml:
            nu = n_obs - p_eff
            logdet = logdet_rest + 2.0 * logdiag[:, :-1].sum(axis=1)
            crit = logdet + nu * (1.0 + _LOG2PI + np.log(r2 / nu))
        else:
            logdet_M = logdet_rest + 2.0 * logdiag[:, :q].sum(axis=1)
            crit = logdet_M + n_obs * (1.0 + _LOG2PI + np.log(r2 / n_obs))
    bad = ~ok | ~np.isfinite(crit) | ~(r2 > 0)
    return np.where(bad, np.inf, crit), L, r2, bad


def triangular_inverse(L: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Inverses of a stack of lower-triangular matrices.

    Blockwise: ``[[L₁₁, 0], [L₂₁, L₂₂]]⁻¹ = [[X₁₁, 0], [−X₂₂ L₂₁ X₁₁, X₂₂]]`` with both diagonal
    blocks inverted in one stacked call (the smaller padded with a unit pivot), down to blocks
    of ``_TRIANGLE_LEAF`` rows, which forward substitution inverts one row at a time across the
    whole stack.  For the small systems here this costs a few numpy calls per level instead of
    a LAPACK call per matrix (``np.linalg.inv``) or a call per row.
    """
    m, n, _ = L.shape
    X = np.empty_like(L) if out is None else out
    X.fill(0.0)
    if n > _TRIANGLE_LEAF:
        h = n - n // 2  # the first block is the larger one
        D = np.zeros((2 * m, h, h))
        D[:m] = L[:, :h, :h]
        D[m:, : n - h, : n - h] = L[:, h:, h:]
        if n - h < h:
            D[m:, -1, -1] = 1.0
        inverse = triangular_inverse(D)
        X[:, :h, :h] = inverse[:m]
        X[:, h:, h:] = inverse[m:, : n - h, : n - h]
        X[:, h:, :h] = -(X[:, h:, h:] @ (L[:, h:, :h] @ X[:, :h, :h]))
        return X
    d = 1.0 / np.diagonal(L, axis1=1, axis2=2)
    for i in range(n):
        X[:, i, i] = d[:, i]
        if i:
            X[:, i, :i] = -np.einsum("mj,mjk->mk", L[:, i, :i], X[:, :i, :i]) * d[:, i, None]
    return X


def factor_inverses(
    L: np.ndarray, bad: np.ndarray, qr: int, reml: bool, scratch: Scratch = _fresh
) -> tuple[np.ndarray, np.ndarray]:
    """``K = Ω̃⁻¹`` from its Cholesky factor ``L``, and ``Kk``, the inverse of the block whose
    log-determinant the criterion holds: ``K`` itself for REML, the leading ``qr`` block for ML
    (zero-padded).  Features whose factor failed (``bad``) get the identity's.
    """
    square = L.shape
    if bad.any():
        L = np.where(bad[:, None, None], np.eye(L.shape[1]), L)
    Linv = triangular_inverse(L, out=scratch("Linv", square))
    K = np.matmul(Linv.transpose(0, 2, 1), Linv, out=scratch("K", square))
    if reml:
        return K, K
    Kk = scratch("Kk", square)
    Kk.fill(0.0)
    Kk[:, :qr, :qr] = Linv[:, :qr, :qr].transpose(0, 2, 1) @ Linv[:, :qr, :qr]
    return K, Kk


def criterion(
    theta: np.ndarray,
    red: Reduced,
    n_obs: np.ndarray,
    p_eff: np.ndarray,
    *,
    reml: bool = True,
    order: int = 0,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Profiled criterion and, for ``order`` ≥ 1 / 2, its gradient and Hessian in θ.

    Features are evaluated in blocks of ``_BLOCK_BYTES`` per ``(dr, dr)`` stack, which bounds
    the temporaries of a large chunk.  The work is per feature, so blocking changes no result.

    Parameters
    ----------
    theta
        ``(m, n_theta)`` relative standard deviations, elimination order.
    red
        The reduced cross-products from :func:`reduce`.
    n_obs, p_eff
        Observations and estimable fixed effects per feature.
    reml
        REML criterion if true, else the ML deviance.
    order
        0: criterion only; 1: also ``∂/∂θ`` ``(m, n_theta)``; 2: also ``∂²/∂θ²``
        ``(m, n_theta, n_theta)``.

    Returns
    -------
    The criterion per feature (``inf`` where the system is not positive definite), the gradient
    and the Hessian (``None`` when not asked for; NaN where the criterion is ``inf``).
    """
    m, dr, _ = red.A.shape
    block = max(1, _BLOCK_BYTES // (8 * dr * dr))
    if m <= block:
        return _criterion(theta, red, n_obs, p_eff, reml, order)
    parts = [
        _criterion(
            theta[a : a + block],
            red.take(slice(a, a + block)),
            n_obs[a : a + block],
            p_eff[a : a + block],
            reml,
            order,
        )
        for a in range(0, m, block)
    ]
    return tuple(
        None if parts[0][i] is None else np.concatenate([part[i] for part in parts])
        for i in range(3)
    )


def _criterion(
    theta: np.ndarray, red: Reduced, n_obs: np.ndarray, p_eff: np.ndarray, reml: bool, order: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    layout = red.layout
    m, dr, _ = red.A.shape
    k = layout.n_theta
    q1 = layout.sizes[0] if k else 0
    qr = layout.q - q1  # random-effect columns left after eliminating term 1
    rest_terms = layout.term_of()[q1:]
    theta = np.asarray(theta, dtype=np.float64)
    square = (m, dr, dr)
    scale = np.ones((m, dr))
    scale[:, :qr] = theta[:, rest_terms]

    if k:
        t1 = theta[:, :1]
        c = red.counts
        sq = t1**2 * c
        den = 1.0 + sq
        ell = (red.mult * np.log(den)).sum(axis=1)
        # s = θ₁²/(1 + θ₁²c) and, as the order asks, ∂s/∂θ₁ and ∂²s/∂θ₁², weighted at once.
        s = [t1**2 / den, 2.0 * t1 / den**2, 2.0 * (1.0 - 3.0 * sq) / den**3][: order + 1]
    else:
        ell = np.zeros(m)
    if order == 0 and qr and not scale[:, :qr].any():
        # The remaining terms at θ = 0 (every fit checks that boundary): their columns of Ω̃
        # are the identity beside the fixed-effects block, so only that block is formed.
        tail = red.eliminated_tail(s[0], qr) if k else red.A[:, qr:, qr:]
        return factor_criterion(tail, 0, ell, n_obs, p_eff, reml)[0], None, None
    if k:
        W = red.weighted(np.stack(s, axis=1), _scratch)
        A_t = np.subtract(red.A, W[:, 0], out=W[:, 0])  # W₀ is not needed again
    else:
        A_t = red.A

    Om = np.multiply(A_t, scale[:, None, :], out=_scratch("Om", square))
    Om *= scale[:, :, None]  # S Ã S
    crit, L, r2, bad = factor_criterion(Om, qr, ell, n_obs, p_eff, reml)
    if order == 0:
        return crit, None, None
    if not k:
        return crit, np.zeros((m, 0)), (np.zeros((m, 0, 0)) if order == 2 else None)

    K, Kk = factor_inverses(L, bad, qr, reml, _scratch)
    del L  # a large single fit holds a few dense (dr, dr) arrays at most
    r2 = np.where(bad, 1.0, r2)
    w = (n_obs - p_eff - 1.0) if reml else n_obs.astype(np.float64)

    # The derivatives' traces and quadratic forms (module notes), one compiled pass per
    # feature: every D_a of a remaining term is E_a B + B'E_a (B = Ã S, E_a: diagonal 0/1 of
    # a's columns), so its traces against Kk are block sums of C = B Kk and H = C B'; term 1's
    # D_0 = −S W₁ S enters through W₁ ∘ (Kk S) and one product Q = W₁ (Kk S)'.  C and H follow
    # from K where every remaining θ is clear of 0 (REML, :func:`_direct`), and are products
    # elsewhere.  Every sum runs within a feature (never a GEMM across features, whose
    # blocking would make the result depend on how many features share a chunk).
    from ._kernels import derivative_sums  # numba, loaded at the first fit only

    hessian = order == 2
    rest = np.flatnonzero(~_direct(scale, qr, reml, bad))
    slot = np.full(m, -1)
    slot[rest] = np.arange(rest.size)
    B_rest = A_t[rest, :qr] * scale[rest, None, :]
    C_in = B_rest @ Kk[rest]
    H_in = C_in @ B_rest.transpose(0, 2, 1) if hessian else C_in
    W1 = W[:, 1]
    W2, QT = W1, W1  # read only for the Hessian
    if hessian:
        W2 = W[:, 2]
        KS = np.multiply(Kk, scale[:, None, :], out=_scratch("KS", square))
        QT = np.matmul(KS, W1, out=_scratch("Q", square))  # Q' for Q = W₁ (Kk S)'
    sums = np.empty((m, 6, k, k))
    derivative_sums(
        A_t, Om, K, Kk, W1, W2, QT, scale, rest_terms, slot, C_in, H_in, qr, hessian, sums
    )
    tr_D = np.diagonal(sums[:, 0], axis1=1, axis2=2)  # tr(Kk D_a)
    vDv = np.diagonal(sums[:, 1], axis1=1, axis2=2)  # v'D_a v
    d_ell = np.zeros((m, k))
    d_ell[:, 0] = (red.mult * 2.0 * t1 * c / den).sum(axis=1)
    grad = d_ell + tr_D + (w * r2)[:, None] * vDv
    grad[bad] = np.nan
    if order == 1:
        return crit, grad, None

    # tr(Kk D_a Kk D_b), tr(Kk D_ab), v'D_ab v and (D_a v)'K(D_b v).
    tr_DD, tr_D2, vD2v, cross = sums[:, 2], sums[:, 3], sums[:, 4], sums[:, 5]
    extra = np.zeros((m, k, k))
    extra[:, 0, 0] = (red.mult * 2.0 * c * (1.0 - sq) / den**2).sum(axis=1)
    wr2 = (w * r2)[:, None, None]
    hess = (
        extra
        + tr_D2
        - tr_DD
        + wr2 * (vD2v - 2.0 * cross)
        + wr2 * r2[:, None, None] * vDv[:, :, None] * vDv[:, None, :]
    )
    hess[bad] = np.nan
    return crit, grad, hess


def _direct(scale: np.ndarray, qr: int, reml: bool, bad: np.ndarray) -> np.ndarray:
    """Features whose ``C = B Kk`` and ``H = C B'`` follow from ``K`` alone.

    For REML ``Kk = K = Ω̃⁻¹`` and ``S B = S Ã S = Ω̃ − J`` (``J`` the identity on the remaining
    terms' rows), so ``C = S⁻¹(I − J K)`` and ``S H S = Ω̃ − 2J + JKJ`` without a product,
    where every θ of the rest is clear of 0 (the division loses ``ε/θ²`` relative).
    """
    if not reml:
        return np.zeros(scale.shape[0], dtype=bool)
    return ~bad & np.all(scale[:, :qr] > _DIRECT_ABOVE, axis=1)


def estimates(
    theta: np.ndarray,
    cross: Cross,
    layout: Layout,
    n_obs: np.ndarray,
    p_eff: np.ndarray,
    reml: bool,
    red: Reduced | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """β̂, SE(β̂), BLUPs Λũ (elimination order) and σ̂² at θ, through the same elimination.

    The reduced system ``Ω̃`` is the Schur complement of term 1's diagonal block ``D₁ = I +
    θ₁² diag(c)`` in ``Ω``: its leading block solves for ``x = (ũ_r, β̂)``, the β block of its
    inverse is ``Cov(β̂)/σ̂²``, and term 1's modes follow by back-substitution,
    ``ũ₁ = θ₁ (A_1y − A_1r S_r x) / D₁``.  ``red`` is :func:`reduce` of ``cross``, by level
    or by count class (reduced here by level if not given).
    """
    m = cross.n_features
    k = layout.n_theta
    q1 = layout.sizes[0] if k else 0
    qr = layout.q - q1
    scale = np.ones((m, layout.dim - q1))
    scale[:, :qr] = theta[:, layout.term_of()[q1:]]
    if red is None:
        red = reduce(cross, replace(layout, count_classes=0))
    if k:
        t1 = theta[:, :1]
        A_t = red.eliminated(t1**2 / (1.0 + t1**2 * red.counts))
    else:
        A_t = red.A
    Om = A_t * scale[:, None, :] * scale[:, :, None]
    sol, se, sigma2 = solve_reduced(Om, qr, n_obs, p_eff, reml)
    x = scale[:, :-1] * sol  # S_r x: the unscaled (Λ_r ũ_r, β̂)
    blup = np.empty((m, layout.q))
    blup[:, q1:] = x[:, :qr]
    if k:
        den = 1.0 + t1**2 * cross.first[:, :, 0, 0]
        u1 = t1 * cross.times(np.concatenate([-x, np.ones((m, 1))], axis=1)) / den
        blup[:, :q1] = t1 * u1
    return sol[:, qr:], se, blup, sigma2


def solve_reduced(
    Om: np.ndarray, qr: int, n_obs: np.ndarray, p_eff: np.ndarray, reml: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solution ``x = (ũ_r, β̂)``, SE(β̂) and σ̂² from a reduced system ``Ω̃`` (without its ``+I``).

    The leading block of ``Ω̃ + diag(I_qr, 0, 0)`` solves the penalized normal equations, the
    response's pivot gives ``r²`` and the β block of the leading block's inverse is
    ``Cov(β̂)/σ̂²``.
    """
    if Om.shape[1] - 1 >= _LAPACK_FROM:
        sol, var, r2 = _solve_each(Om, qr)
    else:
        inv, sol, r2 = solve_leading(Om, qr)
        var = np.diagonal(inv, axis1=1, axis2=2)[:, qr:]
    sigma2 = r2 / ((n_obs - p_eff) if reml else n_obs)
    # A numerically singular system (θ → ∞ with σ² → 0) can give a negative variance: no SE.
    var_beta = sigma2[:, None] * var
    return sol, np.sqrt(np.where(var_beta >= 0.0, var_beta, np.nan)), sigma2


def _solve_each(Om: np.ndarray, qr: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`solve_leading`'s ``x`` and ``r²`` and the β block's diagonal of ``P``, per matrix.

    With ``L`` the leading block's Cholesky factor, ``x`` takes two triangular solves and the β
    block of ``P`` is ``(L₂₂ L₂₂')⁻¹`` (``L₂₂`` its trailing block), so ``P`` itself is never
    formed.  What fails to factor is inverted by LU, as in :func:`solve_leading`.
    """
    idx = np.arange(qr)
    Om[:, idx, idx] += 1.0
    m, n = Om.shape[0], Om.shape[1] - 1
    sol, var = np.empty((m, n)), np.empty((m, n - qr))
    for i in range(m):
        lead, rhs = Om[i, :-1, :-1], Om[i, :-1, -1]
        L, info = lapack.dpotrf(lead, lower=1, clean=1)
        if info:
            inv = np.linalg.inv(lead)
            sol[i], var[i] = inv @ rhs, np.diagonal(inv)[qr:]
            continue
        sol[i] = lapack.dpotrs(L, rhs, lower=1)[0]
        var[i] = (lapack.dtrtri(L[qr:, qr:], lower=1)[0] ** 2).sum(axis=0)
    r2 = Om[:, -1, -1] - np.einsum("mi,mi->m", Om[:, -1, :-1], sol)
    return sol, var, r2


def solve_leading(Om: np.ndarray, qr: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse ``P`` of the leading block of ``Ω̃ + diag(I_qr, 0, 0)``, ``x = P Ω̃_·y``, ``r²``.

    ``Om`` is ``Ω̃`` without its identity, which is added in place.
    """
    idx = np.arange(qr)
    Om[:, idx, idx] += 1.0
    # From the Cholesky factor of the leading block (a batched triangular inverse is a few
    # times faster than LU's inverse); what fails to factor (θ → ∞, numerically singular) is
    # inverted by LU.
    L, ok = _batched_cholesky(Om[:, :-1, :-1])
    Linv = triangular_inverse(np.where(ok[:, None, None], L, np.eye(L.shape[1])))
    inv = np.matmul(Linv.transpose(0, 2, 1), Linv)
    if not ok.all():
        inv[~ok] = np.linalg.inv(Om[~ok, :-1, :-1])
    sol = np.einsum("mij,mj->mi", inv, Om[:, :-1, -1])
    r2 = Om[:, -1, -1] - np.einsum("mi,mi->m", Om[:, -1, :-1], sol)
    return inv, sol, r2
