"""Building blocks every tool reader shares: row filters that keep count, and the final AnnData.

Every reader returns the same shape: samples × features, ``var["protein"]`` (text, never the
string "nan"), run/sample names as ``obs_names``, values on the raw scale with 0 as NaN, unique
``var_names`` and ``uns["source"]`` saying what was read, with which options, and which rows were
dropped and why.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from anndata import AnnData

from ._long import unique_names
from ._table import format_names, numeric_frame, read_delimited

# what search engines put in front of contaminant and decoy protein ids (MaxQuant CON__/REV__,
# FragPipe contam_/rev_, DIA-NN 2.x cRAP-, ProteoBench's Cont_)
CONTAMINANT_PREFIXES = ("CON__", "contam_", "cRAP-", "Cont_")
DECOY_PREFIXES = ("REV__", "rev_", "DECOY_", "decoy_")

_RUN_SUFFIXES = re.compile(r"(\.(raw|mzml|mzxml|wiff|wiff2|d|dia|mgf|gz))+$", re.IGNORECASE)
# modifications as the tools write them inside a sequence ("[+57.02]", "(ox)"), and anything
# that is not a residue letter
_MODIFICATION = re.compile(r"\[[^]]*\]|\([^)]*\)|[^A-Z]")


def run_name(file: str) -> str:
    """The run of a raw-file path, as the tools name it: no folder, no raw/mzML/... extension."""
    base = re.split(r"[\\/]", str(file).rstrip("\\/"))[-1]
    return _RUN_SUFFIXES.sub("", base) or base


def prefixed(ids: pd.Series, prefixes: Sequence[str]) -> np.ndarray:
    """Rows where any of the ';'-separated ids starts with one of ``prefixes``."""
    if not prefixes:
        return np.zeros(len(ids), dtype=bool)
    pattern = "(?:^|;)\\s*(?:" + "|".join(re.escape(p) for p in prefixes) + ")"
    return ids.fillna("").astype(str).str.contains(pattern, regex=True).to_numpy()


def strip_modifications(sequences: pd.Series) -> pd.Series:
    """Bare peptide sequences: modifications in ``[...]`` or ``(...)`` and non-residues removed."""
    return sequences.map(lambda s: _MODIFICATION.sub("", s))


def precursor_key(var: pd.DataFrame) -> pd.Series:
    """``"<modified_sequence>/<charge>"`` per feature (the sequence alone without a charge)."""
    key = var["modified_sequence"].astype(str)
    if "charge" in var:
        key = key + "/" + var["charge"].astype(int).astype(str)
    return key


def all_prefixed(ids: pd.Series, prefixes: Sequence[str]) -> np.ndarray:
    """Rows where every ';'-separated id starts with one of ``prefixes`` (decoy-only groups)."""
    if not prefixes:
        return np.zeros(len(ids), dtype=bool)
    pattern = re.compile("|".join(re.escape(p) for p in prefixes))
    return np.array(
        [
            bool(parts) and all(pattern.match(p.strip()) for p in parts)
            for parts in (str(v).split(";") if pd.notna(v) and str(v) else [] for v in ids)
        ],
        dtype=bool,
    )


@dataclass
class Reading:
    """What a reader did, for ``uns["source"]``: rows read, rows dropped and why, notes."""

    reader: str
    path: str
    format: str
    options: dict[str, object]
    rows_read: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def drop(self, frame: pd.DataFrame, mask: Iterable[bool], reason: str) -> pd.DataFrame:
        """``frame`` without the rows in ``mask``, counted under ``reason``."""
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            self.dropped[reason] = self.dropped.get(reason, 0) + int(mask.sum())
        return frame.loc[~mask]

    def note(self, message: str, *, warn: bool = False) -> None:
        """Record ``message`` in ``uns["source"]["notes"]`` (and warn for what changes results)."""
        self.notes.append(message)
        if warn:
            warnings.warn(f"{self.path}: {message}", UserWarning, stacklevel=3)

    def drop_missing(self, frame: pd.DataFrame, column: str, what: str) -> pd.DataFrame:
        """Drop rows with an empty ``column`` (a protein the tool left blank), with a warning."""
        empty = frame[column].isna() | frame[column].astype(str).str.strip().eq("")
        if empty.any():
            self.note(
                f"{int(empty.sum())} row(s) without a {what} (empty {column!r}) dropped", warn=True
            )
        return self.drop(frame, empty, f"no {what} ({column!r} empty)")

    def drop_prefixed(
        self, frame: pd.DataFrame, ids: pd.Series, prefixes: Sequence[str], reason: str
    ) -> pd.DataFrame:
        """Drop rows with an id (of ';'-separated ``ids``) starting with one of ``prefixes``."""
        return self.drop(frame, prefixed(ids, prefixes), reason)

    def drop_flagged(
        self, frame: pd.DataFrame, decoys: Sequence[str], contaminants: Sequence[str]
    ) -> pd.DataFrame:
        """Drop rows whose proteins are all decoys, then rows with a contaminant protein."""
        frame = self.drop(frame, all_prefixed(frame["protein"], tuple(decoys)), "decoy")
        return self.drop_prefixed(frame, frame["protein"], tuple(contaminants), "contaminant")

    def keep_at_most(self, frame: pd.DataFrame, column: str, threshold: float) -> pd.DataFrame:
        """Keep rows with ``column`` ≤ ``threshold`` (a q-value filter); others are counted."""
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not (0.0 <= threshold <= 1.0)
        ):
            raise ValueError(
                f"{self.path}: the {column} threshold must be a number from 0 to 1, got "
                f"{threshold!r}" + (" (text)" if isinstance(threshold, str) else "")
            )
        values = numeric_frame(frame[[column]], source=self.path)[column]
        return self.drop(frame, ~(values <= threshold).to_numpy(), f"{column} > {threshold}")

    def finish(self, adata: AnnData, *, level: str, value: str) -> AnnData:
        """Check the result has the shared shape and attach ``uns["source"]``."""
        if adata.n_vars == 0:
            raise ValueError(
                f"{self.path}: no {level} left after filtering "
                f"({self._dropped_text() or 'nothing dropped'}); {self._options_text()}"
            )
        if not adata.var_names.is_unique:
            duplicated = adata.var_names[adata.var_names.duplicated()].unique()
            raise ValueError(f"{self.path}: duplicated feature name(s) {format_names(duplicated)}")
        if "protein" in adata.var:
            protein = adata.var["protein"]
            if protein.isna().any():  # guarded by drop_missing; never write the text "nan"
                raise AssertionError(f"{self.path}: missing protein names after filtering")
            adata.var["protein"] = protein.astype(str).to_numpy()
        adata.var = _storable_columns(adata.var)
        adata.obs = _storable_columns(adata.obs)
        adata.obs_names = adata.obs_names.astype(str)
        adata.var_names = adata.var_names.astype(str)
        adata.uns["source"] = {
            "reader": self.reader,
            "path": self.path,
            "format": self.format,
            "level": level,
            "value": value,
            "options": {k: _storable(v) for k, v in self.options.items() if v is not None},
            "rows_read": self.rows_read,
            "rows_kept": self.rows_read - sum(self.dropped.values()),
            "rows_dropped": dict(self.dropped),
            "notes": list(self.notes),
        }
        return adata

    def _dropped_text(self) -> str:
        return "; ".join(f"{n} {reason}" for reason, n in self.dropped.items())

    def _options_text(self) -> str:
        shown = {k: v for k, v in self.options.items() if v is not None}
        return f"options: {shown}" if shown else "no options set"


def _storable_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Annotation columns h5ad can write: empty ones dropped, text with gaps categorical."""
    empty = [c for c in frame.columns if frame[c].isna().all()]
    frame = frame.drop(columns=empty)
    for column in frame.columns:
        if frame[column].dtype == object and frame[column].isna().any():
            frame[column] = frame[column].astype("category")
    return frame


