"""AlphaPept ``results.csv`` (precursors × runs, long) and ``results_proteins.csv``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import pandas as pd
from anndata import AnnData

from ._assemble import (
    CONTAMINANT_PREFIXES,
    Reading,
    finish_level,
    load_columns,
    unrecognised,
    wide_to_anndata,
)
from ._long import long_to_anndata, unique_names
from ._registry import Format, Header, register
from ._table import find_column, read_header, require_column

_QUANTITIES = ("ms1_int_sum_apex_dn", "ms1_int_sum_apex", "int_sum_dn", "int_sum")


def read_alphapept(
    path: str | os.PathLike,
    *,
    level: Literal["precursor", "peptide"] = "precursor",
    quantity: str | None = None,
    lfq: bool = True,
    aggregate: Literal["sum", "max"] = "sum",
    drop_contaminants: bool = True,
    contaminant_prefixes: Sequence[str] = CONTAMINANT_PREFIXES,
) -> AnnData:
    """Read AlphaPept's precursor table (``results.csv``) or protein table.

    Parameters
    ----------
    path
        ``results.csv`` (one row per precursor and run; ``shortname`` names the run) or
        ``results_proteins.csv`` (protein × sample, ``<sample>_LFQ`` and raw ``<sample>``).
    level
        Precursor table: ``"precursor"`` (default) or ``"peptide"`` (precursors summed).
    quantity
        Precursor table: value column, default the first of ``ms1_int_sum_apex_dn`` (AlphaPept's
        normalised apex intensity), ``ms1_int_sum_apex``, ``int_sum_dn``, ``int_sum``.
    lfq
        Protein table: the ``_LFQ`` columns (default) or the raw intensities.
    aggregate
        Precursor table: how several rows of one precursor in one run (AlphaPept reports each
        matched feature) are combined, ``"sum"`` or ``"max"``; their number is in ``uns``.
    drop_contaminants, contaminant_prefixes
        Drop features whose protein has an id starting with one of the prefixes. Rows flagged
        ``decoy`` are always dropped.

    Returns
    -------
    Samples × precursors (modified ``sequence`` + ``charge``) or × proteins; ``var`` has
    ``protein`` (``protein_group`` or ``protein``), ``peptide`` (``sequence_naked``).

    Examples
    --------
    >>> adata = omixed.io.read_alphapept("results.csv")  # doctest: +SKIP
    """
    columns, sep = read_header(path, sep=",")
    header = Header(path, tuple(columns))
    prefixes = tuple(contaminant_prefixes) if drop_contaminants else ()
    if _detect_proteins(header):
        reading = Reading(
            "read_alphapept",
            os.fspath(path),
            "AlphaPept protein table",
            {"lfq": lfq, "drop_contaminants": drop_contaminants},
        )
        lfq_columns = [c for c in columns[1:] if c.endswith("_LFQ")]
        samples = {c[:-4]: (c if lfq else c[:-4]) for c in lfq_columns}
        if not lfq and not set(samples.values()) <= set(columns):
            raise KeyError(f"{path}: no raw intensity columns next to the _LFQ ones; use lfq=True")
        # pandas names the empty first header cell "Unnamed: 0"
        frame = load_columns(
            os.fspath(path),
            sep=sep,
            names={"protein": "Unnamed: 0"},
            values=list(samples.values()),
            reading=reading,
        )
        frame = reading.drop_prefixed(frame, frame["protein"], prefixes, "contaminant")
        adata = wide_to_anndata(frame, samples, frame[["protein"]], source=path)
        adata.var_names = adata.var["protein"].to_numpy()
        return reading.finish(adata, level="protein", value="LFQ" if lfq else "intensity")
    if not _detect_results(header):
        raise unrecognised(path, "an AlphaPept results or protein table", columns)
    quantity = quantity or next((q for q in _QUANTITIES if q in columns), _QUANTITIES[0])
    reading = Reading(
        "read_alphapept",
        os.fspath(path),
        "AlphaPept results",
        {"level": level, "quantity": quantity, "drop_contaminants": drop_contaminants},
    )
    names = {
        "run": find_column(columns, "shortname", "filename"),
        "protein": find_column(columns, "protein_group", "protein"),
        "peptide": require_column(columns, "sequence_naked", source=path),
        "modified_sequence": require_column(columns, "sequence", source=path),
        "charge": require_column(columns, "charge", source=path),
        "decoy": find_column(columns, "decoy"),
    }
    names = {k: c for k, c in names.items() if c is not None}
    require_column(columns, quantity, source=path)
    frame = load_columns(
        os.fspath(path),
        sep=sep,
        names=names,
        values=[quantity],
        numeric=("charge",),
        reading=reading,
    )
    if "decoy" in frame:
        frame = reading.drop(frame, frame["decoy"].str.lower().eq("true").to_numpy(), "decoy")
    frame = reading.drop_prefixed(frame, frame["protein"], prefixes, "contaminant")
    frame["value"] = frame.pop(quantity)
    repeated = frame.duplicated(["run", "modified_sequence", "charge"]).sum()
    if repeated:
        reading.note(f"{int(repeated)} repeated precursor row(s) in a run combined by {aggregate}")
    reading.options["aggregate"] = aggregate
    adata = long_to_anndata(
        frame,
        sample="run",
        feature=["modified_sequence", "charge"],
        value="value",
        annotations={"protein": "protein", "peptide": "peptide"},
        aggregate=aggregate,
        samples=pd.unique(frame["run"]),
        source=path,
    )
    key = adata.var["modified_sequence"] + "/" + adata.var["charge"].astype(int).astype(str)
    adata.var_names = unique_names(key, adata.var["protein"], source=path)
    return finish_level(adata, level, reading, value=quantity, source=path)


def _detect_results(header: Header) -> bool:
    return header.has("sequence_naked", "sequence", "charge") and (
        header.has("shortname") or header.has("filename")
    )


def _detect_proteins(header: Header) -> bool:
    """An unnamed first column of proteins, then ``<sample>_LFQ`` (and raw ``<sample>``) columns."""
    rest = header.columns[1:]
    lfq = [c for c in rest if c.endswith("_LFQ")]
    paired = all(c.endswith("_LFQ") or f"{c}_LFQ" in rest for c in rest)
    return header.columns[:1] in (("",), ("Unnamed: 0",)) and bool(lfq) and paired


register(
    Format("AlphaPept results", _detect_results, read_alphapept),
    Format("AlphaPept protein table", _detect_proteins, read_alphapept),
)
