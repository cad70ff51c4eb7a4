"""Bounded Newton minimization of many small problems at once.

Every feature has its own θ (a handful of parameters, θ ≥ 0); one loop steps all features that
have not yet converged together.  The Hessian comes from forward differences of the analytic
gradient, is made positive definite by clipping its eigenvalues, and the step is a projected
Newton step (coordinates at the bound whose gradient pushes outward stay fixed) with a
backtracking line search.  Features leave the loop when the criterion stops improving.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["OptSummary", "minimize"]

Objective = Callable[[np.ndarray, np.ndarray, bool], tuple[np.ndarray, np.ndarray | None]]


@dataclass
class OptSummary:
    """How the optimization went, per feature (like MixedModels.jl's ``OptSummary``)."""

    theta0: np.ndarray
    theta: np.ndarray
    fmin: np.ndarray
    n_iter: np.ndarray
    n_eval: np.ndarray
    converged: np.ndarray
    message: np.ndarray


def minimize(
    objective: Objective,
    starts: np.ndarray,
    fixed: np.ndarray,
    *,
    max_iter: int = 200,
    ftol: float = 1e-10,
    xtol: float = 1e-7,
    fd_step: float = 1e-6,
) -> OptSummary:
    """Minimize ``objective`` for every feature subject to ``θ ≥ 0``.

    Parameters
    ----------
    objective
        ``objective(theta, rows, gradient)`` → ``(f, g)`` for the features ``rows``.
    starts
        ``(n_starts, m, k)`` candidate starting points; each feature starts from its best.
    fixed
        ``(m, k)`` coordinates held at 0 (e.g. a term with a single observed level).
    ftol, xtol
        A feature has converged when one Newton step lowers its criterion by less than
        ``ftol·(1 + |f|)`` and changes θ by less than ``xtol·(1 + |θ|)`` (or its projected
        gradient vanishes).
    """
    n_starts, m, k = starts.shape
    everyone = np.arange(m)
    best_f = np.full(m, np.inf)
    theta = np.zeros((m, k))
    n_eval = np.zeros(m, dtype=np.int64)
    for s in range(n_starts):
        cand = np.where(fixed, 0.0, starts[s])
        f, _ = objective(cand, everyone, False)
        n_eval += 1
        better = f < best_f
        best_f = np.where(better, f, best_f)
        theta[better] = cand[better]
    theta0 = theta.copy()

    f, g = objective(theta, everyone, True)
    n_eval += 1
    n_iter = np.zeros(m, dtype=np.int64)
    converged = np.zeros(m, dtype=bool)
    message = np.full(m, "", dtype=object)
    failed = ~np.isfinite(f)
    message[failed] = "criterion not finite at any starting value"
    active = np.flatnonzero(~failed)

    for _ in range(max_iter):
        if active.size == 0:
            break
        th, fa, ga, fx = theta[active], f[active], g[active], fixed[active]
        n_iter[active] += 1
        step, at_bound = _newton_direction(objective, active, th, ga, fx, fd_step)
        n_eval[active] += k

        # Backtracking line search along the projected path, all features together.
        t = np.ones(active.size)
        new_th, new_f, new_g = th.copy(), fa.copy(), ga.copy()
        pending = np.arange(active.size)
        for _ls in range(40):
            trial = np.maximum(th[pending] + t[pending, None] * step[pending], 0.0)
            ft, gt = objective(trial, active[pending], True)
            n_eval[active[pending]] += 1
            decrease = np.einsum("ij,ij->i", ga[pending], trial - th[pending])
            accept = np.isfinite(ft) & (ft <= fa[pending] + 1e-4 * np.minimum(decrease, 0.0))
            done = pending[accept]
            new_th[done], new_f[done], new_g[done] = trial[accept], ft[accept], gt[accept]
            pending = pending[~accept]
            if pending.size == 0:
                break
            t[pending] *= 0.5

        stuck = np.zeros(active.size, dtype=bool)
        stuck[pending] = True
        df = fa - new_f
        dx = np.abs(new_th - th).max(axis=1)
        pg = np.where(at_bound, 0.0, np.abs(ga)).max(axis=1)
        small = (df <= ftol * (1.0 + np.abs(fa))) & (
            (dx <= xtol * (1.0 + np.abs(th).max(axis=1))) | (pg <= 1e-6)
        )
        # A failed line search means no representable decrease along a descent direction: the
        # optimum to machine precision when the gradient is small, a failure otherwise.
        lost = stuck & ~small & (pg > 1e-3 * (1.0 + np.abs(fa)))
        theta[active], f[active], g[active] = new_th, new_f, new_g
        converged[active[(small | stuck) & ~lost]] = True
        message[active[lost]] = "line search found no decrease"
        active = active[~(small | stuck)]

    message[active] = f"no convergence after {max_iter} iterations"
    return OptSummary(theta0, theta, f, n_iter, n_eval, converged, message)


def _newton_direction(
    objective: Objective,
    rows: np.ndarray,
    theta: np.ndarray,
    grad: np.ndarray,
    fixed: np.ndarray,
    fd_step: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Projected Newton direction with a finite-difference Hessian made positive definite.

    The criterion depends on θ only through θ², so at θ_j = 0 its gradient vanishes and the
    bound is optimal exactly when the curvature there is non-negative (the gradient in θ_j² is
    half that curvature).  Coordinates at 0 with negative curvature are pushed back inside.

    Returns the direction and the mask of coordinates held at the bound.
    """
    m, k = theta.shape
    hess = np.empty((m, k, k))
    for j in range(k):
        h = fd_step * np.maximum(1.0, theta[:, j])
        shifted = theta.copy()
        shifted[:, j] += h
        _, gj = objective(shifted, rows, True)
        hess[:, :, j] = (gj - grad) / h[:, None]
    hess = 0.5 * (hess + hess.transpose(0, 2, 1))
    curvature = np.diagonal(hess, axis1=1, axis2=2)
    at_zero = theta <= 0.0
    flat = np.abs(grad) <= 1e-12 * (1.0 + np.abs(curvature))
    escape = at_zero & flat & (curvature < 0.0) & ~fixed
    at_bound = fixed | (at_zero & ~escape & ((grad > 0.0) | flat))
    free = ~at_bound
    hess = np.where(free[:, :, None] & free[:, None, :], hess, 0.0)
    hess[:, np.arange(k), np.arange(k)] += at_bound
    hess = np.where(np.isfinite(hess), hess, 0.0)
    evals, evecs = np.linalg.eigh(hess)
    floor = 1e-8 * np.maximum(1.0, np.abs(evals).max(axis=1, keepdims=True))
    evals = np.maximum(np.abs(evals), floor)
    g_free = np.where(free, grad, 0.0)
    coef = np.einsum("mji,mj->mi", evecs, g_free) / evals
    step = -np.einsum("mij,mj->mi", evecs, coef)
    step[escape] = np.maximum(step[escape], 1.0)  # the line search shortens it as needed
    return step, at_bound
