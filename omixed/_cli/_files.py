"""Reading and atomically writing the CLI's files, each stamped with how it was made.

Provenance lives in ``adata.uns["omixed_run"]``: one entry per step (``import``, ``normalize``,
``fit``, ...) holding the package version, the command line and the step's parameters as JSON
(JSON rather than nested h5ad groups: h5ad cannot store None or lists of mixed types).  TSV
outputs are plain tables (header first, so R's ``read.delim`` and ``pandas.read_csv(path,
sep="\\t")`` read them without options); the same record goes to a JSON file beside each,
``<name>.tsv.json``.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata as ad

from .. import __version__
from .._utils import atomic_paths

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData

RUN_KEY = "omixed_run"
# The arguments of the running command (set by omixed.cli.main, also when called from Python).
ARGV: ContextVar[list[str]] = ContextVar("argv")
log = logging.getLogger("omixed.cli")


def read_h5ad(path: str | os.PathLike) -> AnnData:
    """Read an h5ad file, with a plain error for a missing or unreadable one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        adata = ad.read_h5ad(path)
    except OSError as err:  # h5py's message for a truncated or non-HDF5 file
        raise ValueError(f"{path} is not a readable h5ad file: {err}") from err
    log.info("read %s (%d samples × %d features)", path, adata.n_obs, adata.n_vars)
    return adata


def run_record(params: dict[str, Any]) -> dict[str, str]:
    """The provenance entry of one step: version, command line and parameters."""
    return {
        "omixed_version": __version__,
        "command": shlex.join(["omixed", *ARGV.get()]),
        "params": json.dumps(params, sort_keys=True, default=str),
    }


def record(adata: AnnData, step: str, params: dict[str, Any]) -> None:
    """Add (or replace) the entry of ``step`` in ``adata.uns["omixed_run"]``."""
    run = dict(adata.uns.get(RUN_KEY, {}))
    run[step] = run_record(params)
    adata.uns[RUN_KEY] = run


class Outputs:
    """A command's output files, written together at its end: all of them, or none.

    Each file is written to a temporary file beside its target; only when every one has been
    written are they renamed onto their targets (:func:`omixed._utils.atomic_paths`).
    """

    def __init__(self) -> None:
        self._writes: list[tuple[str, Callable[[Path], None], str]] = []

    def h5ad(self, adata: AnnData, path: str | os.PathLike) -> None:
        shape = f"{adata.n_obs} samples × {adata.n_vars} features"
        self._writes.append((os.fspath(path), adata.write_h5ad, shape))

    def tsv(self, table: pd.DataFrame, path: str | os.PathLike, run: dict[str, Any]) -> None:
        """A plain TSV, and its provenance in ``<path>.json``: the omixed version and the run
        record of every step (``uns["omixed_run"]``)."""
        provenance = {"omixed_version": __version__, "steps": _decoded(run)}
        text = json.dumps(provenance, indent=2, sort_keys=True) + "\n"
        self._writes.append(
            (
                os.fspath(path),
                lambda tmp: table.to_csv(tmp, sep="\t"),
                "{} rows × {} columns".format(*table.shape),
            )
        )
        self._writes.append(
            (
                f"{os.fspath(path)}.json",
                lambda tmp: tmp.write_text(text, encoding="utf-8"),
                "provenance",
            )
        )

    def figure(self, plot, path: str | os.PathLike) -> None:
        """A figure (or the figure of axes), in the format of ``path``'s suffix."""
        figure = getattr(plot, "figure", plot)
        fmt = Path(path).suffix.lstrip(".").lower() or "png"

        def write(tmp: Path) -> None:
            figure.savefig(tmp, format=fmt, bbox_inches="tight")

        self._writes.append((os.fspath(path), write, "figure"))

    def commit(self) -> None:
        with atomic_paths([path for path, _, _ in self._writes]) as staged:
            for tmp, (_, write, _) in zip(staged, self._writes, strict=True):
                write(tmp)
        for path, _, what in self._writes:
            log.info("wrote %s (%s)", path, what)


def write_h5ad(adata: AnnData, path: str | os.PathLike) -> None:
    outputs = Outputs()
    outputs.h5ad(adata, path)
    outputs.commit()


def _decoded(run: dict[str, Any]) -> dict[str, Any]:
    """A run record (possibly read back from h5ad) with each step's parameters as JSON values."""
    return {
        str(step): {str(k): json.loads(v) if k == "params" else str(v) for k, v in entry.items()}
        for step, entry in run.items()
    }
