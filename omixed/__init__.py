"""omixed: batch-effect removal for omics data with vectorized per-feature linear mixed models.

Public namespaces follow scanpy: :mod:`omixed.pp` (preprocessing), :mod:`omixed.tl` (tools),
:mod:`omixed.pl` (plots), :mod:`omixed.get` (stored results), :mod:`omixed.io` (readers),
:mod:`omixed.datasets` (example data),
and :mod:`omixed.lmm`, the AnnData-free engine.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("omixed")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

import importlib

__all__ = ["__version__", "datasets", "get", "io", "lmm", "pl", "pp", "tl"]


def __getattr__(name: str):
    # Namespaces load on first use: a CLI step or Snakemake job that only fits never pays for
    # matplotlib or the readers.
    if name in __all__:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'omixed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
