"""Attach a sample sheet (one row per sample: batch, condition, ...) to ``adata.obs``."""

from __future__ import annotations

import os
import warnings
from typing import Literal

import pandas as pd
from anndata import AnnData

from ._table import format_names, read_delimited, read_header, require_column


def join_sample_sheet(
    adata: AnnData,
    sheet: str | os.PathLike | pd.DataFrame,
    *,
    sample_col: str = "sample",
    how: Literal["exact", "inner"] = "exact",
    sep: str | None = None,
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
    copy
        Return a new AnnData instead of modifying ``adata``.

    Returns
    -------
    ``None``, or the new AnnData if ``copy=True``. The sheet's columns are added to ``obs``;
    text columns become categorical (categories sorted), numeric and boolean ones keep their dtype.

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
        sheet = read_delimited(sheet, sep=sep, dtype={sample_col: str})
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
