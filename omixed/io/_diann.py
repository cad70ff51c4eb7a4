"""DIA-NN main report (``report.tsv``, or ``report.parquet`` of DIA-NN 2.x) to AnnData."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import pandas as pd
from anndata import AnnData

from ._long import long_to_anndata, unique_names
from ._table import numeric_frame, read_delimited, read_header, require_column

# optional var columns: canonical name -> report column
_ANNOTATIONS = {
    "protein_ids": "Protein.Ids",
    "protein_names": "Protein.Names",
    "genes": "Genes",
}
_PRECURSOR_ANNOTATIONS = {
    "modified_sequence": "Modified.Sequence",
    "charge": "Precursor.Charge",
}


def read_diann(
    path: str | os.PathLike,
    *,
    quantity: str = "Precursor.Normalised",
    level: Literal["peptide", "precursor"] = "peptide",
    q_value: float | None = 0.01,
    pg_q_value: float | None = None,
) -> AnnData:
    """Read a DIA-NN main report into a samples × peptides (or precursors) AnnData.

    Works with the long ``report.tsv`` of DIA-NN 1.8 and the 1.9/2.x layout (no ``File.Name``,
    extra ``Run.Index``/``Channel``/``Decoy`` columns); ``.parquet`` reports need ``pyarrow``.

    Parameters
    ----------
    path
        The main report.
    quantity
        Column holding the precursor quantity, e.g. ``"Precursor.Normalised"`` (DIA-NN's
        normalised MS2 quantity) or ``"Precursor.Quantity"`` (raw).
    level
        ``"precursor"``: one feature per ``Precursor.Id`` (modified sequence + charge).
        ``"peptide"``: one feature per ``Stripped.Sequence`` within a ``Protein.Group``; the
        precursors (charge states, modified forms) of a peptide are summed per run.
    q_value
        Keep rows with ``Q.Value`` ≤ this (run-specific precursor FDR); ``None`` keeps all.
    pg_q_value
        If given, also keep only rows with ``PG.Q.Value`` ≤ this (protein-group FDR).

    Returns
    -------
    AnnData with ``obs_names`` = ``Run`` (every run of the report, also one whose rows were all
    filtered out) and ``var`` columns ``protein`` (``Protein.Group``), ``peptide``
    (``Stripped.Sequence``), ``protein_ids``, ``protein_names``, ``genes`` and, for precursors,
    ``precursor``, ``modified_sequence``, ``charge``. ``var_names`` are the peptide sequences
    (``sequence|protein group`` for a sequence in several groups) or the precursor ids. Rows
    flagged ``Decoy`` are dropped; 0 and missing quantities are NaN; values stay on the raw scale.

    Examples
    --------
    >>> adata = omixed.io.read_diann("report.tsv", q_value=0.01, pg_q_value=0.01)  # doctest: +SKIP
    """
    if level not in ("peptide", "precursor"):
        raise ValueError(f"level must be 'peptide' or 'precursor', got {level!r}")
    frame, columns = _read_report(path)
    required = {"sample": "Run", "protein": "Protein.Group", "peptide": "Stripped.Sequence"}
    if level == "precursor":
        required["precursor"] = "Precursor.Id"
    required["value"] = quantity
    thresholds = {"Q.Value": q_value, "PG.Q.Value": pg_q_value}
    for column in [*required.values(), *(c for c, t in thresholds.items() if t is not None)]:
        require_column(columns, column, source=path)
    optional = {**_ANNOTATIONS, **(_PRECURSOR_ANNOTATIONS if level == "precursor" else {})}
    optional = {k: c for k, c in optional.items() if c in columns}
    decoy = "Decoy" if "Decoy" in columns else None

    if frame is None:
        wanted = [*required.values(), *optional.values(), *thresholds, *([decoy] if decoy else [])]
        frame = read_delimited(
            path,
            sep="\t",
            usecols=[c for c in dict.fromkeys(wanted) if c in columns],
            dtype={c: str for key, c in required.items() if key != "value"},
        )
    runs = pd.unique(frame["Run"].astype(str))
    keep = pd.Series(True, index=frame.index)
    for column, threshold in thresholds.items():
        if threshold is not None:
            keep &= numeric_frame(frame[[column]], source=path)[column] <= threshold
    if decoy:
        keep &= pd.to_numeric(frame[decoy], errors="coerce").fillna(0) == 0
    frame = frame.loc[keep, [*required.values(), *optional.values()]]
    frame.columns = [*required, *optional]

    adata = long_to_anndata(
        frame,
        sample="sample",
        feature=["precursor"] if level == "precursor" else ["protein", "peptide"],
        value="value",
        annotations={
            **({"protein": "protein", "peptide": "peptide"} if level == "precursor" else {}),
            **{k: k for k in optional},
        },
        aggregate="sum" if level == "peptide" else None,
        samples=runs,
        source=path,
    )
    if level == "precursor":
        adata.var_names = adata.var["precursor"].astype(str).to_numpy()
    else:
        adata.var_names = unique_names(adata.var["peptide"], adata.var["protein"], source=path)
    adata.uns["source"] = {
        "reader": "read_diann",
        "path": os.fspath(path),
        "quantity": quantity,
        "level": level,
        **{k: t for k, t in (("q_value", q_value), ("pg_q_value", pg_q_value)) if t is not None},
        "rows_kept": int(keep.sum()),
        "rows_total": len(keep),
    }
    return adata


def _read_report(path: str | os.PathLike) -> tuple[pd.DataFrame | None, list[str]]:
    """Parquet reports are read whole (columnar, cheap); TSV reports only return their header."""
    if Path(os.fspath(path)).suffix.lower() != ".parquet":
        return None, read_header(path, sep="\t")[0]
    try:
        frame = pd.read_parquet(path)
    except ImportError as err:
        raise ImportError(f"reading {path} needs pyarrow (pip install pyarrow): {err}") from err
    return frame, [str(c) for c in frame.columns]
