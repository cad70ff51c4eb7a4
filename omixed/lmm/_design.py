"""The planned design of a model: its terms in elimination order and how they are eliminated.

Planned once per fit from the :class:`~._spec.ModelSpec` (the factor codes and row values of
the random terms and the fixed-effects matrix), never from a dense indicator matrix: the
cross-product maps of :mod:`._crossprod` are sparse in the data rows, and the elimination
(:mod:`._elimination`) is chosen here, once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from ._crossprod import CrossProducts
from ._dense import DenseLayout
from ._elimination import BlockElimination, Elimination, ScalarElimination
from ._objective import Layout, use_count_classes, use_dense_rows
from ._spec import ModelSpec, RandomTerm
from ._spectral import Spectral

__all__ = ["Design", "plan_design"]

# The one-term shortcut holds an (n, levels) projection: used up to this many numbers.
_SPECTRAL_LIMIT = 2**22


@dataclass(frozen=True, eq=False)
class Design:
    """The shared design in elimination order and how its criterion eliminates the terms.

    The elimination order puts the terms of the eliminated factor first (see
    :func:`plan_design`), then the others by decreasing number of levels.
    """

    layout: Layout
    order: np.ndarray  # formula-order index of each term in elimination order
    intercept: int | None  # column of X that is all ones, if any
    spectral: Spectral | None  # the one-term shortcut's design pieces, if it applies
    fixed_names: tuple[str, ...]
    term_names: tuple[str, ...]  # elimination order
    cross_products: CrossProducts
    elimination: Elimination
    dense: DenseLayout | None = None  # a factor's terms eliminated together (see _dense)
    extra_names: tuple[str, ...] = ()  # dense: names of the off-diagonal parameters
    covariances: tuple[tuple[int, int], ...] = ()  # dense: term pairs with a covariance

    @property
    def n_theta(self) -> int:
        return self.elimination.n_theta

    @property
    def correlated(self) -> bool:
        """Whether some term has off-diagonal parameters (a correlated ``(x|g)``)."""
        return bool(self.extra_names)

    @property
    def rest_dim(self) -> int:
        """``dr``: the columns left after eliminating the first factor (with the response)."""
        return self.cross_products.dim

    def bytes_per_feature(self, n_rows: int) -> int:
        """Memory a chunk holds per feature: its data rows, cross-products and reduction."""
        st = self.cross_products
        cross = st.n_levels * st.b * st.b + st.n_places + st.dim**2
        return 8 * (6 * n_rows + 2 * cross + self.elimination.numbers_per_feature(st))

    def workspace_bytes(self) -> int:
        """Memory of the criterion's temporaries, whatever the chunk size."""
        return self.elimination.workspace_bytes(self.cross_products)


def _factors(terms: tuple[RandomTerm, ...]) -> list[list[int]]:
    """The terms grouped by grouping factor (equal codes), each group in formula order."""
    groups: list[list[int]] = []
    for i, term in enumerate(terms):
        same = (g for g in groups if np.array_equal(terms[g[0]].codes, term.codes))
        group = next(same, None)
        if group is None:
            groups.append([i])
        else:
            group.append(i)
    return groups


