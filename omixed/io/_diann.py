"""DIA-NN main report (``report.tsv``/``report.parquet``, 1.7 to 2.x) and its pr/pg matrices."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pandas as pd
from anndata import AnnData

from ._assemble import (
    CONTAMINANT_PREFIXES,
    Reading,
    choose_level,
    run_name,
    sum_features,
    unrecognised,
    wide_to_anndata,
)
from ._long import long_to_anndata, unique_names
from ._registry import Format, Header, register
from ._table import format_names, numeric_frame, read_delimited, read_header, require_column

Level = Literal["peptide", "precursor", "protein"]
# q-value options -> report column (DIA-NN's docs: run-specific, global and library q-values)
_Q_COLUMNS = {
    "q_value": "Q.Value",
    "pg_q_value": "PG.Q.Value",
    "global_q_value": "Global.Q.Value",
    "global_pg_q_value": "Global.PG.Q.Value",
    "lib_q_value": "Lib.Q.Value",
    "lib_pg_q_value": "Lib.PG.Q.Value",
}
# var column -> DIA-NN column, copied when present
_ANNOTATIONS = {
    "protein_ids": "Protein.Ids",
    "protein_names": "Protein.Names",
    "genes": "Genes",
    "proteotypic": "Proteotypic",
}
_PRECURSOR = {"modified_sequence": "Modified.Sequence", "charge": "Precursor.Charge"}
# columns of the matrices that are not samples
_MATRIX_COLUMNS = {
    "Protein.Group",
    "Protein.Ids",
    "Protein.Names",
    "Genes",
    "First.Protein.Description",
    "Proteotypic",
    "Stripped.Sequence",
    "Modified.Sequence",
    "Precursor.Charge",
    "Precursor.Id",
    "N.Sequences",
    "N.Proteotypic.Sequences",
    "Precursor.Lib.Index",
    "Channel",
}


def read_diann(
    path: str | os.PathLike,
    *,
    level: Level | None = None,
    quantity: str | None = None,
    q_value: float | None = 0.01,
    pg_q_value: float | None = None,
    global_q_value: float | None = None,
    global_pg_q_value: float | None = None,
    lib_q_value: float | None = None,
    lib_pg_q_value: float | None = None,
    proteotypic: bool = False,
    drop_contaminants: bool = True,
    contaminant_prefixes: Sequence[str] = CONTAMINANT_PREFIXES,
) -> AnnData:
    """Read a DIA-NN main report or its ``pr_matrix``/``pg_matrix`` into samples × features.

    Reports of DIA-NN 1.7 (``File.Name``, no ``Run``), 1.8, 1.9 and 2.x (``report.parquet``,
    ``Decoy`` column) are read; the matrices are recognised by their columns.

    Parameters
    ----------
    path
        ``report.tsv``, ``report.parquet``, ``*.pr_matrix.tsv`` or ``*.pg_matrix.tsv``.
    level
        Report: ``"peptide"`` (default; one feature per ``Stripped.Sequence`` within a
        ``Protein.Group``, its precursors — charges, modified forms — summed per run),
        ``"precursor"`` (one per ``Precursor.Id``) or ``"protein"`` (one per ``Protein.Group``,
        DIA-NN's protein quantity). pr_matrix: ``"precursor"`` (default) or ``"peptide"``;
        pg_matrix: ``"protein"``.
    quantity
        Report column with the values: default ``"Precursor.Normalised"`` (precursor, peptide)
        or ``"PG.MaxLFQ"`` (protein; ``"PG.Normalised"`` in reports without MaxLFQ).
        ``"Precursor.Quantity"`` is the unnormalised quantity.
    q_value, pg_q_value, global_q_value, global_pg_q_value, lib_q_value, lib_pg_q_value
        Report only: keep rows with ``Q.Value``, ``PG.Q.Value``, ``Global.Q.Value``,
        ``Global.PG.Q.Value``, ``Lib.Q.Value`` or ``Lib.PG.Q.Value`` ≤ the threshold; ``None``
        skips that filter. The default (run-specific precursor q-value ≤ 0.01) reproduces
        DIA-NN's own pr_matrix; DIA-NN's documentation recommends the global and library
        q-values for some workflows (e.g. ``lib_pg_q_value=0.01`` after a library search).
        The matrices are already filtered by DIA-NN.
    proteotypic
        Keep only proteotypic precursors (``Proteotypic == 1``), like DIA-NN's
        ``Genes.MaxLFQ.Unique``.
    drop_contaminants
        Drop rows whose protein group contains a protein id starting with one of
        ``contaminant_prefixes`` (DIA-NN 2.x writes ``cRAP-``; FASTA files from other tools use
        ``CON__``, ``contam_``, ``Cont_``). Rows flagged ``Decoy`` are always dropped.
    contaminant_prefixes
        Prefixes that mark contaminant protein ids.

    Returns
    -------
    Samples × features; ``obs_names`` are DIA-NN's run names (``Run``, or the file name without
    folder and extension), with the file in ``obs["file"]``. ``var`` holds ``protein``
    (``Protein.Group``), ``peptide`` (``Stripped.Sequence``) below protein level, ``protein_ids``,
    ``protein_names``, ``genes``, ``proteotypic`` and, for precursors, ``precursor``,
    ``modified_sequence``, ``charge``. Rows with an empty ``Protein.Group`` are dropped with a
    warning (counted in ``uns["source"]["rows_dropped"]``). Values are on the raw scale, 0 = NaN.

    Examples
    --------
    >>> adata = omixed.io.read_diann("report.parquet", lib_pg_q_value=0.01)  # doctest: +SKIP
    >>> proteins = omixed.io.read_diann("report.pg_matrix.tsv")  # doctest: +SKIP
    """
    thresholds = {
        "q_value": q_value,
        "pg_q_value": pg_q_value,
        "global_q_value": global_q_value,
        "global_pg_q_value": global_pg_q_value,
        "lib_q_value": lib_q_value,
        "lib_pg_q_value": lib_pg_q_value,
    }
    header = _header(path)
    kind = _detect_kind(header)
    if kind is None:
        raise unrecognised(path, "a DIA-NN report, pr_matrix or pg_matrix", header.columns)
    allowed = {
        "report": ("peptide", "precursor", "protein"),
        "pr_matrix": ("precursor", "peptide"),
        "pg_matrix": ("protein",),
    }[kind]
    level = choose_level(path, f"a DIA-NN {kind}", level, allowed)
    options = {
        "level": level,
        "quantity": quantity,
        **thresholds,
        "proteotypic": proteotypic,
        "drop_contaminants": drop_contaminants,
    }
    if drop_contaminants:
        options["contaminant_prefixes"] = tuple(contaminant_prefixes)
    reading = Reading("read_diann", os.fspath(path), f"DIA-NN {kind}", options)
    prefixes = tuple(contaminant_prefixes) if drop_contaminants else ()
    if kind == "report":
        return _read_report(
            path, header, level, quantity, thresholds, proteotypic, prefixes, reading
        )
    asked = [k for k, v in thresholds.items() if v is not None and k != "q_value"]
    if asked or quantity is not None:
        raise ValueError(
            f"{path} is a DIA-NN {kind}, already filtered and quantified by DIA-NN: "
            f"{format_names(asked + ['quantity'] * (quantity is not None))} apply to the main "
            "report only"
        )
    reading.options.pop("q_value")
    return _read_matrix(path, header, kind, level, proteotypic, prefixes, reading)


def _header(path: str | os.PathLike) -> Header:
    path = Path(os.fspath(path))
    if path.suffix.lower() == ".parquet":
        from ._registry import sniff

        return sniff(path)
    return Header(path, tuple(read_header(path, sep="\t")[0]))


def _detect_kind(header: Header) -> Literal["report", "pr_matrix", "pg_matrix"] | None:
    if not header.has("Protein.Group"):
        return None
    if header.has("Run") or header.has("File.Name"):
        return "report" if header.has("Stripped.Sequence") else None
    if header.has("Precursor.Id"):
        return "pr_matrix"
    if header.has("First.Protein.Description") or header.has("Protein.Names"):
        return "pg_matrix"
    return None


def _read_report(
    path: str | os.PathLike,
    header: Header,
    level: Level,
    quantity: str | None,
    thresholds: dict[str, float | None],
    proteotypic: bool,
    prefixes: tuple[str, ...],
    reading: Reading,
) -> AnnData:
    columns = list(header.columns)
    if quantity is None:
        quantity = "Precursor.Normalised"
        if level == "protein":
            quantity = "PG.MaxLFQ" if "PG.MaxLFQ" in columns else "PG.Normalised"
    reading.options["quantity"] = quantity
    run = "Run" if "Run" in columns else require_column(columns, "File.Name", source=path)
    required = ["Protein.Group", "Stripped.Sequence", quantity]
    if level == "precursor":
        required.append("Precursor.Id")
    filters = {_Q_COLUMNS[k]: t for k, t in thresholds.items() if t is not None}
    for column in [*required, *filters, *(["Proteotypic"] if proteotypic else [])]:
        require_column(columns, column, source=path)
    optional = {**_ANNOTATIONS, **(_PRECURSOR if level == "precursor" else {})}
    optional = {k: c for k, c in optional.items() if c in columns}
    wanted = [run, "File.Name", *required, *filters, *optional.values(), "Decoy", "Protein.Ids"]
    wanted = [c for c in dict.fromkeys(wanted) if c in columns]
    text = ["Protein.Group", "Stripped.Sequence", "Precursor.Id", run, "File.Name", "Protein.Ids"]
    if Path(os.fspath(path)).suffix.lower() == ".parquet":
        frame = pd.read_parquet(path, columns=wanted)
        frame.index = pd.RangeIndex(1, len(frame) + 1, name="data row")
    else:
        text_types = {c: str for c in text if c in wanted}
        frame = read_delimited(path, sep="\t", usecols=wanted, dtype=text_types)
    reading.rows_read = len(frame)
    frame["sample"] = frame[run].astype(str) if run == "Run" else frame[run].map(run_name)
    # every run of the report stays a sample, also one whose rows are all filtered out
    samples = pd.unique(frame["sample"])
    files = (
        frame.groupby("sample", sort=False)["File.Name"].first() if "File.Name" in frame else None
    )

    frame = reading.drop_missing(frame, "Protein.Group", "protein group")
    if "Decoy" in frame:
        decoy = pd.to_numeric(frame["Decoy"], errors="coerce").fillna(0).ne(0).to_numpy()
        frame = reading.drop(frame, decoy, "decoy")
    for column, threshold in filters.items():
        frame = reading.keep_at_most(frame, column, threshold)
    if proteotypic:
        not_unique = pd.to_numeric(frame["Proteotypic"], errors="coerce").fillna(0).eq(0)
        frame = reading.drop(frame, not_unique.to_numpy(), "not proteotypic")
    ids = frame["Protein.Ids"] if "Protein.Ids" in frame else frame["Protein.Group"]
    frame = reading.drop_prefixed(frame, ids, prefixes, "contaminant")

    frame = frame.rename(
        columns={
            "Protein.Group": "protein",
            "Stripped.Sequence": "peptide",
            "Precursor.Id": "precursor",
            **{c: k for k, c in optional.items()},
        }
    )
    if level == "protein":
        adata = _protein_values(frame, quantity, samples, optional, path)
    else:
        feature = ["precursor"] if level == "precursor" else ["protein", "peptide"]
        annotations = {k: k for k in ("protein", "peptide", *optional) if k not in feature}
        adata = long_to_anndata(
            frame,
            sample="sample",
            feature=feature,
            value=quantity,
            annotations=annotations,
            aggregate="sum" if level == "peptide" else None,
            samples=samples,
            source=path,
        )
        if level == "precursor":
            adata.var_names = adata.var["precursor"].astype(str).to_numpy()
        else:
            adata.var_names = unique_names(adata.var["peptide"], adata.var["protein"], source=path)
    if files is not None:
        adata.obs["file"] = files.reindex(adata.obs_names).astype(str).to_numpy()
    return reading.finish(adata, level=level, value=quantity)


def _protein_values(
    frame: pd.DataFrame, quantity: str, samples: Sequence[str], optional: dict, path: object
) -> AnnData:
    """One value per run and protein group: DIA-NN repeats it on every precursor row."""
    values = numeric_frame(frame[[quantity]], source=path)[quantity]
    spread = values.groupby([frame["sample"], frame["protein"]]).agg(["min", "max"])
    varying = spread[~((spread["max"] - spread["min"]).abs() <= 1e-6 * spread["max"].abs())]
    varying = varying.dropna(how="all")
    if len(varying):
        shown = ", ".join(f"{s}/{p}" for s, p in varying.index[:5])
        raise ValueError(
            f"{path}: {quantity!r} differs between rows of one run and protein group ({shown}); "
            "it is not a protein-level column"
        )
    first = frame.drop_duplicates(["sample", "protein"])
    annotations = {k: k for k in optional if k not in ("modified_sequence", "charge")}
    adata = long_to_anndata(
        first,
        sample="sample",
        feature=["protein"],
        value=quantity,
        annotations=annotations,
        samples=samples,
        source=path,
    )
    adata.var_names = adata.var["protein"].astype(str).to_numpy()
    return adata


def _read_matrix(
    path: str | os.PathLike,
    header: Header,
    kind: str,
    level: Level,
    proteotypic: bool,
    prefixes: tuple[str, ...],
    reading: Reading,
) -> AnnData:
    columns = list(header.columns)
    value_columns = {run_name(c): c for c in columns if c not in _MATRIX_COLUMNS}
    if not value_columns:
        raise ValueError(f"{path}: a DIA-NN {kind} without sample columns")
    if len(value_columns) < len([c for c in columns if c not in _MATRIX_COLUMNS]):
        raise ValueError(f"{path}: two sample columns name the same run")
    names = {"protein": "Protein.Group", **_ANNOTATIONS}
    if kind == "pr_matrix":
        names.update(peptide="Stripped.Sequence", precursor="Precursor.Id", **_PRECURSOR)
    names = {k: c for k, c in names.items() if c in columns}
    text = [
        c
        for c in ("Protein.Group", "Protein.Ids", "Stripped.Sequence", "Precursor.Id")
        if c in columns
    ]
    frame = read_delimited(path, sep="\t", dtype=dict.fromkeys(text, str))
    reading.rows_read = len(frame)
    frame = reading.drop_missing(frame, "Protein.Group", "protein group")
    if proteotypic:
        require_column(columns, "Proteotypic", source=path)
        frame = reading.drop(frame, frame["Proteotypic"].eq(0).to_numpy(), "not proteotypic")
    ids = frame["Protein.Ids"] if "Protein.Ids" in frame else frame["Protein.Group"]
    frame = reading.drop_prefixed(frame, ids, prefixes, "contaminant")
    var = frame[list(names.values())].set_axis(list(names), axis=1)
    adata = wide_to_anndata(frame, value_columns, var, source=path)
    adata.obs["file"] = list(value_columns.values())
    if kind == "pg_matrix":
        adata.var_names = adata.var["protein"].to_numpy()
    elif level == "precursor":
        adata.var_names = adata.var["precursor"].astype(str).to_numpy()
    else:
        adata = sum_features(adata, ["protein", "peptide"], keep=list(_ANNOTATIONS))
        adata.var_names = unique_names(adata.var["peptide"], adata.var["protein"], source=path)
    return reading.finish(adata, level=level, value="DIA-NN matrix")


register(
    *(
        Format(f"DIA-NN {kind}", lambda h, k=kind: _detect_kind(h) == k, read_diann)
        for kind in ("report", "pr_matrix", "pg_matrix")
    )
)
