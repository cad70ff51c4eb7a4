"""Proteome Discoverer ``PeptideGroups.txt`` and ``Proteins.txt`` exports."""

from __future__ import annotations

import os
import re
from typing import Literal

import pandas as pd
from anndata import AnnData

from ._assemble import Reading, load_columns, unrecognised, wide_to_anndata
from ._long import unique_names
from ._registry import Format, Header, register
from ._table import find_column, read_header

# "Abundance: F1: Sample, ConditionA", "Abundances (Normalized): F1: Sample, ConditionA",
# PD 2.4 exports without punctuation: "Abundances Normalized F1 Sample"
_ABUNDANCE = re.compile(
    r"^Abundances?\s*(?:\((?P<kind>[^)]*)\)|(?P<bare>Normalized|Scaled))?\s*:?\s*"
    r"(?P<file>F\d+)\s*:?\s*(?P<rest>.*)$"
)


def read_proteome_discoverer(
    path: str | os.PathLike,
    *,
    abundance: Literal["raw", "normalized", "scaled"] = "raw",
    drop_contaminants: bool = True,
    master_only: bool = True,
) -> AnnData:
    """Read a Proteome Discoverer peptide-group or protein table into samples × features.

    Parameters
    ----------
    path
        ``*_PeptideGroups.txt`` or ``*_Proteins.txt`` exported from Proteome Discoverer.
    abundance
        Per-file abundances: ``"raw"`` (``Abundance: F1: ...``, default), ``"normalized"``
        (``Abundances (Normalized)``) or ``"scaled"``.
    drop_contaminants
        Drop rows with ``Contaminant`` = True.
    master_only
        Proteins.txt: keep master proteins only (``Master`` = IsMasterProtein).

    Returns
    -------
    Samples × peptide groups (``var["peptide"]`` = ``Sequence``, ``protein`` = ``Master Protein
    Accessions``) or × proteins (``Accession``); ``obs_names`` are PD's file ids (``F1``...),
    with the rest of the column label (sample type, condition) in ``obs["label"]``.

    Examples
    --------
    >>> adata = omixed.io.read_proteome_discoverer("study_PeptideGroups.txt")  # doctest: +SKIP
    """
    if abundance not in ("raw", "normalized", "scaled"):
        raise ValueError(f"abundance must be 'raw', 'normalized' or 'scaled', got {abundance!r}")
    columns, sep = read_header(path, sep="\t")
    header = Header(path, tuple(columns))
    kind = _detect_kind(header)
    if kind is None:
        raise unrecognised(path, "a Proteome Discoverer PeptideGroups or Proteins table", columns)
    samples, labels = {}, {}
    for column in columns:
        match = _ABUNDANCE.match(column)
        if match and (match["kind"] or match["bare"] or "raw").lower() == abundance:
            samples[match["file"]] = column
            labels[match["file"]] = match["rest"].strip(" ,")
    if not samples:
        raise KeyError(f"{path}: no {abundance} abundance columns (Abundance: F1: ...)")
    reading = Reading(
        "read_proteome_discoverer",
        os.fspath(path),
        f"Proteome Discoverer {kind}",
        {"abundance": abundance, "drop_contaminants": drop_contaminants},
    )
    if kind == "PeptideGroups":
        names = {
            "protein": "Master Protein Accessions",
            "peptide": "Sequence",
            "annotated_sequence": "Annotated Sequence",
            "modifications": "Modifications",
        }
    else:
        names = {"protein": "Accession", "description": "Description", "master": "Master"}
    names["contaminant"] = find_column(columns, "Contaminant")
    names = {k: c for k, c in names.items() if c is not None and c in columns}
    frame = load_columns(
        os.fspath(path), sep=sep, names=names, values=list(samples.values()), reading=reading
    )
    if "contaminant" in frame:
        frame["contaminant"] = frame["contaminant"].str.lower().eq("true")
        if drop_contaminants:
            frame = reading.drop(frame, frame["contaminant"].to_numpy(), "contaminant")
    if master_only and "master" in frame:
        reading.options["master_only"] = True
        frame = reading.drop(
            frame, frame["master"].ne("IsMasterProtein").to_numpy(), "not a master protein"
        )
    var = frame[[c for c in names if c in frame]]
    obs = pd.DataFrame({"label": pd.Series(labels)}).loc[list(samples)]
    adata = wide_to_anndata(frame, samples, var, source=path, obs=obs)
    if kind == "Proteins":
        adata.var_names = adata.var["protein"].to_numpy()
        return reading.finish(adata, level="protein", value=f"{abundance} abundance")
    key = adata.var["annotated_sequence"].astype(str)
    if "modifications" in adata.var:
        mods = adata.var["modifications"].fillna("").astype(str)
        key = key + mods.map(lambda m: f" [{m}]" if m else "")
    adata.var_names = unique_names(key, adata.var["protein"], source=path)
    return reading.finish(adata, level="peptide", value=f"{abundance} abundance")


def _detect_kind(header: Header) -> Literal["PeptideGroups", "Proteins"] | None:
    if not any(_ABUNDANCE.match(c) for c in header.columns):
        return None
    if header.has("Annotated Sequence", "Master Protein Accessions"):
        return "PeptideGroups"
    if header.has("Accession", "Master"):
        return "Proteins"
    return None


register(
    *(
        Format(
            f"Proteome Discoverer {kind}",
            lambda h, k=kind: _detect_kind(h) == k,
            read_proteome_discoverer,
        )
        for kind in ("PeptideGroups", "Proteins")
    )
)
