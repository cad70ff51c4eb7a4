"""AlphaDIA precursor and protein-group matrices (``precursors.matrix.tsv``, ``pg.matrix.tsv``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

from anndata import AnnData

from ._assemble import (
    CONTAMINANT_PREFIXES,
    Reading,
    finish_level,
    load_columns,
    unrecognised,
    wide_to_anndata,
)
from ._long import unique_names
from ._registry import Format, Header, register
from ._table import read_header

# annotation columns of the precursor matrix (AlphaDIA 1.x); every other column is a run
_PRECURSOR = (
    "mod_seq_charge_hash",
    "mod_seq_hash",
    "precursor_idx",
    "pg",
    "proteins",
    "genes",
    "decoy",
    "mods",
    "mod_sites",
    "sequence",
    "charge",
)


def read_alphadia(
    path: str | os.PathLike,
    *,
    level: Literal["precursor", "peptide"] = "precursor",
    drop_contaminants: bool = True,
    contaminant_prefixes: Sequence[str] = CONTAMINANT_PREFIXES,
) -> AnnData:
    """Read an AlphaDIA precursor matrix or protein-group matrix into samples × features.

    Parameters
    ----------
    path
        ``precursors.matrix.tsv`` (one row per precursor, ``mod_seq_charge_hash``) or
        ``pg.matrix.tsv`` (one row per protein group, ``pg``).
    level
        Precursor matrix: ``"precursor"`` (default) or ``"peptide"`` (precursors summed).
    drop_contaminants, contaminant_prefixes
        Drop features whose protein group has an id starting with one of the prefixes. Rows with
        ``decoy`` = 1 are always dropped.

    Returns
    -------
    Samples × precursors or protein groups, ``obs_names`` = AlphaDIA's run names. ``var`` has
    ``protein`` (``pg``, or ``proteins``/``genes`` when the precursor matrix has no ``pg``),
    and for precursors ``peptide`` (``sequence``), ``mods``, ``charge``. Values are AlphaDIA's
    (normalised) intensities, 0 = NaN.

    Examples
    --------
    >>> adata = omixed.io.read_alphadia("precursors.matrix.tsv")  # doctest: +SKIP
    """
    columns, sep = read_header(path, sep="\t")
    kind = _detect_kind(Header(path, tuple(columns)))
    if kind is None:
        raise unrecognised(path, "an AlphaDIA precursor or pg matrix", columns)
    reading = Reading(
        "read_alphadia",
        os.fspath(path),
        f"AlphaDIA {kind} matrix",
        {"drop_contaminants": drop_contaminants},
    )
    prefixes = tuple(contaminant_prefixes) if drop_contaminants else ()
    if kind == "protein":
        samples = {c: c for c in columns if c != "pg"}
        frame = load_columns(
            os.fspath(path), sep=sep, names={"protein": "pg"}, values=list(samples), reading=reading
        )
        frame = reading.drop_prefixed(frame, frame["protein"], prefixes, "contaminant")
        adata = wide_to_anndata(frame, samples, frame[["protein"]], source=path)
        adata.var_names = adata.var["protein"].to_numpy()
        return reading.finish(adata, level="protein", value="AlphaDIA pg intensity")
    samples = {c: c for c in columns if c not in _PRECURSOR}
    protein = next(c for c in ("pg", "proteins", "genes") if c in columns)
    if protein != "pg":
        reading.note(f"no 'pg' column: protein taken from {protein!r}")
    names = {
        "protein": protein,
        "id": "mod_seq_charge_hash",
        "peptide": "sequence",
        "mods": "mods",
        "charge": "charge",
        "decoy": "decoy",
    }
    names = {k: c for k, c in names.items() if c in columns}
    frame = load_columns(
        os.fspath(path),
        sep=sep,
        names=names,
        values=list(samples),
        numeric=("charge", "decoy"),
        reading=reading,
    )
    if "decoy" in frame:
        frame = reading.drop(frame, frame.pop("decoy").fillna(0).ne(0).to_numpy(), "decoy")
    frame = reading.drop_prefixed(frame, frame["protein"], prefixes, "contaminant")
    var = frame[[c for c in ("protein", "peptide", "mods", "charge", "id") if c in frame]]
    adata = wide_to_anndata(frame, samples, var, source=path)
    key = adata.var["peptide"].astype(str)
    if "mods" in adata.var:
        key = key + adata.var["mods"].fillna("").astype(str).map(lambda m: f"[{m}]" if m else "")
    key = key + "/" + adata.var["charge"].astype(int).astype(str)
    adata.var_names = unique_names(key, adata.var["protein"], source=path)
    return finish_level(adata, level, reading, value="AlphaDIA intensity", source=path)


def _detect_kind(header: Header) -> Literal["precursor", "protein"] | None:
    if header.has("mod_seq_charge_hash", "sequence", "charge"):
        return "precursor"
    if header.columns[:1] == ("pg",):
        return "protein"
    return None


register(
    Format("AlphaDIA precursor matrix", lambda h: _detect_kind(h) == "precursor", read_alphadia),
    Format("AlphaDIA pg matrix", lambda h: _detect_kind(h) == "protein", read_alphadia),
)
