"""Attach a sample sheet (one row per sample: batch, condition, ...) to ``adata.obs``."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Literal

import pandas as pd
from anndata import AnnData

from ._table import format_names, read_delimited, read_header, require_column

# what pandas reads as missing by default (pandas.read_csv's keep_default_na), minus ""
_NA_SPELLINGS = frozenset(
    (
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    )
)


def join_sample_sheet(
    adata: AnnData,
    sheet: str | os.PathLike | pd.DataFrame,
    *,
    sample_col: str = "sample",
    how: Literal["exact", "inner"] = "exact",
    sep: str | None = None,
    na_values: Sequence[str] = (),
    keep_default_na: bool = False,
    copy: bool = False,
) -> AnnData | None:
    """Add the columns of a sample sheet to ``adata.obs``, matching ``sample_col`` to ``obs_names``.

    Parameters
    ----------
    adata
        Samples × features.
    sheet
        Delimited text file (separator inferred from the suffix unless ``sep`` is given) or a
        DataFrame with one row per sample. Sample names are compared as text.
    sample_col
        Column of ``sheet`` with the sample names.
    how
        ``"exact"``: the samples of ``adata`` and of the sheet must be the same set, otherwise a
        ``ValueError`` lists both differences. ``"inner"``: keep only samples present in both
        (``adata`` is subset) and warn about the ones left out.
    sep
        Field separator when ``sheet`` is a file.
    na_values
        Further cell texts that mean "missing" (as in :func:`pandas.read_csv`); empty cells are
        always missing.
    keep_default_na
        ``False`` (default): in a text column, ``NA``, ``NaN``, ``null``... are levels like any
        other (a batch may be called ``NA``); numeric columns still read them as missing.
        ``True``: pandas' behaviour — they are missing in every column.
    copy
        Return a new AnnData instead of modifying ``adata``.

    Returns
    -------
    ``None``, or the new AnnData if ``copy=True``. The sheet's columns are added to ``obs``;
    text columns become categorical (categories sorted), numeric and boolean ones keep their dtype.
    A DataFrame column mixing values that read the same as text (``1`` and ``"1"``) is refused.

    Examples
    --------
    >>> omixed.io.join_sample_sheet(adata, "samples.tsv", sample_col="sample")  # doctest: +SKIP
    >>> adata.obs["batch"]  # doctest: +SKIP
    """
    if how not in ("exact", "inner"):
        raise ValueError(f"how must be 'exact' or 'inner', got {how!r}")
    source = "sample sheet" if isinstance(sheet, pd.DataFrame) else os.fspath(sheet)
    if isinstance(sheet, pd.DataFrame):
        require_column(list(sheet.columns), sample_col, source=source)
        sheet = sheet.copy()
    else:
        columns, sep = read_header(sheet, sep=sep)
        sample_col = require_column(columns, sample_col, source=source)
        text = read_delimited(
            sheet, sep=sep, dtype=str, keep_default_na=False, na_values=["", *na_values]
        )
        sheet = _parse_columns(text, sample_col, keep_default_na)
    _refuse_mixed_types(sheet, source)
    if sheet[sample_col].isna().any():
        raise ValueError(f"{source}: {sheet[sample_col].isna().sum()} row(s) without a sample name")
    sheet[sample_col] = sheet[sample_col].astype(str)
    duplicated = sheet[sample_col][sheet[sample_col].duplicated()].unique()
    if len(duplicated):
        raise ValueError(f"{source}: duplicated sample name(s) {format_names(duplicated)}")
    sheet = sheet.set_index(sample_col)
    clash = [c for c in sheet.columns if c in adata.obs.columns]
    if clash:
        raise ValueError(
            f"adata.obs already has column(s) {format_names(clash)} from {source}; drop them first"
        )

    not_in_sheet = [s for s in adata.obs_names if s not in sheet.index]
    not_in_data = [s for s in sheet.index if s not in adata.obs_names]
    if not_in_sheet or not_in_data:
        message = (
            f"samples of adata missing from {source}: {format_names(not_in_sheet) or 'none'}; "
            f"samples of {source} missing from adata: {format_names(not_in_data) or 'none'}"
        )
        if how == "exact":
            raise ValueError(message + "; pass how='inner' to keep the samples in both")
        if len(not_in_sheet) == adata.n_obs:
            raise ValueError(message + "; no sample in common")
        warnings.warn(f"keeping the samples in both: {message}", UserWarning, stacklevel=2)

    if copy:
        adata = adata.copy()
    if not_in_sheet:
        adata._inplace_subset_obs(adata.obs_names.isin(sheet.index))
    aligned = sheet.reindex(adata.obs_names)
    for column in aligned.columns:
        if aligned[column].dtype == object or pd.api.types.is_string_dtype(aligned[column]):
            aligned[column] = aligned[column].astype("category")
    aligned.index = adata.obs.index
    adata.obs = pd.concat([adata.obs, aligned], axis=1)
    return adata if copy else None


def _parse_columns(text: pd.DataFrame, sample_col: str, keep_default_na: bool) -> pd.DataFrame:
    """Numbers where a column holds only numbers (and NA spellings); text stays text."""
    parsed = {}
    for column in text.columns:
        values = text[column]
        if column == sample_col:
            parsed[column] = values
            continue
        na_spelled = values.isin(_NA_SPELLINGS)
        numbers = pd.to_numeric(values.mask(na_spelled), errors="coerce")
        if (numbers.notna() | values.isna() | na_spelled).all() and numbers.notna().any():
            parsed[column] = numbers
            if (numbers.dropna() % 1 == 0).all() and numbers.notna().all():
                parsed[column] = numbers.astype("int64")
        elif values.dropna().str.lower().isin(("true", "false")).all() and values.notna().all():
            parsed[column] = values.str.lower().eq("true")
        else:
            parsed[column] = values.mask(na_spelled) if keep_default_na else values
    return pd.DataFrame(parsed, index=text.index)


def _refuse_mixed_types(sheet: pd.DataFrame, source: object) -> None:
    """A column holding 1 and "1" would become one level; say so instead."""
    for column in sheet.columns:
        values = sheet[column].dropna()
        if values.dtype != object:
            continue
        kinds_per_text = pd.DataFrame({"text": values.astype(str), "kind": values.map(type)})
        n_kinds = kinds_per_text.groupby("text")["kind"].nunique()
        if (n_kinds > 1).any():
            level = n_kinds.index[n_kinds > 1][0]
            kinds = sorted(
                {t.__name__ for t in kinds_per_text.loc[kinds_per_text.text == level, "kind"]}
            )
            raise ValueError(
                f"{source}: column {column!r} holds {level!r} as {' and as '.join(kinds)}; "
                "these would become one level — convert the column to one type first"
            )
