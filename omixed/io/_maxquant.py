"""MaxQuant ``peptides.txt`` and ``evidence.txt`` to peptide-level AnnData."""

from __future__ import annotations

import os
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ._long import long_to_anndata
from ._table import (
    find_column,
    format_names,
    numeric_frame,
    read_delimited,
    read_header,
    require_column,
)

# column spellings across MaxQuant versions; the first is the current one
_SEQUENCE = ("Sequence",)
_RAZOR = ("Leading razor protein",)
_PROTEINS = ("Proteins",)
_GENES = ("Gene names",)
_REVERSE = ("Reverse",)
_CONTAMINANT = ("Potential contaminant", "Contaminant")
# evidence.txt has no Experiment column when no experiment design was given
_SAMPLE = ("Experiment", "Raw file")


def read_maxquant(
    path: str | os.PathLike,
    *,
    kind: Literal["peptides", "evidence"] | None = "peptides",
    intensity: str | None = None,
    drop_contaminants: bool = True,
    drop_reverse: bool = True,
    aggregate: Literal["sum", "max"] = "sum",
) -> AnnData:
    """Read MaxQuant ``peptides.txt`` or ``evidence.txt`` into a samples × peptides AnnData.

    Parameters
    ----------
    path
        A MaxQuant ``txt/`` output table (tab-separated).
    kind
        ``"peptides"`` (one row per peptide sequence, one intensity column per sample) or
        ``"evidence"`` (one row per identified feature: peptide × modification × charge × raw file);
        ``None`` detects it from the columns.
    intensity
        For ``peptides``: prefix of the per-sample columns, ``"<prefix> <sample>"``; default
        ``"LFQ intensity"`` (``"Intensity"`` for the raw intensities, ``"Intensity L"`` for one
        SILAC channel). For ``evidence``: the value column, default ``"Intensity"``.
    drop_contaminants, drop_reverse
        Drop rows flagged ``+`` in ``Potential contaminant`` (``Contaminant`` in old versions) or
        ``Reverse`` (decoys). The flags are kept in ``var`` as booleans either way.
    aggregate
        ``evidence`` only: how the rows of one peptide sequence in one sample (charge states,
        modified forms, fractions of one experiment) become one value: ``"sum"`` (summed
        intensities, what MaxQuant itself reports per peptide) or ``"max"``.

    Returns
    -------
    AnnData with ``obs_names`` = samples (the column suffixes, or ``Experiment`` — ``Raw file`` if
    no experiments were defined — for evidence) and ``var_names`` = peptide sequences. ``var``
    holds ``peptide``, ``protein`` (the ``Leading razor protein``), ``proteins`` (all proteins of
    the peptide), ``genes`` (if present), ``reverse`` and ``contaminant``. Values are intensities on
    the raw scale; MaxQuant's 0 ("not quantified") is NaN.

    Examples
    --------
    >>> adata = omixed.io.read_maxquant("txt/peptides.txt")  # doctest: +SKIP
    >>> adata = omixed.io.read_maxquant("txt/evidence.txt", kind="evidence")  # doctest: +SKIP
    """
    columns, sep = read_header(path, sep="\t")
    detected = _detect_kind(columns)
    if kind is None:
        if detected is None:
            raise ValueError(
                f"{path}: cannot tell whether this is peptides.txt or evidence.txt "
                f"(columns: {format_names(columns)})"
            )
        kind = detected
    elif kind not in ("peptides", "evidence"):
        raise ValueError(f"kind must be 'peptides', 'evidence' or None, got {kind!r}")
    elif detected is not None and detected != kind:
        raise ValueError(f"{path} looks like MaxQuant {detected}.txt, not {kind}.txt (kind=None)")
    if aggregate not in ("sum", "max"):
        raise ValueError(f"aggregate must be 'sum' or 'max', got {aggregate!r}")

    # canonical var name -> file column; optional columns only if present
    names = {
        "peptide": require_column(columns, *_SEQUENCE, source=path),
        "protein": require_column(columns, *_RAZOR, source=path),
        "proteins": find_column(columns, *_PROTEINS),
        "genes": find_column(columns, *_GENES),
        "reverse": _flag_column(columns, _REVERSE, drop_reverse, "drop_reverse", path),
        "contaminant": _flag_column(
            columns, _CONTAMINANT, drop_contaminants, "drop_contaminants", path
        ),
    }
    names = {key: column for key, column in names.items() if column is not None}
    flags = [key for key in ("reverse", "contaminant") if key in names]
    if kind == "peptides":
        adata = _read_peptides(path, sep, columns, names, intensity or "LFQ intensity")
    else:
        adata = _read_evidence(path, sep, columns, names, intensity or "Intensity", aggregate)
    for key in flags:
        adata.var[key] = adata.var[key].eq("+").to_numpy()
    drop = np.zeros(adata.n_vars, dtype=bool)
    if drop_reverse:
        drop |= adata.var["reverse"].to_numpy()
    if drop_contaminants:
        drop |= adata.var["contaminant"].to_numpy()
    adata = adata[:, ~drop].copy()
    adata.uns["source"] = {
        "reader": "read_maxquant",
        "path": os.fspath(path),
        "kind": kind,
        "intensity": intensity or ("LFQ intensity" if kind == "peptides" else "Intensity"),
        "aggregate": aggregate,
        "dropped_features": int(drop.sum()),
    }
    return adata


