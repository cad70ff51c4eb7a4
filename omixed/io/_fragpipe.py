"""FragPipe (IonQuant) ``combined_ion``/``combined_(modified_)peptide``/``combined_protein`` and
``psm.tsv``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

from anndata import AnnData

from ._assemble import (
    CONTAMINANT_PREFIXES,
    DECOY_PREFIXES,
    Reading,
    choose_level,
    run_name,
    sum_features,
    unrecognised,
    wide_to_anndata,
)
from ._long import long_to_anndata, unique_names
from ._registry import Format, Header, register
from ._table import find_column, format_names, read_delimited, read_header, require_column

Kind = Literal[
    "combined_ion", "combined_modified_peptide", "combined_peptide", "combined_protein", "psm"
]
# per-sample value columns "<sample> <quantity>", preferred first
_QUANTITIES = ("MaxLFQ Intensity", "Intensity", "Razor Intensity", "Total Intensity")
# words FragPipe puts between the sample name and "Intensity"/"Spectral Count"
_QUALIFIERS = ("MaxLFQ", "Razor", "Unique", "Total", "Summarized", "Combined")
_ANNOTATIONS = {
    "protein_id": "Protein ID",
    "entry_name": "Entry Name",
    "genes": "Gene",
    "mapped_proteins": "Mapped Proteins",
}
_FEATURE = {
    "combined_ion": ["Peptide Sequence", "Modified Sequence", "Charge"],
    "combined_modified_peptide": ["Peptide Sequence", "Modified Sequence"],
    "combined_peptide": ["Peptide Sequence"],
}


def read_fragpipe(
    path: str | os.PathLike,
    *,
    level: Literal["precursor", "modified_peptide", "peptide", "protein"] | None = None,
    intensity: str | None = None,
    drop_contaminants: bool = True,
    contaminant_prefixes: Sequence[str] = CONTAMINANT_PREFIXES,
    decoy_prefixes: Sequence[str] = DECOY_PREFIXES,
    psm_aggregate: Literal["max", "sum"] = "max",
) -> AnnData:
    """Read a FragPipe table into samples × precursors, peptides or proteins.

    ``combined_ion.tsv`` (precursors), ``combined_modified_peptide.tsv``,
    ``combined_peptide.tsv``, ``combined_protein.tsv`` and an experiment's ``psm.tsv`` are told
    apart by their columns.

    Parameters
    ----------
    path
        The FragPipe table.
    level
        ``combined_ion``: ``"precursor"`` (default; modified sequence + charge), or
        ``"modified_peptide"``/``"peptide"`` (charges, and modified forms, summed);
        ``psm.tsv``: ``"precursor"`` (default) or ``"peptide"``. Peptide and protein tables
        have their own level.
    intensity
        Per-sample quantity, the column suffix after the sample name: default
        ``"MaxLFQ Intensity"`` when present, else ``"Intensity"``, else ``"Razor Intensity"``
        (protein tables of older FragPipe versions).
    drop_contaminants
        Drop features whose ``Protein`` starts with one of ``contaminant_prefixes`` (FragPipe's
        ``contam_``). Decoys (every protein starting with one of ``decoy_prefixes``, FragPipe's
        ``rev_``; only present when decoys were printed) are always dropped.
    contaminant_prefixes, decoy_prefixes
        Protein id prefixes of contaminants and decoys.
    psm_aggregate
        ``psm.tsv`` only: how the PSMs of one precursor in one run become one value. IonQuant
        writes the precursor's MS1 intensity on each of its PSMs, so ``"max"`` (default) is that
        intensity; ``"sum"`` adds them.

    Returns
    -------
    Samples × features; ``obs_names`` are FragPipe's experiment names (run names for psm.tsv).
    ``var`` has ``protein`` (FragPipe's ``Protein``), ``peptide`` (``Peptide Sequence``) below
    protein level, ``modified_sequence``/``charge`` for precursors, ``protein_id``,
    ``entry_name``, ``genes``. Values on the raw scale, 0 = NaN.

    Examples
    --------
    >>> adata = omixed.io.read_fragpipe("combined_ion.tsv")  # doctest: +SKIP
    >>> proteins = omixed.io.read_fragpipe("combined_protein.tsv")  # doctest: +SKIP
    """
    columns, sep = read_header(path, sep="\t")
    kind = _detect_kind(Header(path, tuple(columns)))
    if kind is None:
        raise unrecognised(path, "a FragPipe combined_ion/peptide/protein or psm.tsv", columns)
    allowed = {
        "combined_ion": ("precursor", "modified_peptide", "peptide"),
        "combined_modified_peptide": ("modified_peptide", "peptide"),
        "combined_peptide": ("peptide",),
        "combined_protein": ("protein",),
        "psm": ("precursor", "peptide"),
    }[kind]
    level = choose_level(path, f"a FragPipe {kind}", level, allowed)
    if psm_aggregate not in ("max", "sum"):
        raise ValueError(f"psm_aggregate must be 'max' or 'sum', got {psm_aggregate!r}")
    options = {"level": level, "intensity": intensity, "drop_contaminants": drop_contaminants}
    reading = Reading("read_fragpipe", os.fspath(path), f"FragPipe {kind}", options)
    contaminants = tuple(contaminant_prefixes) if drop_contaminants else ()
    if kind == "psm":
        reading.options["psm_aggregate"] = psm_aggregate
        return _read_psm(
            path,
            sep,
            columns,
            level,
            intensity,
            contaminants,
            tuple(decoy_prefixes),
            psm_aggregate,
            reading,
        )

    quantity = intensity or next(
        (q for q in _QUANTITIES if _samples(columns, q)),
        _QUANTITIES[0],
    )
    reading.options["intensity"] = quantity
    samples = _samples(columns, quantity)
    if not samples:
        present = [q for q in _QUANTITIES if _samples(columns, q)]
        raise KeyError(
            f"{path}: no '<sample> {quantity}' columns; quantities present: "
            f"{format_names(present) or 'none'}; pass intensity=<one of them>"
        )
    protein = require_column(columns, "Protein", source=path)
    names = {k: c for k, c in _ANNOTATIONS.items() if c in columns}
    names["protein"] = protein
    if kind != "combined_protein":
        names["peptide"] = require_column(columns, "Peptide Sequence", source=path)
        for column in _FEATURE[kind][1:]:
            names[column] = require_column(columns, column, source=path)
    text = [c for k, c in names.items() if k != "Charge"]
    frame = read_delimited(
        path,
        sep=sep,
        usecols=[*names.values(), *samples.values()],
        dtype=dict.fromkeys(text, str),
    )
    reading.rows_read = len(frame)
    frame = frame.rename(columns={c: k for k, c in names.items()})
    frame = frame.rename(columns={"Modified Sequence": "modified_sequence", "Charge": "charge"})
    frame = reading.drop_missing(frame, "protein", "protein")
    frame = reading.drop_flagged(frame, decoy_prefixes, contaminants)
    var = frame[[c for c in frame.columns if c not in samples.values()]]
    adata = wide_to_anndata(frame, samples, var, source=path)
    return _finish(adata, kind, level, quantity, path, reading)


def _samples(columns: Sequence[str], quantity: str) -> dict[str, str]:
    """``{sample: column}`` for ``"<sample> <quantity>"`` columns (not other quantities)."""
    suffix = " " + quantity
    found = {c[: -len(suffix)]: c for c in columns if c.endswith(suffix) and len(c) > len(suffix)}
    return {s: c for s, c in found.items() if s.rsplit(" ", 1)[-1] not in _QUALIFIERS}


def _detect_kind(header: Header) -> Kind | None:
    if header.has("Spectrum", "Spectrum File", "Peptide", "Protein"):
        return "psm"
    if not header.has("Protein", "Protein ID"):
        return None
    if not (header.any_ends(" Spectral Count") or header.any_ends(" Intensity")):
        return None
    if header.has("Peptide Sequence", "Modified Sequence", "Charge"):
        return "combined_ion"
    if header.has("Peptide Sequence", "Modified Sequence"):
        return "combined_modified_peptide"
    if header.has("Peptide Sequence"):
        return "combined_peptide"
    if header.has("Protein Probability") or header.has("Indistinguishable Proteins"):
        return "combined_protein"
    return None


def _finish(
    adata: AnnData, kind: str, level: str, quantity: str, path: object, reading: Reading
) -> AnnData:
    keep = list(_ANNOTATIONS)
    if level == "protein":
        adata.var_names = adata.var["protein"].astype(str).to_numpy()
        return reading.finish(adata, level=level, value=quantity)
    if level == "precursor":
        key = adata.var["modified_sequence"].fillna(adata.var["peptide"]).astype(str)
        adata.var_names = unique_names(
            key + "/" + adata.var["charge"].astype(int).astype(str),
            adata.var["protein"],
            source=path,
        )
        return reading.finish(adata, level=level, value=quantity)
    if level == "modified_peptide":
        if kind != "combined_modified_peptide":
            adata = sum_features(adata, ["protein", "peptide", "modified_sequence"], keep=keep)
        adata.var_names = unique_names(
            adata.var["modified_sequence"].fillna(adata.var["peptide"]),
            adata.var["protein"],
            source=path,
        )
        return reading.finish(adata, level=level, value=quantity)
    if kind != "combined_peptide":
        adata = sum_features(adata, ["protein", "peptide"], keep=keep)
    adata.var_names = unique_names(adata.var["peptide"], adata.var["protein"], source=path)
    return reading.finish(adata, level=level, value=quantity)


def _read_psm(
    path: str | os.PathLike,
    sep: str,
    columns: list[str],
    level: str,
    intensity: str | None,
    contaminants: tuple[str, ...],
    decoys: tuple[str, ...],
    aggregate: Literal["max", "sum"],
    reading: Reading,
) -> AnnData:
    """psm.tsv: one row per PSM of one experiment; precursors are (modified) peptide + charge."""
    value = require_column(columns, intensity or "Intensity", source=path)
    modified = find_column(columns, "Modified Peptide")
    names = {"spectrum": "Spectrum", "peptide": "Peptide", "protein": "Protein", "charge": "Charge"}
    names.update({k: c for k, c in _ANNOTATIONS.items() if c in columns})
    if modified:
        names["modified_sequence"] = modified
    text = [c for k, c in names.items() if k != "charge"]
    frame = read_delimited(
        path, sep=sep, usecols=[*names.values(), value], dtype=dict.fromkeys(text, str)
    )
    reading.rows_read = len(frame)
    frame = frame.rename(columns={c: k for k, c in names.items()})
    frame = reading.drop_missing(frame, "protein", "protein")
    frame = reading.drop_flagged(frame, decoys, contaminants)
    # Spectrum is "<run>.<scan>.<scan>.<charge>"
    frame["run"] = frame["spectrum"].str.rsplit(".", n=3).str[0].map(run_name)
    if "modified_sequence" not in frame:
        frame["modified_sequence"] = frame["peptide"]
    frame["modified_sequence"] = frame["modified_sequence"].fillna(frame["peptide"])
    frame["value"] = frame.pop(value)
    annotations = {k: k for k in ("peptide", "protein", *_ANNOTATIONS) if k in frame}
    adata = long_to_anndata(
        frame,
        sample="run",
        feature=["modified_sequence", "charge"],
        value="value",
        annotations=annotations,
        aggregate=aggregate,
        source=path,
    )
    reading.note(f"PSMs of one precursor and run combined by {aggregate}")
    return _finish(adata, "psm", level, value, path, reading)


_KIND_NAMES = (
    "combined_ion",
    "combined_modified_peptide",
    "combined_peptide",
    "combined_protein",
    "psm",
)
register(
    *(
        Format(f"FragPipe {kind}", lambda h, k=kind: _detect_kind(h) == k, read_fragpipe)
        for kind in _KIND_NAMES
    )
)
