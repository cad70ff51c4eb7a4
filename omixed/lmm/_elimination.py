"""How the criterion eliminates the random effects: one interface, chosen once per design.

Like MixedModels.jl's specialisation of its random-effects blocks by type, the fit calls the
same methods whatever the model; :func:`~._design.plan_design` picks the implementation:

* :class:`ScalarElimination` — the first factor has a single scalar term, eliminated in closed
  form (its block of ``Ω`` is diagonal); :mod:`._objective`.
* :class:`BlockElimination` — several terms on the first factor (``(x|g)``, ``(x||g)``) or
  correlated terms anywhere, eliminated level by level with small dense blocks; :mod:`._dense`.

Both leave the rest of the system (the other terms, ``X`` and ``y``) as one dense block per
feature: after eliminating the first factor the others are crossed with each other through
its levels (batches share donors), which fills that block in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from ._crossprod import Cross, CrossProducts
from ._dense import (
    DenseLayout,
    dense_criterion,
    dense_estimates,
    minimize_dense,
    reduce_dense,
    term_factor,
)
from ._objective import _BLOCK_BYTES, Layout, criterion, estimates, reduce
from ._optimize import Objective, OptSummary, minimize
from ._starts import moment_starts

__all__ = ["BlockElimination", "Elimination", "ScalarElimination"]

_STARTS = (0.5, 1.0, 2.0)  # correlated terms: relative SDs each descended from
_CORRELATED = (-0.5,)  # ... and off-diagonals, with SDs 1
_BUFFERS = 24  # (dr, dr) temporaries of one criterion evaluation with its Hessian


class Elimination(Protocol):
    """What the fit needs from an elimination (see the module notes)."""

    @property
    def n_theta(self) -> int: ...

    @property
    def lower(self) -> np.ndarray: ...

    def reduce(self, cross: Cross, *, weighted: bool) -> Any:
        """The θ-independent pieces of the criterion (``.take(rows)`` selects features)."""

    def criterion(
        self,
        theta: np.ndarray,
        red: Any,
        n_obs: np.ndarray,
        p_eff: np.ndarray,
        *,
        reml: bool,
        order: int,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Criterion, gradient and Hessian in θ (to ``order``)."""

    def estimates(
        self,
        theta: np.ndarray,
        cross: Cross,
        n_obs: np.ndarray,
        p_eff: np.ndarray,
        reml: bool,
        red: Any = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """β̂, SE(β̂), BLUPs (elimination order) and σ̂² at θ (``red``: :meth:`reduce` of the
        same features, if at hand)."""

    def starts(self, cross: Cross, red: Any, n_obs: np.ndarray) -> np.ndarray:
        """``(n_starts, m, n_theta)`` starting points (``red`` from :meth:`reduce`)."""

    def minimize(self, objective: Objective, starts: np.ndarray, fixed: np.ndarray) -> OptSummary:
        """Minimize ``objective`` from ``starts``, coordinates ``fixed`` held at 0."""

    def relative_covariances(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Variances of the terms and covariances of correlated pairs, relative to σ²."""

    def numbers_per_feature(self, structure: CrossProducts) -> int:
        """Numbers a chunk holds per feature for the reduction and its evaluations."""

    def workspace_bytes(self, structure: CrossProducts) -> int:
        """Bytes of the temporaries of one evaluation, whatever the chunk size."""


@dataclass(frozen=True, eq=False)
class ScalarElimination:
    """A single scalar term first, eliminated in closed form (:mod:`._objective`)."""

    layout: Layout

    @property
    def n_theta(self) -> int:
        return self.layout.n_theta

    @property
    def lower(self) -> np.ndarray:
        return np.zeros(self.n_theta)

    def reduce(self, cross: Cross, *, weighted: bool) -> Any:
        # Weighted counts are not the integers the count classes group by.
        return reduce(cross, replace(self.layout, count_classes=0) if weighted else self.layout)

    def criterion(self, theta, red, n_obs, p_eff, *, reml, order):
        return criterion(theta, red, n_obs, p_eff, reml=reml, order=order)

    def estimates(self, theta, cross, n_obs, p_eff, reml, red=None):
        return estimates(theta, cross, self.layout, n_obs, p_eff, reml, red)

    def starts(self, cross: Cross, red: Any, n_obs: np.ndarray) -> np.ndarray:
        # Moment estimates (see _starts): on the benchmark designs they beat every common
        # start in 96-100 % of features and the optima do not change without the common
        # starts, so they are the only start.
        return moment_starts(cross, self.layout, n_obs, red)[None]

    def minimize(self, objective, starts, fixed):
        return minimize(objective, starts, fixed, lower=self.lower)

    def relative_covariances(self, theta):
        return theta**2, np.zeros((theta.shape[0], 0))

    def numbers_per_feature(self, structure: CrossProducts) -> int:
        dr = structure.dim
        if self.layout.count_classes:
            return self.layout.count_classes * dr * dr
        runs = np.diff(structure.starts)
        return int((runs * (runs + 1) // 2).sum())  # one product per triple

    def workspace_bytes(self, structure: CrossProducts) -> int:
        return _BUFFERS * max(_BLOCK_BYTES, 8 * structure.dim**2)


@dataclass(frozen=True, eq=False)
class BlockElimination:
    """The first factor's terms eliminated level by level (:mod:`._dense`)."""

    dense: DenseLayout
    layout: Layout  # the terms' sizes in elimination order
    covariances: tuple[tuple[int, int], ...]

    @property
    def n_theta(self) -> int:
        return self.dense.n_theta

    @property
    def lower(self) -> np.ndarray:
        return self.dense.lower

    def reduce(self, cross: Cross, *, weighted: bool) -> Any:
        return reduce_dense(cross, self.dense)

    def criterion(self, theta, red, n_obs, p_eff, *, reml, order):
        return dense_criterion(theta, red, n_obs, p_eff, self.dense, reml=reml, order=order)

    def estimates(self, theta, cross, n_obs, p_eff, reml, red=None):
        # The criterion's reduction holds per-level products, not the rows the modes need.
        return dense_estimates(theta, cross, self.dense, n_obs, p_eff, reml)

    @property
    def correlated(self) -> bool:
        return bool(np.isinf(self.lower).any())

    def starts(self, cross: Cross, red: Any, n_obs: np.ndarray) -> np.ndarray:
        if not self.correlated:  # as for a scalar term (see ScalarElimination.starts)
            return moment_starts(cross, self.layout, n_obs)[None]
        # Several local optima: SDs start from each of _STARTS with correlations 0, one more
        # with negative correlations, and every start is descended (minimize_dense).
        m, lower = cross.n_features, self.lower
        starts = np.where(np.isfinite(lower), np.array(_STARTS)[:, None, None], 0.0)
        starts = np.broadcast_to(starts, (len(_STARTS), m, lower.size))
        signs = [np.where(np.isfinite(lower), starts[1], c) for c in _CORRELATED]
        return np.stack([*starts, *signs])

    def minimize(self, objective, starts, fixed):
        if not self.correlated:
            return minimize(objective, starts, fixed, lower=self.lower)
        return minimize_dense(objective, starts, fixed, self.dense)

    def relative_covariances(self, theta):
        # Relative (co)variances of the terms: Λ Λ' at each term's first level.
        first = np.cumsum([0, *self.layout.sizes])[:-1].astype(int)
        F = term_factor(theta, self.dense, first)
        cov = np.zeros((theta.shape[0], len(self.covariances)))
        for i, (a, b) in enumerate(self.covariances):
            cov[:, i] = (F[:, a, :] * F[:, b, :]).sum(axis=1)
        return (F**2).sum(axis=2), cov

    def numbers_per_feature(self, structure: CrossProducts) -> int:
        n_levels, b = self.dense.levels.shape
        dr = structure.dim
        # The dense rows B_l and their products (_dense's per-level arrays), the Ω̃ stacks.
        return n_levels * b * (4 * dr + 12 * b) + (self.n_theta + 12) * dr * dr

    def workspace_bytes(self, structure: CrossProducts) -> int:
        return 0