def _storable(value: object) -> object:
    """Options as h5ad can store them (no None, no tuples)."""
    if isinstance(value, tuple | list):
        return [str(v) for v in value]
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


def unrecognised(path: object, what: str, columns: Sequence[str]) -> ValueError:
    """The error for a file that is not the layout a tool reader expects."""
    return ValueError(f"{path}: not {what} (columns: {format_names(columns, 12)})")


def choose_level(path: object, what: str, level: str | None, allowed: Sequence[str]) -> str:
    """``level``, or the first allowed one by default; refuse a level this file does not have."""
    level = level or allowed[0]
    if level not in allowed:
        raise ValueError(f"{path} is {what}: level must be one of {tuple(allowed)}, got {level!r}")
    return level


def per_run(adata: AnnData, frame: pd.DataFrame, run: str, keys: Sequence[str]) -> None:
    """Copy run-level columns of a long table (condition, replicate, ...) into ``obs``."""
    runs = frame[run].astype(str)
    for key in keys:
        if key in frame:
            adata.obs[key] = frame.groupby(runs)[key].first().reindex(adata.obs_names).to_numpy()


def wide_to_anndata(
    frame: pd.DataFrame,
    value_columns: Mapping[str, str],
    var: pd.DataFrame,
    *,
    source: object,
    obs: pd.DataFrame | None = None,
) -> AnnData:
    """Samples × features from a table with one row per feature and one column per sample.

    ``value_columns`` maps each sample name to its column; 0 and empty cells become NaN.
    """
    values = numeric_frame(frame[list(value_columns.values())], source=source).to_numpy()
    X = np.where(values == 0, np.nan, values).T
    if obs is None:
        obs = pd.DataFrame(index=pd.Index(list(value_columns), dtype=str))
    var = var.reset_index(drop=True)
    var.index = var.index.astype(str)
    return AnnData(X=X, obs=obs, var=var)


