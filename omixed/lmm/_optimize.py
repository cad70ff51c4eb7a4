"""Bounded Newton minimization of many small problems at once.

Every feature has its own θ (a handful of parameters, θ ≥ 0); one loop steps all features that
have not yet converged together.  The objective returns the criterion with its analytic
gradient and Hessian; the Hessian is made positive definite by clipping its eigenvalues, and the
step is a projected Newton step (coordinates at the bound whose gradient pushes outward stay
fixed) with a backtracking line search.  Every trial point is evaluated to second order, so an
accepted step already carries the next iteration's Hessian: one batched evaluation per
iteration when the full step is accepted.  Features leave the loop when the criterion stops
improving, or with a last Newton step short enough to be exact to xtol (its criterion is then
evaluated, in one batch at the end).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["OptSummary", "minimize"]

# Backtracking below the interpolated step: three batches of halvings, down to 2⁻³⁹ of it.
_LADDERS = tuple(0.5 ** np.arange(1 + 13 * i, 14 + 13 * i) for i in range(3))

_AT_ZERO = 1e-8
_ESCAPE_BELOW = 1e-2
# A Newton step this short (relative to 1 + |θ|) is taken as the last one (see minimize).
_LAST_STEP = 1e-4

Objective = Callable[
    [np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray | None, np.ndarray | None]
]


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
    lower: np.ndarray | None = None,
) -> OptSummary:
    """Minimize ``objective`` for every feature subject to ``θ ≥ lower`` (default 0).

    Parameters
    ----------
    objective
        ``objective(theta, rows, order)`` → ``(f, g, H)`` for the features ``rows`` (``rows``
        may repeat a feature); ``g`` and ``H`` are ``None`` below ``order`` 1 and 2.
    starts
        ``(n_starts, m, k)`` candidate starting points; each feature starts from its best.
    fixed
        ``(m, k)`` coordinates held at 0 (e.g. a term with a single observed level).
    ftol, xtol
        A feature has converged when one Newton step lowers its criterion by less than
        ``ftol·(1 + |f|)`` and changes θ by less than ``xtol·(1 + |θ|)`` (or its projected
        gradient vanishes).
    lower
        ``(k,)`` bounds: 0 for standard deviations, ``-inf`` for free parameters (the
        off-diagonals of a correlated term's factor).
    """
    n_starts, m, k = starts.shape
    lower = np.zeros(k) if lower is None else np.asarray(lower, dtype=np.float64)
    everyone = np.arange(m)
    # All starting points in one batched evaluation (nothing to choose from a single one).
    cand = np.where(fixed, 0.0, starts).reshape(n_starts * m, k)
    if n_starts > 1:
        f_all, _, _ = objective(cand, np.tile(everyone, n_starts), 0)
        f_all = np.where(np.isnan(f_all), np.inf, f_all).reshape(n_starts, m)
        best = np.argmin(f_all, axis=0)  # the first of equal values
    else:
        best = np.zeros(m, dtype=np.int64)
    theta = cand.reshape(n_starts, m, k)[best, everyone]
    theta0 = theta.copy()
    n_eval = np.full(m, n_starts if n_starts > 1 else 0, dtype=np.int64)

    f, g, hess = objective(theta, everyone, 2)
    n_eval += 1
    n_iter = np.zeros(m, dtype=np.int64)
    converged = np.zeros(m, dtype=bool)
    message = np.full(m, "", dtype=object)
    finishing: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    failed = ~np.isfinite(f)
    message[failed] = "criterion not finite at any starting value"
    active = np.flatnonzero(~failed)

    for _ in range(max_iter):
        if active.size == 0:
            break
        step, at_bound, newton = _newton_direction(
            theta[active], g[active], hess[active], fixed[active], lower
        )
        # Converged where the Newton model predicts no further progress: a step below xtol
        # that would lower the criterion by less than ftol.  Near the optimum Newton's model
        # is exact to second order, so this saves the evaluation that would confirm it.
        predicted = -0.5 * np.einsum("ij,ij->i", g[active], step)
        size = np.abs(step).max(axis=1)
        room = 1.0 + np.abs(theta[active]).max(axis=1)
        there = (predicted <= ftol * (1.0 + np.abs(f[active]))) & (size <= xtol * room)
        converged[active[there]] = True
        # In Newton's quadratic regime (a positive definite model and a short step), the step
        # leaves an error of the order of its square, below xtol: take it without the
        # second-order evaluation that would only confirm it (the criterion there is checked
        # in one batch at the end).
        last = ~there & newton & (size <= _LAST_STEP * room)
        if last.any():
            rows = active[last]
            finishing.append((rows, theta[rows].copy(), f[rows].copy()))
            theta[rows] = np.maximum(theta[rows] + step[last], lower)
            n_iter[rows] += 1
            converged[rows] = True
        keep = ~there & ~last
        active, step, at_bound = active[keep], step[keep], at_bound[keep]
        if active.size == 0:
            break
        th, fa, ga = theta[active], f[active], g[active]
        n_iter[active] += 1

        # Backtracking line search along the projected path, all features together: the full
        # step to second order (it usually is the next iterate); where it fails, the minimizer
        # of the quadratic through f(0), f'(0) and f(1), also to second order; then, for the
        # few features that still need it, ladders of halvings by criterion only.
        new_th, new_f, new_g, new_h = th.copy(), fa.copy(), ga.copy(), hess[active]
        pending = np.arange(active.size)
        slope = np.einsum("ij,ij->i", ga, step)  # f'(0) along the unprojected step
        t = np.ones((active.size, 1))
        for stage in range(len(_LADDERS) + 2):
            r, n_t = t.shape
            second = n_t == 1
            trial = np.maximum(th[pending, None, :] + t[:, :, None] * step[pending, None, :], lower)
            trial = trial.reshape(r * n_t, k)
            ft, gt, ht = objective(trial, np.repeat(active[pending], n_t), 2 if second else 0)
            n_eval[active[pending]] += n_t
            base = np.repeat(th[pending], n_t, axis=0)
            decrease = np.einsum("ij,ij->i", np.repeat(ga[pending], n_t, axis=0), trial - base)
            bound = np.repeat(fa[pending], n_t) + 1e-4 * np.minimum(decrease, 0.0)
            accept = (np.isfinite(ft) & (ft <= bound)).reshape(r, n_t)
            found = accept.any(axis=1)
            pick = np.flatnonzero(found) * n_t + np.argmax(accept[found], axis=1)  # longest
            done = pending[found]
            new_th[done], new_f[done] = trial[pick], ft[pick]
            if second:
                new_g[done], new_h[done] = gt[pick], ht[pick]
            elif done.size:
                _, new_g[done], new_h[done] = objective(trial[pick], active[done], 2)
                n_eval[active[done]] += 1
            retry = ~found
            if stage == 0:
                # f(1) failed: the quadratic's minimizer, kept within [0.1, 0.5] of the step.
                curv = np.where(np.isfinite(ft), ft, np.inf)[retry] - fa[pending[retry]]
                curv -= slope[pending[retry]]
                with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                    t_min = -slope[pending[retry]] / (2.0 * curv)
                length = np.clip(np.nan_to_num(t_min, nan=0.1), 0.1, 0.5)
                t = length[:, None]
            elif stage <= len(_LADDERS):
                length = length[retry]
                t = length[:, None] * _LADDERS[stage - 1][None, :]
            pending = pending[retry]
            if pending.size == 0:
                break

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
        theta[active], f[active], g[active], hess[active] = new_th, new_f, new_g, new_h
        converged[active[(small | stuck) & ~lost]] = True
        message[active[lost]] = "line search found no decrease"
        active = active[~(small | stuck)]

    message[active] = f"no convergence after {max_iter} iterations"
    if finishing:
        rows, before, f_before = (np.concatenate(x) for x in zip(*finishing, strict=True))
        f_last, _, _ = objective(theta[rows], rows, 0)
        n_eval[rows] += 1
        # Rounding can make the last step's change of the criterion slightly positive; never
        # return a point worse than the one before it.
        worse = ~(f_last <= f_before)
        theta[rows[worse]], f_last[worse] = before[worse], f_before[worse]
        f[rows] = f_last
    return OptSummary(theta0, theta, f, n_iter, n_eval, converged, message)


def _newton_direction(
    theta: np.ndarray, grad: np.ndarray, hess: np.ndarray, fixed: np.ndarray, lower: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Projected Newton direction with the Hessian made positive definite.

    The criterion depends on θ only through θ², so at θ_j = 0 its gradient vanishes and the
    bound is optimal exactly when the curvature there is non-negative (the gradient in θ_j² is
    half that curvature).  Coordinates at 0 with negative curvature are pushed back inside.

    Returns the direction, the mask of coordinates held at the bound and whether the Hessian
    was positive definite on the free coordinates (a true Newton step).
    """
    k = theta.shape[1]
    curvature = np.diagonal(hess, axis1=1, axis2=2)
    # Within _AT_ZERO of the bound counts as on it: the gradient vanishes there too (θ² symmetry),
    # so a coordinate that drifted to 1e-15 would otherwise sit on a maximum, unable to escape.
    at_zero = theta <= lower + _AT_ZERO  # never true for a free parameter (lower = -inf)
    flat = np.abs(grad) <= 1e-12 * (1.0 + np.abs(curvature))
    # Near the bound with negative curvature the optimum lies further in, but the modified
    # Newton step only doubles θ (the gradient is ~curvature·θ there): step out at once.
    escape = (theta <= lower + _ESCAPE_BELOW) & (curvature < 0.0) & (grad <= 0.0) & ~fixed
    at_bound = fixed | (at_zero & ~escape & ((grad > 0.0) | flat))
    free = ~at_bound
    hess = np.where(free[:, :, None] & free[:, None, :], hess, 0.0)
    hess[:, np.arange(k), np.arange(k)] += at_bound
    hess = np.where(np.isfinite(hess), hess, 0.0)
    evals, evecs = np.linalg.eigh(hess)
    floor = 1e-8 * np.maximum(1.0, np.abs(evals).max(axis=1, keepdims=True))
    newton = (evals > floor).all(axis=1) & ~escape.any(axis=1)
    evals = np.maximum(np.abs(evals), floor)
    g_free = np.where(free, grad, 0.0)
    coef = np.einsum("mji,mj->mi", evecs, g_free) / evals
    step = -np.einsum("mij,mj->mi", evecs, coef)
    step[escape] = np.maximum(step[escape], 1.0)  # the line search shortens it as needed
    return step, at_bound, newton
