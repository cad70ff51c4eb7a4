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
    with atomic_paths([path]) as (tmp,):
        yield tmp


@contextmanager
def atomic_paths(paths: list[str | os.PathLike]) -> Iterator[list[Path]]:
    """:func:`atomic_path` for several files written together: all of them or none.

    Every target is checked before anything is written; the temporary files are renamed onto
    their targets only once the block has written all of them.
    """
    targets = [Path(p) for p in paths]
    for target in targets:
        check_writable(target)
    staged: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
                stale.unlink(missing_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
            staged.append(Path(tmp))
        yield staged
        # mkstemp creates 0600 files; give the results the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        for tmp in staged:
            tmp.chmod(0o666 & ~umask)
        for tmp, target in zip(staged, targets, strict=True):
            os.replace(tmp, target)
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)


def check_outputs(inputs: list[str | os.PathLike], outputs: list[str | os.PathLike]) -> None:
    """Refuse, before any work, outputs that are inputs, repeat each other or cannot be written."""
    seen: dict[Path, str] = {}
    given = [os.fspath(p) for p in inputs]
    for output in outputs:
        target = Path(output)
        resolved = target.resolve()
        if resolved in seen:
            raise ValueError(f"{output} is given as two outputs; each output needs its own path")
        seen[resolved] = os.fspath(output)
        for source in given:
            same = Path(source).resolve() == resolved or (
                target.exists() and Path(source).exists() and os.path.samefile(source, target)
            )
            if same:
                raise ValueError(
                    f"the output {output} is the input {source}: writing it would destroy the "
                    "input; choose another output path"
                )
        check_writable(target)


def check_writable(target: Path) -> None:
    """Refuse an output path that is not a new or regular file, or whose folder is read-only."""
    if target.is_symlink() or (target.exists() and not target.is_file()):
        kind = "a link" if target.is_symlink() else "not a regular file"
        raise ValueError(f"refusing to write {target}: it is {kind}; choose a new file path")
    folder = next((p for p in (target.parent, *target.parent.parents) if p.exists()), None)
    if folder is not None and not folder.is_dir():
        raise ValueError(f"cannot write {target}: {folder} is a file, not a folder")
    if folder is not None and not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {target}: the folder {folder} is not writable")
