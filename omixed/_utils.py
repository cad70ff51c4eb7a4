"""Helpers shared by the AnnData-facing namespaces (not by the engine)."""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    from anndata import AnnData


def get_matrix(adata: AnnData, layer: str | None = None) -> np.ndarray:
    """Return ``adata.X`` or ``adata.layers[layer]`` as a dense float64 copy (samples × features).

    Sparse storage is densified: an explicit zero stays zero, missing values must be NaN.
    """
    if layer is None:
        values = adata.X
    else:
        if layer not in adata.layers:
            available = ", ".join(map(repr, adata.layers.keys())) or "none"
            raise KeyError(f"layer {layer!r} not found in adata.layers (available: {available})")
        values = adata.layers[layer]
    if values is None:
        raise ValueError("adata.X is empty; pass layer= to use one of adata.layers")
    if sparse.issparse(values):
        values = values.toarray()
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.number):
        raise TypeError(f"matrix has non-numeric dtype {values.dtype}")
    return np.array(values, dtype=np.float64, copy=True)


def set_matrix(adata: AnnData, values: np.ndarray, layer: str | None = None) -> None:
    """Store ``values`` (samples × features) in ``adata.X`` or ``adata.layers[layer]``."""
    if layer is None:
        adata.X = values
    else:
        adata.layers[layer] = values


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto ``path`` on success.

    An interrupted write leaves either the old file or the new one, never a partial file.  The
    target may be a new path or a regular file: anything else there (a directory, a device
    such as ``/dev/null``, a link) is refused before anything is written.  Temporary files that
    a killed earlier write to the same target left behind are removed.
    """
    target = Path(path)
    check_writable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        tmp_path.chmod(0o666 & ~umask)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_writable(target: Path) -> None:
    """Refuse an output path that is not a new or regular file, or whose folder is read-only."""
    if target.is_symlink() or (target.exists() and not target.is_file()):
        kind = "a link" if target.is_symlink() else "not a regular file"
        raise ValueError(f"refusing to write {target}: it is {kind}; choose a new file path")
    folder = next((p for p in (target.parent, *target.parent.parents) if p.exists()), None)
    if folder is not None and not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {target}: the folder {folder} is not writable")
