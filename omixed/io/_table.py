"""Delimited-text parsing shared by the readers, and the wide-matrix reader :func:`read_table`."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

_COMPRESSED = {".gz", ".bz2", ".xz", ".zip", ".zst", ".tar"}
_SEP_BY_SUFFIX = {".tsv": "\t", ".txt": "\t", ".tab": "\t", ".csv": ","}
_SEP_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon"}
_MAX_LISTED = 25


def format_names(names: Iterable[object], limit: int = _MAX_LISTED) -> str:
    """``'a', 'b', ... (N more)`` — for error messages about long column or sample lists."""
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def find_column(columns: Sequence[str], *names: str) -> str | None:
    """First of ``names`` present in ``columns``; exact match first, then case-insensitive.

    Tools change capitalisation and names between versions (MaxQuant's ``Contaminant`` became
    ``Potential contaminant``), so callers list every spelling they accept.
    """
    for name in names:
        if name in columns:
            return name
    lowered = {column.lower(): column for column in columns}
    for name in names:
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


def require_column(columns: Sequence[str], *names: str, source: object) -> str:
    """Like :func:`find_column` but raise a ``KeyError`` naming the column and what is available."""
    found = find_column(columns, *names)
    if found is None:
        wanted = " or ".join(repr(n) for n in names)
        raise KeyError(f"{source}: missing column {wanted} (available: {format_names(columns)})")
    return found


def _first_line(path: Path) -> str:
    """The header line as text (compressed files included), without its line break."""
    # \x1f (unit separator) never occurs in these files, so the whole first line is one field
    return pd.read_csv(path, sep="\x1f", header=None, nrows=1, dtype=str).iloc[0, 0]


def infer_sep(path: Path) -> str:
    """Tab for .tsv/.txt/.tab; for .csv a comma, or a semicolon when the header has no comma
    (spreadsheets in many locales write ';'-separated .csv); else guess from the header."""
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in _COMPRESSED]
    suffix = suffixes[-1] if suffixes else ""
    if suffix in (".tsv", ".txt", ".tab"):
        return _SEP_BY_SUFFIX[suffix]
    header = _first_line(path)
    counts = {sep: header.count(sep) for sep in ("\t", ",", ";")}
    if suffix == ".csv":
        return ";" if counts[","] == 0 and counts[";"] > 0 else ","
    return max(counts, key=counts.__getitem__)


def read_header(path: str | os.PathLike, *, sep: str | None = None) -> tuple[list[str], str]:
    """Return the column names and separator of a delimited file, checking it looks complete.

    Raises on an empty or header-only file, on duplicated column names (pandas would silently
    rename them ``x.1``), on a one-column header that another separator would split, and on a file
    cut off while written or copied: a last line with fewer fields than the header *and* no final
    line break. Rows that end early but are complete lines are accepted (MaxQuant and R omit
    trailing empty fields); they are read with the missing fields empty.
    """
    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        sep = sep or infer_sep(path)
        head = pd.read_csv(path, sep=sep, header=None, nrows=2, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as err:
        raise ValueError(f"could not parse {path}: {err}") from err
    columns = [str(c) for c in head.iloc[0]]
    if len(head) < 2:
        raise ValueError(
            f"{path} has a header but no data rows (columns: {format_names(columns, 10)})"
        )
    if len(columns) == 1:
        others = [s for s in _SEP_NAMES if s != sep and s in columns[0]]
        if others:
            raise ValueError(
                f"{path}: the header is one column when split at {_SEP_NAMES.get(sep, repr(sep))}"
                f" but contains {_SEP_NAMES[others[0]]}s; pass sep={others[0]!r}"
            )
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise ValueError(f"{path}: duplicated column name(s) {format_names(duplicated)}")
    if not set(path.suffixes) & _COMPRESSED:
        last, complete = _last_line(path)
        n_fields = last.count(sep.encode()) + 1
        if n_fields < len(columns) and not complete:
            raise ValueError(
                f"{path} looks truncated: its last line has {n_fields} of {len(columns)} fields "
                "and no line break at the end"
            )
    return columns, sep


def _last_line(path: Path) -> tuple[bytes, bool]:
    """The last non-empty line of ``path`` and whether a line break follows it.

    Read backwards from the end, because files can be gigabytes.
    """
    with path.open("rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        chunk, block = b"", 1 << 16
        while True:
            start = max(0, end - block)
            fh.seek(start)
            chunk = fh.read(end - start)
            stripped = chunk.rstrip(b"\r\n")
            if b"\n" in stripped or start == 0:
                return stripped.rsplit(b"\n", 1)[-1], len(stripped) < len(chunk)
            block *= 2


def read_delimited(
    path: str | os.PathLike,
    *,
    sep: str,
    usecols: Sequence[str] | None = None,
    dtype: type | dict[str, type] | None = None,
    index_col: int | str | None = None,
    keep_default_na: bool = True,
    na_values: Sequence[str] | None = None,
) -> pd.DataFrame:
    """``pandas.read_csv`` with parser failures re-raised as ``ValueError`` naming the file.

    Without ``index_col`` the rows are numbered from 1 in an index named "data row", so that
    errors point at the row a user can find in the file.
    """
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            usecols=usecols,
            dtype=dtype,
            index_col=index_col,
            low_memory=False,
            keep_default_na=keep_default_na,
            na_values=na_values,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, EOFError) as err:
        raise ValueError(f"could not parse {os.fspath(path)}: {err}") from err
    if index_col is None:
        frame.index = pd.RangeIndex(1, len(frame) + 1, name="data row")
    return frame


def numeric_frame(
    frame: pd.DataFrame, *, source: object, hint: Callable[[list[str]], str] | None = None
) -> pd.DataFrame:
    """Convert every column to float64; a cell that is not a number raises, naming its position.

    ``hint(columns)`` — e.g. the option that keeps text columns out — is appended to the message.
    """
    converted = frame.apply(pd.to_numeric, errors="coerce").astype(np.float64)
    bad = converted.isna().to_numpy() & frame.notna().to_numpy()
    if bad.any():
        rows, cols = np.nonzero(bad)
        cells = [
            f"{frame.index.name or 'row'} {_plain(frame.index[r])!r}, "
            f"column {frame.columns[c]!r}: {frame.iat[r, c]!r}"
            for r, c in zip(rows[:5], cols[:5], strict=True)
        ]
        more = f" (and {bad.sum() - len(cells)} more)" if bad.sum() > len(cells) else ""
        columns = list(dict.fromkeys(str(frame.columns[c]) for c in cols))
        message = f"{source}: non-numeric value(s) at " + "; ".join(cells) + more
        raise ValueError(message + (hint(columns) if hint else ""))
    return converted


def _plain(value: object) -> object:
    """numpy scalars as Python ones, so messages say ``row 79``, not ``np.int64(79)``."""
    return value.item() if isinstance(value, np.generic) else value


def read_table(
    path: str | os.PathLike,
    *,
    sep: str | None = None,
    index_col: int | str = 0,
    orientation: Literal["features_x_samples", "samples_x_features"] = "features_x_samples",
    annotation_cols: Sequence[str] = (),
    zero_as_missing: bool = True,
) -> AnnData:
    """Read a wide matrix (TSV/CSV) into an AnnData of samples × features.

    Parameters
    ----------
    path
        Delimited text file, optionally compressed (``.gz``, ...).
    sep
        Field separator; inferred from the suffix (``.csv`` → comma, or semicolon when the header
        has no comma; ``.tsv``/``.txt`` → tab) or, failing that, from the header line.
    index_col
        Position or name of the column holding the row names (feature or sample names).
    orientation
        ``"features_x_samples"``: one row per feature, one column per sample (the usual export of
        proteomics and expression tools); ``"samples_x_features"``: the transpose. A table with
        fewer features than samples gets a warning suggesting the other orientation.
    annotation_cols
        Non-numeric columns describing the rows (e.g. gene names); they are stored in ``var``
        (rows are features) or ``obs`` (rows are samples) instead of the matrix.
    zero_as_missing
        Treat 0 as a missing value (quantification tools write 0 for "not detected"). Set to
        ``False`` for data where 0 is a real measurement, e.g. log-scale values.

    Returns
    -------
    AnnData with ``X`` (float64, NaN = missing) of shape samples × features.

    Examples
    --------
    >>> adata = omixed.io.read_table("peptides_wide.tsv")  # doctest: +SKIP
    >>> adata.shape  # (n_samples, n_features)  # doctest: +SKIP
    """
    if orientation not in ("features_x_samples", "samples_x_features"):
        raise ValueError(
            f"orientation must be 'features_x_samples' or 'samples_x_features', got {orientation!r}"
        )
    columns, sep = read_header(path, sep=sep)
    if isinstance(index_col, str):
        index_col = columns.index(require_column(columns, index_col, source=path))
    elif not -len(columns) <= index_col < len(columns):
        raise ValueError(f"{path}: index_col={index_col} but the file has {len(columns)} columns")
    for col in annotation_cols:
        require_column(columns, col, source=path)
    # all text, so that numeric_frame can point at the cell that is not a number
    frame = read_delimited(path, sep=sep, dtype=str, index_col=index_col % len(columns))
    if frame.index.hasnans:
        raise ValueError(f"{path}: empty name(s) in index column {frame.index.name!r}")
    frame.index.name = None
    if frame.index.has_duplicates:
        duplicated = frame.index[frame.index.duplicated()].unique()
        raise ValueError(f"{path}: duplicated row name(s) {format_names(duplicated)}")
    rows_are = "features" if orientation == "features_x_samples" else "samples"
    slot = "var" if rows_are == "features" else "obs"

    def hint(bad: list[str]) -> str:
        return (
            f"; if {format_names(bad, 5)} describe the rows, pass "
            f"annotation_cols={[*annotation_cols, *bad]!r} to keep them in {slot}"
        )

    annotation = frame[list(annotation_cols)]
    values = numeric_frame(frame.drop(columns=list(annotation_cols)), source=path, hint=hint)
    if zero_as_missing:
        values = values.mask(values == 0)
    n_rows, n_cols = values.shape
    n_features = n_rows if rows_are == "features" else n_cols
    n_samples = n_cols if rows_are == "features" else n_rows
    if n_features < n_samples:
        other = "samples_x_features" if rows_are == "features" else "features_x_samples"
        warnings.warn(
            f"{path}: read as {n_features} features × {n_samples} samples (one {rows_are[:-1]} "
            f"per row); if the rows are {'samples' if rows_are == 'features' else 'features'}, "
            f"pass orientation={other!r}",
            UserWarning,
            stacklevel=2,
        )
    rows = pd.DataFrame(annotation, index=values.index.astype(str))
    cols = pd.DataFrame(index=values.columns.astype(str))
    if orientation == "features_x_samples":
        return AnnData(X=values.to_numpy().T.copy(), obs=cols, var=rows)
    return AnnData(X=values.to_numpy(), obs=rows, var=cols)
