"""The profiled criterion for correlated (vector-valued) random terms such as ``(x|g)``.

Notation as in :mod:`._objective`, with ``Λ`` no longer diagonal: a correlated term with
components ``a = 1..k`` (intercept, slopes) has a lower-triangular ``T`` (``k × k``) and
``b_{l,a} = Σ_{c ≤ a} T_ac u_{l,c}`` for every level ``l``.  Its parameters are the diagonal
``T_aa ≥ 0`` (one per component, like a scalar term's θ) and the free off-diagonals ``T_ac``.
With ``S = blockdiag(Λ, I_p, 1)`` (``S[r, c] = θ_j`` for the entries ``(r, c)`` of parameter
``j``) and ``Ω = S'AS + diag(I_q, 0, 0)``, the criterion comes from the Cholesky factor of
``Ω`` exactly as before.  The gradient follows from ``∂Ω/∂θ_j = E_j'AS + S'AE_j``
(``E_j = ∂S/∂θ_j``): ``∂ log|Ω_[k]| = 2 Σ_{(r,c)∈j} (K_k S'A)_cr`` and
``∂ log r² = 2 r² Σ_{(r,c)∈j} (ASv)_r v_c``; the Hessian from forward differences of it.
There is no block elimination here: the whole ``(q+p+1)``-square system is factored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._objective import factor_criterion

__all__ = ["DenseLayout", "dense_criterion", "lambda_matrix"]


@dataclass(frozen=True)
class DenseLayout:
    """Where each parameter sits in ``S``: entries ``(rows[i], cols[i])`` hold ``θ[which[i]]``."""

    q: int
    p: int
    rows: np.ndarray
    cols: np.ndarray
    which: np.ndarray
    lower: np.ndarray  # per parameter: 0 for a diagonal (an SD), -inf for an off-diagonal

    @property
    def dim(self) -> int:
        return self.q + self.p + 1

    @property
    def n_theta(self) -> int:
        return self.lower.size


def lambda_matrix(theta: np.ndarray, layout: DenseLayout) -> np.ndarray:
    """``S = blockdiag(Λ(θ), I_p, 1)`` for every feature, ``(m, dim, dim)``."""
    m = theta.shape[0]
    S = np.zeros((m, layout.dim, layout.dim))
    idx = np.arange(layout.q, layout.dim)
    S[:, idx, idx] = 1.0
    S[:, layout.rows, layout.cols] = theta[:, layout.which]
    return S


def dense_criterion(
    theta: np.ndarray,
    A: np.ndarray,
    n_obs: np.ndarray,
    p_eff: np.ndarray,
    layout: DenseLayout,
    *,
    reml: bool = True,
    order: int = 0,
    fd_step: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Criterion, gradient and (finite-difference) Hessian in θ; see the module notes."""
    crit, grad = _criterion_and_gradient(theta, A, n_obs, p_eff, layout, reml, order >= 1)
    if order < 2:
        return crit, grad, None
    m, k = theta.shape
    hess = np.empty((m, k, k))
    for j in range(k):
        h = fd_step * np.maximum(1.0, np.abs(theta[:, j]))
        shifted = theta.copy()
        shifted[:, j] += h
        _, gj = _criterion_and_gradient(shifted, A, n_obs, p_eff, layout, reml, True)
        hess[:, :, j] = (gj - grad) / h[:, None]
    return crit, grad, 0.5 * (hess + hess.transpose(0, 2, 1))


def _criterion_and_gradient(theta, A, n_obs, p_eff, layout: DenseLayout, reml: bool, gradient):
    q, dim = layout.q, layout.dim
    S = lambda_matrix(np.asarray(theta, dtype=np.float64), layout)
    AS = A @ S
    Om = S.transpose(0, 2, 1) @ AS
    crit, L, r2, bad = factor_criterion(Om, q, np.zeros(A.shape[0]), n_obs, p_eff, reml)
    nu = n_obs - p_eff
    if not gradient:
        return crit, None

    Linv = np.linalg.inv(np.where(bad[:, None, None], np.eye(dim), L))
    K = Linv.transpose(0, 2, 1) @ Linv
    k = dim if reml else q  # the leading block whose log-determinant enters the criterion
    Kk = np.zeros_like(K)
    Kk[:, :k, :k] = Linv[:, :k, :k].transpose(0, 2, 1) @ Linv[:, :k, :k]
    v = K[:, :, -1]
    r2 = np.where(bad, 1.0, r2)
    weight = (nu - 1.0) if reml else n_obs.astype(np.float64)
    P = Kk @ AS.transpose(0, 2, 1)  # K_k S'A
    ASv = np.einsum("mij,mj->mi", AS, v)
    entries = 2.0 * P[:, layout.cols, layout.rows] + weight[:, None] * 2.0 * r2[:, None] * (
        ASv[:, layout.rows] * v[:, layout.cols]
    )
    grad = np.stack(
        [entries[:, layout.which == j].sum(axis=1) for j in range(layout.n_theta)], axis=1
    )
    grad[bad] = np.nan
    return crit, grad
