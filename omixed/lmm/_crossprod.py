"""Per-feature weighted cross-products ``[Z X y]' diag(w) [Z X y]``, built sparse from codes.

The design is never formed densely: a random term is its level codes and row values (1 for an
intercept, the covariate for a slope), ``X`` is dense.  The columns are split into *term 1*,
the ``b`` terms on the factor eliminated first (``L`` levels, see ``_design``), and the *rest*:
the other random terms, ``X`` and the response, last.  A feature's cross-products are kept in
three pieces (:class:`Cross`):

* ``first``: term 1's ``b × b`` block at each level, ``Σ_{rows of l} w z z'``;
* ``rows``: term 1's rows against the rest, only at the places that some data row reaches
  (level ``l``, component ``a``, rest column ``j``; every ``(l, a)`` has the response's place);
* ``rest``: the rest block, ``(dr, dr)``, dense.

A level of term 1 meets few others (a donor is seen in a few batches), so ``rows`` holds a few
numbers per level where a dense ``A`` would hold ``q₁ · dr``.  One compiled pass over a chunk's
observed data rows adds each row's products into the three pieces
(:func:`~._kernels.cross_products`): with ``k`` nonzeros per data row it costs ``n k²`` per
feature, however many levels the terms have.  Every feature sums its rows in the same order in
any chunk, so results do not depend on the chunking.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import sparse

__all__ = ["Cross", "CrossProducts", "Triples"]


def as_index(x: np.ndarray) -> np.ndarray:
    """Indices as contiguous int64, the one type the kernels are compiled for."""
    return np.ascontiguousarray(x, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class CrossProducts:
    """Where every data row's products land in a feature's :class:`Cross` (design only)."""

    n_levels: int  # L, levels of term 1's factor
    b: int  # components of term 1 (terms on its factor)
    dim: int  # dr, rest columns including the response (last)
    codes: np.ndarray  # (n,) term 1's level of each row
    values: np.ndarray  # (n, b) term 1's values of each row
    rest: sparse.csr_matrix  # (n, dr − 1): the rest's design
    x_place: np.ndarray  # (rest nonzeros, b): place of each rest entry against component a
    y_place: np.ndarray  # (n, b): place of each row's response against component a
    row_level: np.ndarray  # (places,) l·b + a of each place, sorted (then by column)
    row_col: np.ndarray  # (places,) rest column of each place
    starts: np.ndarray  # (L·b + 1,) first place of each (l, a)
    row_order: np.ndarray  # (n,) the rows sorted by their design content (see from_terms)

    @classmethod
    def from_terms(
        cls,
        codes: np.ndarray,
        values: np.ndarray,
        n_levels: int,
        rest: sparse.csr_matrix,
    ) -> CrossProducts:
        """From term 1's level ``codes`` and ``values`` (rows × b) and the rest's design.

        ``rest`` is the sparse ``(rows, dr − 1)`` design of the other random terms and ``X``.
        """
        n, b = values.shape
        dim = rest.shape[1] + 1
        rest = sparse.csr_matrix(rest)
        rest.sort_indices()
        r_rows = np.repeat(np.arange(n), np.diff(rest.indptr))
        # Places: (l, a, j) for every rest entry j of a row of level l, and (l, a, y).
        key_x = (codes[r_rows, None] * b + np.arange(b)) * dim + rest.indices[:, None]
        key_y = (codes[:, None] * b + np.arange(b)) * dim + dim - 1
        every = (np.arange(n_levels * b) + 1) * dim - 1  # each (l, a) has a response place
        keys, inverse = np.unique(
            np.concatenate([key_x.ravel(), key_y.ravel(), every]), return_inverse=True
        )
        row_level, row_col = np.divmod(keys, dim)
        # Sums over the rows run in this order, so that the cross-products (bitwise) and the fit
        # do not depend on the order of the samples: a degenerate criterion with several valleys
        # sent the optimizer into either one on a rounding difference.  Rows are keyed by term
        # 1's level and values and by a fixed random projection of their rest (equal rows, equal
        # keys: their order is kept).
        probe = np.random.default_rng(0).uniform(1.0, 2.0, size=rest.shape[1])
        row_order = np.lexsort((rest @ probe, *values.T[::-1], codes))
        return cls(
            n_levels,
            b,
            dim,
            as_index(codes),
            np.ascontiguousarray(values, dtype=np.float64),
            rest,
            as_index(inverse[: key_x.size].reshape(key_x.shape)),
            as_index(inverse[key_x.size : key_x.size + key_y.size].reshape(key_y.shape)),
            as_index(row_level),
            as_index(row_col),
            as_index(np.searchsorted(row_level, np.arange(n_levels * b + 1))),
            as_index(row_order),
        )

    @property
    def n_places(self) -> int:
        return self.row_level.size

    @cached_property
    def triples(self) -> Triples:
        """The pairs of places within each row of term 1 (see :class:`Triples`)."""
        return Triples.from_structure(self)

    def __call__(self, Y: np.ndarray, W: np.ndarray) -> Cross:
        """The cross-products of features × rows ``Y`` with weights ``W`` (0 where missing)."""
        from ._kernels import cross_products  # numba, loaded at the first fit only

        m, d = Y.shape[0], self.dim
        first = np.zeros((m, self.n_levels, self.b, self.b))
        rows = np.zeros((m, self.n_places))
        rest = np.zeros((m, d, d))
        M = self.rest
        cross_products(
            np.ascontiguousarray(Y, dtype=np.float64),
            np.ascontiguousarray(W, dtype=np.float64),
            self.codes,
            self.values,
            as_index(M.indptr),
            as_index(M.indices),
            np.ascontiguousarray(M.data, dtype=np.float64),
            self.x_place,
            self.y_place,
            self.row_order,
            first,
            rows,
            rest,
        )
        return Cross(first, rows, rest, self)

    def level_sums(self, x: np.ndarray) -> np.ndarray:
        """``Σ_{places of (l, a)} x[:, place]`` for place values ``x`` ``(m, places)``."""
        return np.add.reduceat(x, self.starts[:-1], axis=1)


@dataclass(frozen=True, eq=False)
class Triples:
    """The outer products ``a_i a_i'`` of term 1's rows as pairs of their places.

    Row ``i`` (a level and component) has a few places, the rest columns it meets; every pair
    ``e1 ≤ e2`` of them is a triple, whose product lands at ``(j1, j2)`` and ``(j2, j1)`` of a
    ``(dr, dr)`` matrix.  So ``Σ_i s_i a_i a_i'`` costs a few numbers per level instead of
    ``dr²`` (:func:`~._kernels.level_sums`).
    """

    e1: np.ndarray
    e2: np.ndarray

    @classmethod
    def from_structure(cls, structure: CrossProducts) -> Triples:
        # 32-bit (a dense (dr, dr) block with more places would not be fitted at all):
        # millions of triples for a large single fit, so no 64-bit temporaries either.
        i32 = np.int32
        n_places = structure.n_places
        count = structure.starts[structure.row_level + 1].astype(i32)
        count -= np.arange(n_places, dtype=i32)  # places e2 ≥ e1 of the same level
        e1 = np.repeat(np.arange(n_places, dtype=i32), count)
        e2 = np.arange(e1.size, dtype=i32)
        e2 -= np.repeat(np.cumsum(count, dtype=i32) - count, count)
        e2 += e1
        return cls(e1, e2)


@dataclass(frozen=True, eq=False)
class Cross:
    """A chunk's cross-products in the three pieces of the module notes.

    ``first`` is ``(m, L, b, b)``, ``rows`` ``(m, places)`` (see :class:`CrossProducts` for
    where each place is) and ``rest`` ``(m, dr, dr)``.
    """

    first: np.ndarray
    rows: np.ndarray
    rest: np.ndarray
    structure: CrossProducts

    @property
    def n_features(self) -> int:
        return self.rest.shape[0]

    def take(self, index: np.ndarray) -> Cross:
        """The features ``index`` (no copy when that is all of them, in order)."""
        if index.size == self.n_features and np.array_equal(index, np.arange(index.size)):
            return self
        return Cross(self.first[index], self.rows[index], self.rest[index], self.structure)

    def times(self, w: np.ndarray) -> np.ndarray:
        """``A_{(l,a),rest} w`` for every level and component: ``(m, L·b)`` from ``(m, dr)``."""
        return self.structure.level_sums(self.rows * w[:, self.structure.row_col])
