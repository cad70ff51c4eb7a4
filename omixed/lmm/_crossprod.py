"""Per-feature weighted cross-products ``[M y]' diag(w) [M y]``, using the sparsity of ``M``.

A mixed model's design ``M = [Z₁ … Z_G X]`` has only ``G + p`` nonzeros per row however many
levels the terms have, so ``M' diag(w) M`` has few distinct row contributions: with the sparse
``(D², n)`` matrix ``P`` whose column ``i`` holds ``vec(m_i m_i')``, every feature's ``M'WM`` is
``P w`` and a chunk's is the sparse-dense product ``P W'``.  That costs ``n (G + p)²`` per
feature instead of ``n D²`` for dense products; only the rows of ``P`` that some observation
reaches are kept (the other entries of ``M'WM`` are structurally zero).  Each output sums the
same terms in the same order for any number of features (a sparse row times a dense block), so
results do not depend on the chunking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

__all__ = ["CrossProducts"]


@dataclass(frozen=True)
class CrossProducts:
    """The sparse pieces of a design ``M`` (rows × D) that every chunk's cross-products need."""

    pairs: sparse.csr_matrix  # (K, n): column i is vec(m_i m_i') at the K places it can be ≠ 0
    places: np.ndarray  # (K,) those places, as flat indices into a (D + 1)² matrix
    columns: sparse.csr_matrix  # (D, n): M'
    dim: int

    @classmethod
    def from_design(cls, M: np.ndarray) -> CrossProducts:
        n, d = M.shape
        nonzero = M != 0
        width = max(int(nonzero.sum(axis=1).max(initial=0)), 1)
        # Column indices of each row's nonzeros (padded with masked entries).
        cols = np.argsort(~nonzero, axis=1, kind="stable")[:, :width]
        valid = np.take_along_axis(nonzero, cols, axis=1)
        vals = np.take_along_axis(M, cols, axis=1)
        keep = valid[:, :, None] & valid[:, None, :]
        flat = cols[:, :, None] * d + cols[:, None, :]
        rows = np.broadcast_to(np.arange(n)[:, None, None], flat.shape)
        prod = vals[:, :, None] * vals[:, None, :]
        pairs = sparse.csr_matrix((prod[keep], (flat[keep], rows[keep])), shape=(d * d, n))
        # Only the entries some row reaches: the rest of M'WM is structurally zero.
        reached = np.flatnonzero(np.diff(pairs.indptr))
        places = (reached // d) * (d + 1) + reached % d
        return cls(pairs[reached], places, sparse.csr_matrix(M.T), d)

    def __call__(self, Y: np.ndarray, W: np.ndarray) -> np.ndarray:
        """``A[f] = [M y_f]' diag(w_f) [M y_f]`` for features × rows ``Y`` and ``W``."""
        m, d = Y.shape[0], self.dim
        A = np.zeros((m, d + 1, d + 1))
        A.reshape(m, -1)[:, self.places] = (self.pairs @ W.T).T
        wy = W * Y
        A[:, d, :d] = A[:, :d, d] = (self.columns @ wy.T).T
        A[:, d, d] = (wy * Y).sum(axis=1)
        return A