def sample_columns(columns: Sequence[str], *, prefix: str = "", suffix: str = "") -> dict[str, str]:
    """``{sample: column}`` for the columns named ``prefix + sample + suffix``."""
    found = {}
    for column in columns:
        if (
            column.startswith(prefix)
            and column.endswith(suffix)
            and len(column) > len(prefix + suffix)
        ):
            found[column[len(prefix) : len(column) - len(suffix)]] = column
    return found


def sum_features(adata: AnnData, by: Sequence[str], *, keep: Sequence[str] = ()) -> AnnData:
    """Sum features sharing the ``var`` columns ``by`` (e.g. a peptide's precursors) per sample.

    A cell with no value among the summed features stays NaN. ``var`` keeps ``by`` and the
    columns of ``keep`` that are constant within every group.
    """
    keys = adata.var[list(by)].astype(str).agg("\t".join, axis=1).to_numpy()
    X = pd.DataFrame(adata.X.T).groupby(keys, sort=False).sum(min_count=1)
    grouped = adata.var.groupby(keys, sort=False)
    constant = [c for c in keep if c in adata.var and (grouped[c].nunique() <= 1).all()]
    var = grouped[[*by, *constant]].first().reset_index(drop=True)
    var.index = var.index.astype(str)
    return AnnData(X=X.to_numpy().T, obs=adata.obs.copy(), var=var)


def load_columns(
    path: str,
    *,
    sep: str,
    names: Mapping[str, str],
    values: Sequence[str] = (),
    numeric: Sequence[str] = (),
    reading: Reading,
) -> pd.DataFrame:
    """Read ``names`` (renamed to their keys) and ``values`` columns; counts rows in ``reading``.

    ``names`` columns are read as text except the keys in ``numeric``; rows without a protein
    (when ``"protein"`` is among the keys) are dropped with a warning.
    """
    text = {c: str for k, c in names.items() if k not in numeric}
    frame = read_delimited(
        path, sep=sep, usecols=list(dict.fromkeys([*names.values(), *values])), dtype=text
    )
    reading.rows_read = len(frame)
    frame = frame.rename(columns={c: k for k, c in names.items()})
    if "protein" in names:
        frame = reading.drop_missing(frame, "protein", "protein")
    return frame


def finish_level(
    adata: AnnData,
    level: str,
    reading: Reading,
    *,
    value: str,
    source: object,
    keep: Sequence[str] = (),
) -> AnnData:
    """Finish a precursor-level table, first summing precursors to peptides if asked."""
    if level not in ("precursor", "peptide"):
        raise ValueError(f"level must be 'precursor' or 'peptide', got {level!r}")
    if level == "peptide":
        adata = sum_features(adata, ["protein", "peptide"], keep=keep)
        adata.var_names = unique_names(adata.var["peptide"], adata.var["protein"], source=source)
    return reading.finish(adata, level=level, value=value)
