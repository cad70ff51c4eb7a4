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
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata as ad

from .. import __version__
from .._utils import atomic_path

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


def write_h5ad(adata: AnnData, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    log.info("wrote %s (%d samples × %d features)", path, adata.n_obs, adata.n_vars)


def write_tsv(table: pd.DataFrame, path: str | os.PathLike, run: dict[str, Any]) -> None:
    """Write ``table`` as a plain TSV and its provenance to ``<path>.json``.

    The JSON holds the omixed version and the run record of every step (``uns["omixed_run"]``).
    """
    provenance = {"omixed_version": __version__, "steps": _decoded(run)}
    with atomic_path(f"{os.fspath(path)}.json") as tmp:
        tmp.write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t")
    log.info("wrote %s (%d rows × %d columns) and its provenance %s.json", path, *table.shape, path)


def _decoded(run: dict[str, Any]) -> dict[str, Any]:
    """A run record (possibly read back from h5ad) with each step's parameters as JSON values."""
    return {
        str(step): {str(k): json.loads(v) if k == "params" else str(v) for k, v in entry.items()}
        for step, entry in run.items()
    }
