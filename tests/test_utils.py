"""Shared helpers: atomic writes and the matrix accessors."""

from __future__ import annotations

import os
import stat

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

from omixed._utils import atomic_path, get_matrix


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # no temp file left
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_atomic_path_gives_default_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644


def test_get_matrix_densifies_and_copies():
    X = sparse.csr_matrix(np.array([[1.0, 0.0], [0.0, 2.0]]))
    adata = ad.AnnData(X)
    adata.layers["raw"] = np.array([[np.nan, 1.0], [3.0, 4.0]])
    dense = get_matrix(adata)
    assert isinstance(dense, np.ndarray) and dense[1, 1] == 2.0
    got = get_matrix(adata, "raw")
    got[0, 1] = 99.0
    assert adata.layers["raw"][0, 1] == 1.0
    with pytest.raises(KeyError, match=r"layer .counts. not found.*.raw."):
        get_matrix(adata, "counts")
