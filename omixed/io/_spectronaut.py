"""Spectronaut long (normal) report: one row per run × precursor (or × fragment)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import pandas as pd
from anndata import AnnData

from ._assemble import CONTAMINANT_PREFIXES, Reading, per_run, run_name, sum_features, unrecognised
from ._long import long_to_anndata, unique_names
from ._registry import Format, Header, register
from ._table import find_column, format_names, read_delimited, read_header

_PROTEIN = ("PG.ProteinGroups", "PG.ProteinAccessions")
_PRECURSOR = ("EG.PrecursorId", "FG.Id")
_DEFAULT_QUANTITY = {"precursor": "FG.Quantity", "peptide": "FG.Quantity", "protein": "PG.Quantity"}
_ANNOTATIONS = {
    "genes": "PG.Genes",
    "protein_accessions": "PG.ProteinAccessions",
    "modified_sequence": "EG.ModifiedSequence",
    "charge": "FG.Charge",
}


def read_spectronaut(
    path: str | os.PathLike,
    *,
    level: Literal["precursor", "peptide", "protein"] = "precursor",
    quantity: str | None = None,
    q_value: float | None = 0.01,
    pg_q_value: float | None = None,
    drop_contaminants: bool = True,
    contaminant_prefixes: Sequence[str] = CONTAMINANT_PREFIXES,
    sep: str | None = None,
) -> AnnData:
    """Read a Spectronaut long report (precursor or fragment rows) into samples × features.

    Parameters
    ----------
    path
        The report (tab-separated ``.tsv``/``.xls``, or ``.csv``).
    level
        ``"precursor"`` (default; ``EG.PrecursorId``), ``"peptide"`` (``PEP.StrippedSequence``
        within a protein group, its precursors summed) or ``"protein"`` (``PG.ProteinGroups``).
    quantity
        Value column: default ``"FG.Quantity"`` (precursor, peptide) or ``"PG.Quantity"``
        (protein). A fragment column (``"F.PeakArea"``, ``"F.NormalizedPeakArea"``) is summed
        over the fragments Spectronaut used (``F.ExcludedFromQuantification`` false) — how
        Spectronaut forms ``FG.Quantity``.
    q_value, pg_q_value
        Keep rows with ``EG.Qvalue`` (precursor) / ``PG.Qvalue`` (protein group) ≤ these;
        ``None`` skips the filter. Rows flagged ``EG.IsDecoy`` are always dropped.
    drop_contaminants, contaminant_prefixes
        Drop protein groups with a protein id starting with one of the prefixes.
    sep
        Field separator; by default from the suffix or the header line.

    Returns
    -------
    Samples × features with ``obs_names`` = runs (``R.FileName`` without extension) and
    ``obs["condition"]``/``obs["replicate"]`` from ``R.Condition``/``R.Replicate``; ``var`` has
    ``protein``, ``peptide`` below protein level, ``precursor``, ``modified_sequence``,
    ``charge``, ``genes``. Values on the raw scale, 0 = NaN.

    Examples
    --------
    >>> adata = omixed.io.read_spectronaut("Report.tsv", level="peptide")  # doctest: +SKIP
    """
    if level not in _DEFAULT_QUANTITY:
        raise ValueError(f"level must be one of {tuple(_DEFAULT_QUANTITY)}, got {level!r}")
    columns, sep = read_header(path, sep=sep)
    header = Header(path, tuple(columns))
    if not _detect(header):
        raise unrecognised(
            path, "a Spectronaut report (R.FileName, PG.ProteinGroups, ...)", columns
        )
    quantity = quantity or _DEFAULT_QUANTITY[level]
    reading = Reading(
        "read_spectronaut",
        os.fspath(path),
        "Spectronaut report",
        {
            "level": level,
            "quantity": quantity,
            "q_value": q_value,
            "pg_q_value": pg_q_value,
            "drop_contaminants": drop_contaminants,
        },
    )
    protein = find_column(columns, *_PROTEIN)
    names = {
        "run": "R.FileName",
        "protein": protein,
        "peptide": "PEP.StrippedSequence",
        "precursor": find_column(columns, *_PRECURSOR),
        "condition": "R.Condition",
        "replicate": "R.Replicate",
        **_ANNOTATIONS,
    }
    names = {k: c for k, c in names.items() if c in columns}
    for key in ("peptide", "precursor"):
        if key not in names and level != "protein":
            raise KeyError(f"{path}: no {key} column (columns: {format_names(columns, 12)})")
    fragment = quantity.startswith("F.")
    extra = {"EG.Qvalue": q_value, "PG.Qvalue": pg_q_value}
    extra = {c: t for c, t in extra.items() if t is not None}
    wanted = [*names.values(), quantity, *extra, "EG.IsDecoy"]
    if fragment:
        wanted.append("F.ExcludedFromQuantification")
    missing = [c for c in (quantity, *extra) if c not in columns]
    if missing:
        raise KeyError(
            f"{path}: missing column(s) {format_names(missing)} "
            f"(columns: {format_names(columns, 12)})"
        )
    text = [c for k, c in names.items() if k not in ("charge", "replicate")]
    frame = read_delimited(
        path,
        sep=sep,
        usecols=[c for c in dict.fromkeys(wanted) if c in columns],
        dtype=dict.fromkeys(text, str),
    )
    reading.rows_read = len(frame)
    frame = frame.rename(columns={c: k for k, c in names.items()})
    frame["run"] = frame["run"].map(run_name)
    runs = pd.unique(frame["run"])
    frame = reading.drop_missing(frame, "protein", "protein group")
    if "EG.IsDecoy" in frame:
        frame = reading.drop(frame, frame["EG.IsDecoy"].astype(str).str.lower().eq("true"), "decoy")
    for column, threshold in extra.items():
        frame = reading.keep_at_most(frame, column, threshold)
    prefixes = tuple(contaminant_prefixes) if drop_contaminants else ()
    frame = reading.drop_prefixed(frame, frame["protein"], prefixes, "contaminant")
    feature = {"protein": ["protein"]}.get(level, ["precursor"])
    if fragment:
        used = ~frame["F.ExcludedFromQuantification"].astype(str).str.lower().eq("true")
        frame = reading.drop(frame, ~used.to_numpy(), "fragment excluded from quantification")
        reading.note(f"{quantity} summed over the fragments of each precursor and run")
        aggregate = "sum"
    else:
        # precursor-level values repeat on every fragment row of a fragment-level report
        frame = frame.drop_duplicates(["run", *feature, quantity])
        aggregate = None
    annotations = {
        k: k
        for k in (
            "protein",
            "peptide",
            "genes",
            "protein_accessions",
            "modified_sequence",
            "charge",
        )
        if k in frame and k not in feature
    }
    if level == "protein":
        annotations = {k: k for k in ("genes", "protein_accessions") if k in frame}
    frame["value"] = frame.pop(quantity)
    adata = long_to_anndata(
        frame,
        sample="run",
        feature=feature,
        value="value",
        annotations=annotations,
        aggregate=aggregate,
        samples=runs,
        source=path,
    )
    per_run(adata, frame, "run", ["condition", "replicate"])
    if level == "peptide":
        adata = sum_features(adata, ["protein", "peptide"], keep=["genes", "protein_accessions"])
        adata.var_names = unique_names(adata.var["peptide"], adata.var["protein"], source=path)
    else:
        adata.var_names = adata.var[feature[0]].astype(str).to_numpy()
    return reading.finish(adata, level=level, value=quantity)


def _detect(header: Header) -> bool:
    return (
        header.has("R.FileName")
        and any(header.has(c) for c in _PROTEIN)
        and any(header.has(c) for c in (*_PRECURSOR, "PEP.StrippedSequence"))
    )


register(Format("Spectronaut report", _detect, read_spectronaut))
