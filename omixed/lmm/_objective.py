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
block of Ω is diagonal, ``D₁ = 1 + θ₁² c`` with ``c`` the level counts, so it is eliminated with
elementwise operations.  What remains is the same problem without term 1 and with ``A`` replaced
by ``Ã = A_rr − A_r1 diag(θ₁²/D₁) A_1r``; only this small Schur complement is factored densely.

Gradient.  With ``K = Sc⁻¹`` (``Sc`` the reduced Ω) and ``v = K e_last`` (so ``r² = 1/v_last``):
``∂ log|Sc_[k]| /∂θ_j = 2 Σ_{i∈j} (Ã S K_[k])_ii`` for a remaining term j, and
``∂ log r² /∂θ_j = 2 r² Σ_{i∈j} v_i (Ã S v)_i``; for the eliminated term
``∂Sc/∂θ₁ = −S A_r1 diag(2θ₁/D₁²) A_1r S``.  ``K_[k]``, the inverse of a leading block, is read
off the inverse of the triangular factor.

Parameters are packed as ``theta[f, j]`` in the *elimination order* of the terms; the caller maps
them back to formula order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Layout", "evaluate"]

_LOG2PI = np.log(2.0 * np.pi)


@dataclass(frozen=True)
class Layout:
    """Where each block sits in the augmented cross-product ``A``.

    ``sizes`` are the numbers of levels of the random terms in elimination order (largest
    first); ``p`` is the number of fixed effects; the response is the last row/column.
    """

    sizes: tuple[int, ...]
    p: int

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


def _batched_cholesky(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cholesky of a stack; matrices that are not positive definite give NaN instead of raising."""
    try:
        return np.linalg.cholesky(mat), np.ones(mat.shape[0], dtype=bool)
    except np.linalg.LinAlgError:
        ok = np.ones(mat.shape[0], dtype=bool)
        out = np.full_like(mat, np.nan)
        for i in range(mat.shape[0]):  # rare path: locate the failures
            try:
                out[i] = np.linalg.cholesky(mat[i])
            except np.linalg.LinAlgError:
                ok[i] = False
        return out, ok


def evaluate(
    theta: np.ndarray,
    A: np.ndarray,
    layout: Layout,
    n_obs: np.ndarray,
    p_eff: np.ndarray,
    *,
    reml: bool = True,
    gradient: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Profiled criterion (and its gradient in θ) for a stack of features.

    Parameters
    ----------
    theta
        ``(m, n_theta)`` relative standard deviations, elimination order.
    A
        ``(m, dim, dim)`` augmented cross-products ``[Z X y]' W [Z X y]``.
    layout
        Block sizes of ``A``.
    n_obs, p_eff
        Observations and estimable fixed effects per feature.
    reml
        REML criterion if true, else the ML deviance.
    gradient
        Also return ``∂ criterion / ∂θ``, shape ``(m, n_theta)``.

    Returns
    -------
    The criterion per feature (``inf`` where the system is not positive definite) and the
    gradient or ``None``.
    """
    m = A.shape[0]
    q1 = layout.sizes[0] if layout.sizes else 0
    qr = layout.q - q1  # random-effect columns left after eliminating term 1
    dr = layout.dim - q1

    theta = np.asarray(theta, dtype=np.float64)
    scale = np.ones((m, dr))
    rest_terms = layout.term_of()[q1:]
    if qr:
        scale[:, :qr] = theta[:, rest_terms]

    A_rr = A[:, q1:, q1:]
    if q1:
        t1 = theta[:, 0]
        counts = np.diagonal(A[:, :q1, :q1], axis1=1, axis2=2)
        D1 = 1.0 + t1[:, None] ** 2 * counts
        A_r1 = A[:, q1:, :q1]
        shrink = t1[:, None] ** 2 / D1
        A_tilde = A_rr - (A_r1 * shrink[:, None, :]) @ A_r1.transpose(0, 2, 1)
        logdet_D1 = np.log(D1).sum(axis=1)
    else:
        A_tilde = A_rr
        logdet_D1 = np.zeros(m)

    Sc = A_tilde * scale[:, :, None] * scale[:, None, :]
    idx = np.arange(qr)
    Sc[:, idx, idx] += 1.0
    L, ok = _batched_cholesky(Sc)
    diag = np.diagonal(L, axis1=1, axis2=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        logdiag = np.log(diag)
    r2 = diag[:, -1] ** 2
    logdet_M = logdet_D1 + 2.0 * logdiag[:, :qr].sum(axis=1)
    if reml:
        nu = n_obs - p_eff
        logdet_RX = 2.0 * logdiag[:, qr:-1].sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            crit = logdet_M + logdet_RX + nu * (1.0 + _LOG2PI + np.log(r2 / nu))
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            crit = logdet_M + n_obs * (1.0 + _LOG2PI + np.log(r2 / n_obs))
    bad = ~ok | ~np.isfinite(crit) | ~(r2 > 0)
    crit = np.where(bad, np.inf, crit)
    if not gradient:
        return crit, None

    grad = np.zeros((m, layout.n_theta))
    Lsafe = np.where(bad[:, None, None], np.eye(dr), L)
    Linv = np.linalg.inv(Lsafe)
    K = Linv.transpose(0, 2, 1) @ Linv  # Sc⁻¹
    k = dr if reml else qr  # leading block whose log-determinant enters the criterion
    Kk = np.zeros_like(K)
    Kk[:, :k, :k] = Linv[:, :k, :k].transpose(0, 2, 1) @ Linv[:, :k, :k]
    v = K[:, :, -1]
    r2s = np.where(bad, 1.0, r2)
    weight_r2 = (n_obs - p_eff - 1.0) if reml else n_obs.astype(np.float64)

    if qr:
        AS = A_tilde[:, :qr, :] * scale[:, None, :]
        d_logdet = 2.0 * np.einsum("mia,mai->mi", AS, Kk[:, :, :qr])
        d_logr2 = 2.0 * r2s[:, None] * v[:, :qr] * np.einsum("mia,ma->mi", AS, v)
        per_col = d_logdet + weight_r2[:, None] * d_logr2
        for j in range(1, layout.n_theta):
            grad[:, j] = per_col[:, rest_terms == j].sum(axis=1)
    if q1:
        G = A_r1.transpose(0, 2, 1) * scale[:, None, :]  # A_1r S, (m, q1, dr)
        dshrink = 2.0 * t1[:, None] / D1**2
        d_logdet = -(dshrink * np.einsum("mta,mta->mt", G @ Kk, G)).sum(axis=1)
        d_logr2 = -r2s * (dshrink * np.einsum("mta,ma->mt", G, v) ** 2).sum(axis=1)
        grad[:, 0] = (2.0 * t1[:, None] * counts / D1).sum(axis=1) + d_logdet + weight_r2 * d_logr2
    grad[bad] = np.nan
    return crit, grad
