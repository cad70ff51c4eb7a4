"""Sage ``lfq.tsv``: one row per peptide (or precursor), one intensity column per raw file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

from anndata import AnnData

from ._assemble import (
    CONTAMINANT_PREFIXES,
    DECOY_PREFIXES,
    Reading,
    all_prefixed,
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
from ._table import read_header

_FIXED = ("peptide", "charge", "proteins", "q_value", "score", "spectral_angle")


def read_sage(
    path: str | os.PathLike,
    *,
    level: Literal["precursor", "peptide"] = "precursor",
    q_value: float | None = 0.01,
    drop_contaminants: bool = True,
    contaminant_prefixes: Sequence[str] = CONTAMINANT_PREFIXES,
    decoy_prefixes: Sequence[str] = DECOY_PREFIXES,
) -> AnnData:
    """Read Sage's label-free quantification table ``lfq.tsv`` into samples × precursors.

    Parameters
    ----------
    path
        ``lfq.tsv`` (tab-separated).
    level
        ``"precursor"`` (default; Sage's rows) or ``"peptide"`` (a peptide's charge states and
        modified forms summed).
    q_value
        Keep rows with ``q_value`` ≤ this (Sage's peptide-level q-value after match between
        runs); ``None`` keeps all.
    drop_contaminants, contaminant_prefixes
        Drop rows whose ``proteins`` include an id starting with one of the prefixes.
    decoy_prefixes
        Rows whose proteins are all decoys (Sage's ``rev_``) are dropped.

    Returns
    -------
    Samples × precursors (peptide + charge; peptides when Sage combined charge states), with
    ``obs_names`` = raw file names without extension; ``var`` has ``protein`` (Sage's
    ``proteins``), ``peptide`` (stripped), ``modified_sequence`` and ``charge``. Values are the
    intensities Sage writes, 0 = NaN.

    Examples
    --------
    >>> adata = omixed.io.read_sage("lfq.tsv")  # doctest: +SKIP
    """
    columns, sep = read_header(path, sep="\t")
    if not _detect(Header(path, tuple(columns))):
        raise unrecognised(path, "a Sage lfq.tsv", columns)
    reading = Reading(
        "read_sage",
        os.fspath(path),
        "Sage lfq.tsv",
        {"level": level, "q_value": q_value, "drop_contaminants": drop_contaminants},
    )
    samples = {run_name(c): c for c in columns if c not in _FIXED}
    names = {k: k for k in ("peptide", "charge", "q_value") if k in columns}
    names["protein"] = "proteins"
    frame = load_columns(
        os.fspath(path),
        sep=sep,
        names=names,
        values=list(samples.values()),
        numeric=("charge", "q_value"),
        reading=reading,
    )
    frame = reading.drop(frame, all_prefixed(frame["protein"], tuple(decoy_prefixes)), "decoy")
    if q_value is not None:
        frame = reading.keep_at_most(frame, "q_value", q_value)
    prefixes = tuple(contaminant_prefixes) if drop_contaminants else ()
    frame = reading.drop_prefixed(frame, frame["protein"], prefixes, "contaminant")
    frame["modified_sequence"] = frame["peptide"]
    frame["peptide"] = strip_modifications(frame["peptide"])
    var = frame[[c for c in ("protein", "peptide", "modified_sequence", "charge") if c in frame]]
    adata = wide_to_anndata(frame, samples, var, source=path)
    adata.var_names = unique_names(precursor_key(adata.var), adata.var["protein"], source=path)
    return finish_level(adata, level, reading, value="Sage intensity", source=path)


def _detect(header: Header) -> bool:
    return header.has("peptide", "proteins", "q_value") and header.has("spectral_angle")


register(Format("Sage lfq.tsv", _detect, read_sage))