def plan_design(spec: ModelSpec) -> Design:
    """The design of ``spec`` and how its criterion eliminates the random effects.

    The factor whose terms have the most columns (the first of equal ones, terms taken by
    decreasing number of levels) is eliminated first.  A lone scalar term there is eliminated
    in closed form (:class:`~._elimination.ScalarElimination`); several terms on that factor
    (the components of ``(x|g)``, or scalar terms such as ``(1|g) + (0 + x|g)``), or correlated
    terms anywhere, are eliminated level by level (:class:`~._elimination.BlockElimination`).
    """
    terms = spec.terms
    n, p = spec.X.shape
    by_levels = [int(i) for i in np.argsort([-t.n_levels for t in terms], kind="stable")]
    first = max(
        _factors(terms),
        key=lambda g: (sum(terms[i].n_levels for i in g), -by_levels.index(g[0])),
        default=[],
    )
    order = np.array([*first, *(i for i in by_levels if i not in first)], dtype=int)
    sizes = tuple(terms[i].n_levels for i in order)
    rest = sparse.hstack(
        [*(terms[i].indicator() for i in order[len(first) :]), sparse.csr_matrix(spec.X)],
        format="csr",
    )
    if first:
        # A row of a level the model never saw (code -1) adds nothing to term 1.
        seen = terms[first[0]].codes >= 0
        codes = np.where(seen, terms[first[0]].codes, 0)
        values = np.column_stack([terms[i].row_values() * seen for i in first])
        structure = CrossProducts.from_terms(codes, values, sizes[0], rest)
    else:
        structure = CrossProducts.from_terms(np.zeros(n, dtype=int), np.zeros((n, 0)), 0, rest)
    dense, extra, pairs, spectral = None, (), (), None
    if spec.blocks or len(first) > 1:
        dense, extra, pairs = _dense_design(spec, order, len(first))
        layout = Layout(sizes, p)
        elimination: Elimination = BlockElimination(dense, layout, pairs)
    else:
        classes, dense_rows = 0, False
        if first:
            scatter = int((np.diff(structure.starts) ** 2).sum())
            dense_rows = use_dense_rows(sizes[0], structure.dim, scatter)
        if first and terms[order[0]].is_intercept:
            # Group the eliminated term's levels by count when that costs less than the
            # levels do.  Counts are the diagonal of Z'Z only for 0/1 intercept columns:
            # slopes keep a class per level.
            largest = int(np.bincount(terms[order[0]].codes).max())
            if use_count_classes(largest, sizes[0], structure.dim):
                classes = largest
        layout = Layout(sizes, p, classes, dense_rows)
        elimination = ScalarElimination(layout)
        if len(terms) == 1 and n * sizes[0] <= _SPECTRAL_LIMIT:
            term = terms[0]
            spectral = Spectral.from_term(spec.X, term.codes, term.row_values())
    ones = np.flatnonzero(np.all(spec.X == 1.0, axis=0))
    return Design(
        layout,
        order,
        int(ones[0]) if ones.size else None,
        spectral,
        spec.fixed_names,
        tuple(terms[i].name for i in order),
        structure,
        elimination,
        dense,
        extra,
        pairs,
    )


def _dense_design(
    spec: ModelSpec, order: np.ndarray, n_first: int
) -> tuple[DenseLayout, tuple[str, ...], tuple[tuple[int, int], ...]]:
    """Where each parameter sits in ``Λ``, the terms in elimination ``order``.

    The first ``n_first`` terms share the factor that :mod:`._dense` eliminates level by level.
    Returns the :class:`DenseLayout`, the names of the off-diagonal parameters (``"a~c"``:
    ``T_ac`` of a correlated term, lme4's column order) and the pairs of terms (elimination
    positions) that have a covariance.
    """
    terms = spec.terms
    position = np.empty(len(terms), dtype=int)
    position[order] = np.arange(len(terms))
    sizes = [terms[i].n_levels for i in order]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    # The diagonal: each term's own SD at every level.
    rows = [offsets[j] + np.arange(n) for j, n in enumerate(sizes)]
    cols = list(rows)
    which = [np.full(n, j) for j, n in enumerate(sizes)]
    extra, pairs = [], []
    for block in spec.blocks:  # lower triangle of each correlated term's T
        for c_pos, c in enumerate(block):
            for a in block[c_pos + 1 :]:
                lv = np.arange(terms[a].n_levels)
                rows.append(offsets[position[a]] + lv)
                cols.append(offsets[position[c]] + lv)
                which.append(np.full(lv.size, len(terms) + len(extra)))
                extra.append(f"{terms[a].name}~{terms[c].name}")
        pairs += [(position[a], position[b]) for i, a in enumerate(block) for b in block[i + 1 :]]
    k = len(terms) + len(extra)
    levels = offsets[:n_first][None, :] + np.arange(sizes[0])[:, None]
    dense = DenseLayout(
        sum(sizes),
        spec.X.shape[1],
        np.concatenate(rows),
        np.concatenate(cols),
        np.concatenate(which),
        np.where(np.arange(k) < len(terms), 0.0, -np.inf),
        levels,
    )
    return dense, tuple(extra), tuple((int(a), int(b)) for a, b in pairs)
