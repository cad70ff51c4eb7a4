"""Exact shortcut for one random-intercept term and complete data: a 1-D problem per feature.

With ``V = I + λ ZZ'`` (``λ = θ²``) and ``Q₂`` an orthonormal basis of the complement of
``col(X)``, one eigendecomposition ``Q₂'ZZ'Q₂ = U diag(s) U'`` shared by every feature with the
same (complete) rows turns the criterion into a function of the scalar λ::

    log|M| + log|R_X|² = log|X'X| + Σ_i log(1 + λ s_i)
    r²(λ)              = Σ_i w_i² / (1 + λ s_i) + ρ,       w = U_r' Q₂' y

where only the ``r ≤ q`` non-zero ``s_i`` enter the sums and ``ρ`` is the part of ``‖Q₂'y‖²``
outside their span.  REML is ``log|X'X| + Σ log(1 + λ s_i) + ν (1 + log(2π r²/ν))``; ML uses
``log|M| = Σ_l log(1 + λ c_l)`` over the level counts ``c_l`` and ``n`` instead of ``ν``.
Every feature is minimised over λ ≥ 0 at once: a log-spaced grid brackets the minimum, then a
safeguarded Newton iteration (analytic first and second derivatives) polishes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Spectral", "spectral_fit"]

_LOG2PI = np.log(2.0 * np.pi)
_GRID = np.concatenate([[0.0], np.logspace(-6, 6, 25)])  # half-decade steps bracket the minimum


@dataclass(frozen=True)
class Spectral:
    """The design-only pieces: projection onto the eigenvectors and the eigenvalues."""

    P: np.ndarray  # n × r, Q₂ U_r
    Q1: np.ndarray  # n × p, orthonormal basis of col(X)
    s: np.ndarray  # r non-zero eigenvalues of Q₂'ZZ'Q₂
    counts: np.ndarray  # level counts (for the ML log|M|)
    logdet_xtx: float
    n: int
    p: int

    @classmethod
    def from_term(cls, X: np.ndarray, codes: np.ndarray, values: np.ndarray) -> Spectral:
        """From ``X`` and the term's level ``codes`` and row ``values`` (1, or a slope).

        ``Q₂'ZZ'Q₂`` has the non-zero eigenvalues of the ``q × q`` matrix ``Z'Z − (Z'Q₁)(Z'Q₁)'``
        (``Q₁`` an orthonormal basis of ``col(X)``), whose eigenvectors ``V`` give ``Q₂U =
        (I − Q₁Q₁')ZV s^(−1/2)``: no ``n × n`` basis and no dense ``Z``.
        """
        n, p = X.shape
        q = int(codes.max(initial=-1)) + 1
        Q1, R = np.linalg.qr(X)
        ZtQ1 = np.zeros((q, p))
        np.add.at(ZtQ1, codes, values[:, None] * Q1)
        counts = np.bincount(codes, weights=values * values, minlength=q)  # diag of Z'Z
        s, V = np.linalg.eigh(np.diag(counts) - ZtQ1 @ ZtQ1.T)
        keep = s > 1e-12 * max(s.max(initial=0.0), 1.0)
        ZV = values[:, None] * V[codes][:, keep]
        P = (ZV - Q1 @ (ZtQ1.T @ V[:, keep])) / np.sqrt(s[keep])
        logdet = 2.0 * float(np.log(np.abs(np.diag(R))).sum())
        return cls(P, Q1, s[keep], counts, logdet, n, p)


def _objective(lam, w2, rest, sp: Spectral, reml: bool, derivatives: bool = True):
    """Criterion (without constants) and its first two derivatives in λ.

    ``lam`` is ``(m,)`` or ``(m, G)`` (a grid per feature).  The sums over the few eigenvalues
    are written as loops of whole-array operations: a reduction over a length-r axis costs more
    per element than the arithmetic.
    """
    shape = (-1,) + (1,) * (lam.ndim - 1)
    dof = sp.n - sp.p if reml else sp.n
    r2 = rest.reshape(shape) + 0.0 * lam
    logdet = np.zeros_like(lam)
    if not derivatives:
        for i, s_i in enumerate(sp.s):
            r2 += w2[:, i].reshape(shape) / (1.0 + lam * s_i)
        for e in sp.s if reml else sp.counts:
            logdet += np.log1p(lam * e)
        return logdet + dof * np.log(r2), None, None
    r2_1 = np.zeros_like(lam)
    r2_2 = np.zeros_like(lam)
    for i, s_i in enumerate(sp.s):
        g = 1.0 / (1.0 + lam * s_i)
        a = w2[:, i].reshape(shape) * g
        r2 += a
        r2_1 -= a * s_i * g
        r2_2 += 2.0 * a * (s_i * g) ** 2
    d1 = np.zeros_like(lam)
    d2 = np.zeros_like(lam)
    for e in sp.s if reml else sp.counts:
        g = e / (1.0 + lam * e)
        logdet += np.log1p(lam * e)
        d1 += g
        d2 -= g * g
    f = logdet + dof * np.log(r2)
    f1 = d1 + dof * r2_1 / r2
    f2 = d2 + dof * (r2_2 / r2 - (r2_1 / r2) ** 2)
    return f, f1, f2


def spectral_fit(
    Ys: np.ndarray, sp: Spectral, reml: bool, *, max_iter: int = 60
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """θ, criterion and convergence for complete features ``Ys`` (features × rows)."""
    m = Ys.shape[0]
    w = np.einsum("fn,nr->fr", Ys, sp.P)
    z1 = np.einsum("fn,np->fp", Ys, sp.Q1)
    total = (Ys * Ys).sum(axis=1) - (z1 * z1).sum(axis=1)
    w2 = w * w
    rest = np.maximum(total - w2.sum(axis=1), 0.0)

    grid_f, _, _ = _objective(np.broadcast_to(_GRID, (m, _GRID.size)), w2, rest, sp, reml, False)
    best = np.argmin(grid_f, axis=1)
    lo = _GRID[np.maximum(best - 1, 0)]
    hi = np.where(best + 1 < _GRID.size, _GRID[np.minimum(best + 1, _GRID.size - 1)], np.inf)
    lam = _GRID[best]
    f, f1, f2 = _objective(lam, w2, rest, sp, reml)
    at_zero = (lam == 0.0) & (f1 >= 0.0)
    done = at_zero.copy()
    for _ in range(max_iter):
        active = np.flatnonzero(~done)
        if active.size == 0:
            break
        la, ga, ha = lam[active], f1[active], f2[active]
        lo[active] = np.where(ga > 0, lo[active], la)
        hi[active] = np.where(ga > 0, la, hi[active])
        newton = la - ga / np.where(ha > 0, ha, np.nan)
        mid = np.where(np.isfinite(hi[active]), 0.5 * (lo[active] + hi[active]), 2.0 * la + 1.0)
        inside = np.isfinite(newton) & (newton > lo[active]) & (newton < hi[active])
        new = np.where(inside, newton, mid)
        fn, gn, hn = _objective(new, w2[active], rest[active], sp, reml)
        small = np.abs(new - la) <= 1e-10 * (1.0 + la)
        lam[active], f[active], f1[active], f2[active] = new, fn, gn, hn
        done[active[small | (np.abs(gn) <= 1e-12 * (1.0 + np.abs(fn)))]] = True
    # λ = 0 may beat an interior point the iteration stopped at (flat criterion).
    f0 = grid_f[:, 0]
    zero = at_zero | (f0 <= f)
    lam = np.where(zero, 0.0, lam)
    f = np.where(zero, f0, f)
    if reml:
        dof = sp.n - sp.p
        const = sp.logdet_xtx + dof * (1.0 + _LOG2PI - np.log(dof))
    else:
        const = sp.n * (1.0 + _LOG2PI - np.log(sp.n))
    return np.sqrt(lam)[:, None], f + const, done | zero
