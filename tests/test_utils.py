"""Shared helpers: atomic writes and the matrix accessors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

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


@pytest.mark.parametrize("kind", ["device", "directory", "link"])
def test_atomic_writes_refuse_targets_that_are_not_regular_files(tmp_path, kind):
    if kind == "device":
        target = Path("/dev/null")
    elif kind == "directory":
        target = tmp_path / "out.h5ad"
        target.mkdir()
    else:
        real = tmp_path / "real.tsv"
        real.write_text("keep")
        target = tmp_path / "out.tsv"
        target.symlink_to(real)
    with pytest.raises(ValueError, match="refusing to write"), atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.exists()
    if kind == "link":
        assert target.is_symlink() and (tmp_path / "real.tsv").read_text() == "keep"


def test_atomic_write_removes_what_a_killed_write_left(tmp_path):
    target = tmp_path / "fit.h5ad"
    leftover = tmp_path / ".fit.h5ad.abc123.tmp"
    leftover.write_text("partial")
    other = tmp_path / ".other.h5ad.abc123.tmp"  # another target's: not ours to remove
    other.write_text("partial")
    with atomic_path(target) as tmp:
        tmp.write_text("done")
    assert target.read_text() == "done"
    assert not leftover.exists() and other.exists()
