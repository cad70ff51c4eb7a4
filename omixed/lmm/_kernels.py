"""Compiled loops of the engine (numba): its sparse sums and the criterion's derivative pass.

Each kernel runs feature by feature and, within a feature, over its data rows, places or matrix
entries in a fixed order, so a feature's result is the same bitwise whatever the chunk it is
in.  numpy needs a gather, an index computation and a scatter per pass for the sparse sums
(``bincount``, or a scipy sparse product with its transposes): measured on 1000-sample cohorts,
5-10 times the time of these loops, which touch each input once.  The derivatives' traces took
about 30 numpy passes over each feature's dense matrices; :func:`derivative_sums` makes one.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["class_sums", "cross_products", "derivative_sums", "level_sums"]


@njit(cache=True, nogil=True)
def cross_products(
    Y, W, codes, z, indptr, indices, data, x_place, y_place, order, first, rows, rest
):
    """Add every observed row's products into ``first``, ``rows`` and ``rest`` (see _crossprod).

    Row ``r`` has term 1's level ``codes[r]`` with values ``z[r]`` (b components) and the rest's
    entries ``indices/data[indptr[r]:indptr[r + 1]]``; ``x_place[k, a]`` is the place of its
    ``k``-th entry against component ``a`` in ``rows``, ``y_place[r, a]`` that of the response.
    Rows are added in ``order``.
    """
    m = Y.shape[0]
    b = z.shape[1]
    d = rest.shape[1] - 1
    for f in range(m):
        for r in order:
            w = W[f, r]
            if w == 0.0:
                continue
            wy = w * Y[f, r]
            level = codes[r]
            for a in range(b):
                za = z[r, a]
                for c in range(b):
                    first[f, level, a, c] += w * za * z[r, c]
                rows[f, y_place[r, a]] += wy * za
            for k in range(indptr[r], indptr[r + 1]):
                j = indices[k]
                wv = w * data[k]
                for a in range(b):
                    rows[f, x_place[k, a]] += wv * z[r, a]
                for k2 in range(indptr[r], indptr[r + 1]):
                    rest[f, j, indices[k2]] += wv * data[k2]
                rest[f, j, d] += wy * data[k]
                rest[f, d, j] += wy * data[k]
            rest[f, d, d] += wy * Y[f, r]


@njit(cache=True, nogil=True)
def level_sums(rows, s, row_level, row_col, e1, e2, out):
    """``out[f, j] = Σ_t s[f, j, level_t] rows[f, e1_t] rows[f, e2_t]`` at both places of t.

    Triple ``t`` pairs the places ``e1_t ≤ e2_t`` of one level (``row_level``) at rest columns
    ``j1, j2`` (``row_col``); its product lands at ``(j1, j2)`` and ``(j2, j1)`` of ``out``
    ``(m, J, dr²)``, once on the diagonal.  ``out`` is zeroed here.
    """
    m, n_j = s.shape[0], s.shape[1]
    dr = np.int64(np.sqrt(out.shape[2]) + 0.5)
    out[:] = 0.0
    for f in range(m):
        for t in range(e1.size):
            a, b = e1[t], e2[t]
            v = rows[f, a] * rows[f, b]
            if v == 0.0:
                continue
            lv, j1, j2 = row_level[a], row_col[a], row_col[b]
            for j in range(n_j):
                x = s[f, j, lv] * v
                out[f, j, j1 * dr + j2] += x
                if j1 != j2:
                    out[f, j, j2 * dr + j1] += x


@njit(cache=True, nogil=True)
def class_sums(rows, member, row_level, row_col, e1, e2, out):
    """``out[f, k]``: the products of the triples whose level is in class ``member[f, level]``."""
    dr = np.int64(np.sqrt(out.shape[2]) + 0.5)
    out[:] = 0.0
    for f in range(rows.shape[0]):
        for t in range(e1.size):
            a, b = e1[t], e2[t]
            v = rows[f, a] * rows[f, b]
            if v == 0.0:
                continue
            k, j1, j2 = member[f, row_level[a]], row_col[a], row_col[b]
            out[f, k, j1 * dr + j2] += v
            if j1 != j2:
                out[f, k, j2 * dr + j1] += v


@njit(cache=True, nogil=True)
def derivative_sums(A, Om, K, Kk, W1, W2, QT, scale, term, slot, C_in, H_in, qr, hessian, out):
    """The traces and quadratic forms of the criterion's derivatives (see ``_objective``).

    Per feature, from ``Ã`` (``A``), ``Ω̃`` (``Om``, with its ``+I``), ``K = Ω̃⁻¹``, ``Kk``,
    ``W₁``, ``W₂``, ``QT = Q' = Kk S W₁`` and the scales ``S``: ``term[i]`` is the term (≥ 1) of
    remaining column ``i < qr`` (each term's columns together, in order); ``C = Ã S Kk`` and
    ``H = C S Ã`` on the remaining rows are read from ``C_in[slot]``/``H_in[slot]`` where
    ``slot ≥ 0`` and otherwise follow from ``K`` (REML with every remaining θ clear of 0:
    ``C = S⁻¹(I − K)``, ``S H S = Ω̃ − 2I + K``).  ``out[f]`` receives, per term pair
    ``(k, k)``: 0 tr(Kk D_a), 1 v'D_a v (diagonals), 2 tr(Kk D_a Kk D_b), 3 tr(Kk D_ab),
    4 v'D_ab v, 5 (D_a v)'K(D_b v).  Term 0 is the eliminated one (its D_0 = −S W₁ S); ``W₂``,
    ``QT`` and ``H_in`` are read only for the Hessian.  The symmetric ``K``, ``Kk``, ``Ω̃``,
    ``Ã`` and ``W`` are read along rows only, and every inner loop runs over one term's
    contiguous columns without branches.
    """
    m, dr = A.shape[0], A.shape[1]
    k = out.shape[2]
    lo = np.zeros(k, dtype=np.int64)  # term b's columns are lo[b]:hi[b]
    hi = np.zeros(k, dtype=np.int64)
    for j in range(qr - 1, -1, -1):
        lo[term[j]] = j
    for j in range(qr):
        hi[term[j]] = j + 1
    v = np.empty(dr)
    Sv = np.empty(dr)
    inv_s = np.ones(dr)
    Bv = np.empty(dr)
    W1Sv = np.empty(dr)
    AEv = np.zeros((dr, k))
    Dv = np.empty((k, dr))
    for f in range(m):
        s = scale[f]
        o = out[f]
        o[:] = 0.0
        g = slot[f]
        for i in range(dr):
            v[i] = K[f, dr - 1, i]
            Sv[i] = s[i] * v[i]
        if g < 0:  # every remaining θ is clear of 0 here
            for i in range(qr):
                inv_s[i] = 1.0 / s[i]
        for i in range(dr):
            bv, w1 = 0.0, 0.0
            for j in range(dr):
                bv += A[f, i, j] * Sv[j]
                w1 += W1[f, i, j] * Sv[j]
            Bv[i], W1Sv[i] = bv, w1
            for b in range(1, k):
                x = 0.0
                for j in range(lo[b], hi[b]):
                    x += A[f, i, j] * v[j]
                AEv[i, b] = x
        for i in range(dr):
            r1 = 0.0
            for j in range(dr):
                r1 += W1[f, i, j] * Kk[f, i, j] * s[j]
            o[0, 0, 0] -= s[i] * r1
            o[1, 0, 0] -= Sv[i] * W1Sv[i]
            if i >= qr:
                continue
            a = term[i]
            c_ii = C_in[g, i, i] if g >= 0 else (1.0 - K[f, i, i]) * inv_s[i]
            o[0, a, a] += 2.0 * c_ii
            o[1, a, a] += 2.0 * v[i] * Bv[i]
            if not hessian:
                continue
            o[3, 0, a] -= 2.0 * r1
            o[4, 0, a] -= 2.0 * v[i] * W1Sv[i]
            csq = 0.0
            if g >= 0:
                for j in range(dr):
                    csq += C_in[g, i, j] * s[j] * QT[f, i, j]
            else:  # C_ij = (δ_ij − K_ij)/s_i
                for j in range(dr):
                    csq -= K[f, i, j] * s[j] * QT[f, i, j]
                csq = (csq + s[i] * QT[f, i, i]) * inv_s[i]
            o[2, 0, a] -= 2.0 * csq
            for b in range(1, k):
                t2, t3, t4 = 0.0, 0.0, 0.0
                if g >= 0:
                    for j in range(lo[b], hi[b]):
                        kk = Kk[f, i, j]
                        t2 += C_in[g, i, j] * C_in[g, j, i] + kk * H_in[g, i, j]
                        t3 += kk * A[f, i, j]
                        t4 += A[f, i, j] * v[j]
                else:  # K symmetric, S H S = Ω̃ − 2I + K: the identity's part follows
                    for j in range(lo[b], hi[b]):
                        kk = K[f, i, j]
                        t2 += kk * (2.0 * kk + Om[f, i, j]) * inv_s[j]
                        t3 += kk * A[f, i, j]
                        t4 += A[f, i, j] * v[j]
                    t2 *= inv_s[i]
                    if b == a:
                        t2 += (1.0 - 4.0 * K[f, i, i]) * inv_s[i] * inv_s[i]
                o[2, a, b] += 2.0 * t2
                o[3, a, b] += 2.0 * t3
                o[4, a, b] += 2.0 * v[i] * t4
        if not hessian:
            continue
        for i in range(dr):
            r2, w2, q2 = 0.0, 0.0, 0.0
            for j in range(dr):
                r2 += W2[f, i, j] * Kk[f, i, j] * s[j]
                w2 += W2[f, i, j] * Sv[j]
                q2 += QT[f, j, i] * s[j] * QT[f, i, j]
            o[3, 0, 0] -= s[i] * r2
            o[4, 0, 0] -= Sv[i] * w2
            o[2, 0, 0] += s[i] * q2
        for i in range(dr):
            Dv[0, i] = -s[i] * W1Sv[i]
            for b in range(1, k):
                Dv[b, i] = s[i] * AEv[i, b]
        for b in range(1, k):
            for i in range(lo[b], hi[b]):
                Dv[b, i] += Bv[i]
        for a in range(k):
            for i in range(dr):
                kd = 0.0
                for j in range(dr):
                    kd += K[f, i, j] * Dv[a, j]
                for b in range(k):
                    o[5, b, a] += Dv[b, i] * kd
        for x in (2, 3, 4):
            for b in range(1, k):
                o[x, b, 0] = o[x, 0, b]
