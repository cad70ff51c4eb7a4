"""PEAKS Studio LFQ exports: feature/peptide tables with per-sample ``Area`` columns."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

from anndata import AnnData

from ._assemble import (
    CONTAMINANT_PREFIXES,
    DECOY_PREFIXES,
    Reading,
    finish_level,
    load_columns,
    precursor_key,
    run_name,
    strip_modifications,
    unrecognised,
    wide_to_anndata,
)
from ._long import unique_names
from ._registry import Format, Header, register
from ._table import find_column, read_header

_AREAS = (" Normalized Area", " Area")


def read_peaks(
    path: str | os.PathLike,
    *,
    level: Literal["precursor", "peptide"] = "precursor",
    area: str | None = None,
    drop_contaminants: bool = True,
    contaminant_prefixes: Sequence[str] = CONTAMINANT_PREFIXES,
    decoy_prefixes: Sequence[str] = DECOY_PREFIXES,
) -> AnnData:
    """Read a PEAKS LFQ feature or peptide table (``*.features.csv``, ``peptide.csv``).

    Parameters
    ----------
    path
        PEAKS export with a ``Peptide`` column and ``"<sample> Normalized Area"`` (or
        ``"Area <sample>"``) columns.
    level
        ``"precursor"`` (default; ``Peptide`` + ``z``) or ``"peptide"`` (charges and modified
        forms of a sequence summed).
    area
        Which per-sample column: ``"Normalized Area"`` (default when present) or ``"Area"``.
    drop_contaminants, contaminant_prefixes, decoy_prefixes
        Drop features whose ``Accession`` has a contaminant id / only decoy ids.

    Returns
    -------
    Samples × features: precursors (``Peptide`` + charge ``z``) for feature tables, peptides
    otherwise; ``obs_names`` = run names; ``var`` has ``protein`` (``Accession``), ``peptide``
    (stripped), ``modified_sequence``, ``charge``. Features without an accession are dropped
    with a count.

    Examples
    --------
    >>> adata = omixed.io.read_peaks("lfq.dia.features.csv")  # doctest: +SKIP
    """
    columns, sep = read_header(path)
    if not _detect(Header(path, tuple(columns))):
        raise unrecognised(path, "a PEAKS LFQ table", columns)
    chosen = " " + area if area else next(s for s in _AREAS if _samples(columns, s))
    samples = _samples(columns, chosen)
    if not samples:
        raise KeyError(f"{path}: no per-sample '{chosen.strip()}' columns; pass area=")
    reading = Reading(
        "read_peaks",
        os.fspath(path),
        "PEAKS LFQ table",
        {"level": level, "area": chosen.strip(), "drop_contaminants": drop_contaminants},
    )
    names = {
        "modified_sequence": "Peptide",
        "protein": find_column(columns, "Accession", "Protein Accession"),
        "charge": find_column(columns, "z"),
    }
    names = {k: c for k, c in names.items() if c is not None}
    frame = load_columns(
        os.fspath(path),
        sep=sep,
        names=names,
        values=list(samples.values()),
        numeric=("charge",),
        reading=reading,
    )
    contaminants = contaminant_prefixes if drop_contaminants else ()
    frame = reading.drop_flagged(frame, decoy_prefixes, contaminants)
    frame["peptide"] = strip_modifications(frame["modified_sequence"])  # PEAKS: "(+15.99)"
    var = frame[[c for c in ("protein", "peptide", "modified_sequence", "charge") if c in frame]]
    adata = wide_to_anndata(frame, samples, var, source=path)
    adata.var_names = unique_names(precursor_key(adata.var), adata.var["protein"], source=path)
    return finish_level(adata, level, reading, value=chosen.strip(), source=path)


def _samples(columns: Sequence[str], suffix: str) -> dict[str, str]:
    """``"<file> Normalized Area"`` columns (not "Avg. Area", "Group N ...")."""
    found = {}
    for column in columns:
        if column.endswith(suffix) and not column.startswith(("Group ", "Avg.")):
            name = column[: -len(suffix)]
            if name and not name.endswith("Normalized"):
                found[run_name(name)] = column
        elif suffix == " Area" and column.startswith("Area "):
            found[run_name(column[5:])] = column
    return found


def _detect(header: Header) -> bool:
    return (
        header.has("Peptide")
        and (header.has("Accession") or header.has("Protein Accession"))
        and (header.any_ends(" Normalized Area") or header.any_starts("Area "))
    )


register(Format("PEAKS LFQ table", _detect, read_peaks))
