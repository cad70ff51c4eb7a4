"""The MSstats input format (MSstatsConvert's output; written directly by FragPipe, quantms)."""

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
    per_run,
    precursor_key,
    strip_modifications,
    unrecognised,
)
from ._long import long_to_anndata, unique_names
from ._registry import Format, Header, register
from ._table import find_column, read_header, require_column


def read_msstats(
    path: str | os.PathLike,
    *,
    level: Literal["precursor", "peptide"] = "precursor",
    label: str | None = "L",
    drop_contaminants: bool = True,
    contaminant_prefixes: Sequence[str] = CONTAMINANT_PREFIXES,
) -> AnnData:
    """Read a table in MSstats' input format (``ProteinName``, ``PeptideSequence``,
    ``PrecursorCharge``, ``FragmentIon``, ``ProductCharge``, ``IsotopeLabelType``,
    ``Condition``, ``BioReplicate``, ``Run``, ``Intensity``).

    Parameters
    ----------
    path
        The table (``.csv`` as MSstatsConvert, FragPipe's ``MSstats.csv`` and quantms write it).
    level
        ``"precursor"`` (default; peptide sequence + charge, fragment rows of DIA data summed)
        or ``"peptide"`` (charges summed too).
    label
        Keep rows of this ``IsotopeLabelType`` (``"L"``: the endogenous, light peptides; heavy
        ``"H"`` rows are reference standards). ``None`` keeps all and makes the label part of
        the feature.
    drop_contaminants, contaminant_prefixes
        Drop proteins with an id starting with one of the prefixes.

    Returns
    -------
    Samples × features with ``obs_names`` = ``Run`` and ``obs["condition"]``,
    ``obs["bio_replicate"]`` (and ``obs["reference"]``, quantms' file name, when present);
    ``var`` has ``protein`` (``ProteinName``), ``peptide`` (modifications removed),
    ``modified_sequence``, ``charge``.

    Examples
    --------
    >>> adata = omixed.io.read_msstats("MSstats.csv")  # doctest: +SKIP
    """
    columns, sep = read_header(path)
    if not _detect(Header(path, tuple(columns))):
        raise unrecognised(path, "in MSstats format", columns)
    reading = Reading(
        "read_msstats",
        os.fspath(path),
        "MSstats format",
        {"level": level, "label": label, "drop_contaminants": drop_contaminants},
    )
    names = {
        "protein": "ProteinName",
        "modified_sequence": find_column(columns, "PeptideModifiedSequence", "PeptideSequence"),
        "charge": "PrecursorCharge",
        "run": "Run",
        "label": find_column(columns, "IsotopeLabelType"),
        "condition": find_column(columns, "Condition"),
        "bio_replicate": find_column(columns, "BioReplicate"),
        "reference": find_column(columns, "Reference"),
        "fragment": find_column(columns, "FragmentIon"),
        "product_charge": find_column(columns, "ProductCharge"),
    }
    names = {k: c for k, c in names.items() if c is not None}
    value = require_column(columns, "Intensity", source=path)
    frame = load_columns(
        os.fspath(path), sep=sep, names=names, values=[value], numeric=("charge",), reading=reading
    )
    if label is not None and "label" in frame:
        frame = reading.drop(frame, frame["label"].ne(label).to_numpy(), f"label not {label!r}")
    prefixes = tuple(contaminant_prefixes) if drop_contaminants else ()
    frame = reading.drop_prefixed(frame, frame["protein"], prefixes, "contaminant")
    frame["peptide"] = strip_modifications(frame["modified_sequence"])
    feature = ["modified_sequence", "charge"] + (["label"] if label is None else [])
    if "fragment" in frame and frame["fragment"].notna().any():
        reading.note("fragment rows summed per precursor and run")
    frame["value"] = frame.pop(value)
    adata = long_to_anndata(
        frame,
        sample="run",
        feature=feature,
        value="value",
        annotations={"protein": "protein", "peptide": "peptide"},
        aggregate="sum",
        samples=pd.unique(frame["run"].astype(str)),
        source=path,
    )
    per_run(adata, frame, "run", ["condition", "bio_replicate", "reference"])
    key = precursor_key(adata.var)
    if label is None:
        key = key + "/" + adata.var["label"].astype(str)
    adata.var_names = unique_names(key, adata.var["protein"], source=path)
    return finish_level(adata, level, reading, value=value, source=path)


def _detect(header: Header) -> bool:
    return header.has("ProteinName", "PrecursorCharge", "Run", "Intensity") and (
        header.has("PeptideSequence") or header.has("PeptideModifiedSequence")
    )


register(Format("MSstats format", _detect, read_msstats))