def _detect_kind(columns: list[str]) -> Literal["peptides", "evidence"] | None:
    """evidence.txt has one row per raw file (``Raw file``); peptides.txt has per-sample columns."""
    if find_column(columns, *_SAMPLE) is not None:
        return "evidence"
    if any(c.startswith("Intensity ") for c in columns):
        return "peptides"
    return None


def _flag_column(
    columns: list[str], spellings: tuple[str, ...], drop: bool, option: str, path: object
) -> str | None:
    """Find a ``+`` flag column; required only if the caller wants to drop flagged rows."""
    found = find_column(columns, *spellings)
    if found is None and drop:
        raise KeyError(
            f"{path}: missing column {spellings[0]!r} needed to drop flagged rows; "
            f"pass {option}=False to keep all rows"
        )
    return found


def _read_peptides(
    path: str | os.PathLike, sep: str, columns: list[str], names: dict[str, str], prefix: str
) -> AnnData:
    """peptides.txt: one row per sequence, the samples are the ``"<prefix> <sample>"`` columns."""
    value_columns = [c for c in columns if c.startswith(prefix + " ")]
    if not value_columns:
        raise KeyError(
            f"{path}: no '{prefix} <sample>' columns; intensity prefixes present: "
            f"{format_names(_intensity_prefixes(columns)) or 'none'}; pass intensity=<prefix>"
        )
    # SILAC tables have "Intensity L <sample>" next to "Intensity <sample>": the plain prefix
    # would read the channels as extra samples
    labelled = [
        f"{prefix} {label}"
        for label in ("L", "M", "H")
        if any(c.startswith(f"{prefix} {label} ") for c in columns)
    ]
    if labelled:
        raise ValueError(
            f"{path} holds labelled channels ({format_names(labelled)}); "
            "pass one of them as intensity="
        )
    frame = read_delimited(
        path,
        sep=sep,
        usecols=[*names.values(), *value_columns],
        dtype={column: str for column in names.values()},
    )
    if frame[names["peptide"]].duplicated().any():
        duplicated = frame[names["peptide"]][frame[names["peptide"]].duplicated()]
        raise ValueError(f"{path}: duplicated peptide sequence(s) {format_names(duplicated)}")
    values = numeric_frame(frame[value_columns], source=path).to_numpy()
    var = frame[list(names.values())].rename(columns={v: k for k, v in names.items()})
    var.index = pd.Index(var["peptide"].astype(str).to_numpy())
    obs = pd.DataFrame(index=pd.Index([c[len(prefix) + 1 :] for c in value_columns]))
    return AnnData(X=np.where(values == 0, np.nan, values).T, obs=obs, var=var)


def _intensity_prefixes(columns: list[str]) -> list[str]:
    """Prefixes ending in 'intensity' with per-sample columns, e.g. 'Intensity', 'LFQ intensity'."""
    cut = {c: c.lower().find("intensity ") + len("intensity") for c in columns}
    prefixes = {c[:end] for c, end in cut.items() if end >= len("intensity")}
    return sorted(p for p in prefixes if any(c.startswith(p + " ") for c in columns))


def _read_evidence(
    path: str | os.PathLike,
    sep: str,
    columns: list[str],
    names: dict[str, str],
    value: str,
    aggregate: Literal["sum", "max"],
) -> AnnData:
    """evidence.txt: long; rows of one sequence and sample are aggregated."""
    sample = require_column(columns, *_SAMPLE, source=path)
    value = require_column(columns, value, source=path)
    frame = read_delimited(
        path,
        sep=sep,
        usecols=[*names.values(), sample, value],
        dtype={column: str for column in (*names.values(), sample)},
    )
    adata = long_to_anndata(
        frame,
        sample=sample,
        feature=[names["peptide"]],
        value=value,
        annotations={k: v for k, v in names.items() if k != "peptide"},
        aggregate=aggregate,
        source=path,
    )
    adata.var = adata.var.rename(columns={names["peptide"]: "peptide"})
    adata.var_names = adata.var["peptide"].astype(str).to_numpy()
    return adata
