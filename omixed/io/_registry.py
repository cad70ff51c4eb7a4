"""The formats :func:`omixed.io.read` recognises: each tool module registers a detector + reader."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from anndata import AnnData

from ._table import read_header


@dataclass(frozen=True)
class Header:
    """What detection looks at: the file's name and its column names (or parquet schema)."""

    path: Path
    columns: tuple[str, ...]

    def has(self, *names: str) -> bool:
        """All of ``names`` are columns."""
        return all(name in self.columns for name in names)

    def any_starts(self, prefix: str) -> bool:
        """Some column starts with ``prefix``."""
        return any(c.startswith(prefix) for c in self.columns)

    def any_ends(self, suffix: str) -> bool:
        """Some column ends with ``suffix``."""
        return any(c.endswith(suffix) for c in self.columns)


@dataclass(frozen=True)
class Format:
    """One recognised file layout: its name, how to spot it, and the reader call that reads it."""

    name: str
    detect: Callable[[Header], bool]
    reader: Callable[..., AnnData]
    options: Mapping[str, object] = field(default_factory=dict)


FORMATS: list[Format] = []


def register(*formats: Format) -> None:
    """Add formats; earlier registrations win when several detectors match a file."""
    FORMATS.extend(formats)


def sniff(path: str | os.PathLike) -> Header:
    """Column names of a delimited text file or of a parquet file's schema."""
    path = Path(os.fspath(path))
    if path.suffix.lower() == ".parquet":
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(path)
        except Exception as err:  # pyarrow raises several types for non-parquet content
            raise ValueError(f"could not read {path} as parquet: {err}") from err
        return Header(path, tuple(schema.names))
    columns, _ = read_header(path)
    return Header(path, tuple(columns))
