"""Long tables (one row per sample × feature measurement) to AnnData, and :func:`read_long`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ._table import format_names, numeric_frame, read_delimited, read_header, require_column

Aggregate = Literal["sum", "max", "mean", "median"]
_AGGREGATES = ("sum", "max", "mean", "median")


def long_to_anndata(
    frame: pd.DataFrame,
    *,
    sample: str,
    feature: Sequence[str],
    value: str,
    annotations: Mapping[str, str] | None = None,
    aggregate: Aggregate | None = None,
    samples: Sequence[str] | None = None,
    zero_as_missing: bool = True,
    source: object = "table",
) -> AnnData:
    """Pivot a long table into samples × features.

    Parameters
    ----------
    frame
        One row per measurement.
    sample, value
        Columns holding the sample name and the measured value.
    feature
        Columns that together identify a feature (e.g. protein group and peptide sequence); they
        are stored in ``var`` under the same names. Rows missing any of them raise.
    annotations
        ``{var column: frame column}`` copied to ``var``; a feature takes the first non-missing
        value of its rows.
    aggregate
        How several rows of one sample and feature are combined. ``None`` raises on such rows.
        Missing values are skipped; a cell with no value stays NaN.
    samples
        Sample order (and samples kept even if all their rows were filtered out); default: order
        of first appearance.
    zero_as_missing
        Turn 0 into NaN before aggregating.
    source
        Named in error messages (usually the path).

    Returns
    -------
    AnnData with ``obs_names`` = samples, ``var`` = feature columns + annotations, features in
    order of first appearance, ``var_names`` not yet set (a default range index).
    """
    feature = list(feature)
    keys = [sample, *feature]
    for column in (*keys, value, *(annotations or {}).values()):
        require_column(list(frame.columns), column, source=source)
    if aggregate is not None and aggregate not in _AGGREGATES:
        raise ValueError(f"aggregate must be one of {_AGGREGATES} or None, got {aggregate!r}")
    missing_key = frame[keys].isna().any(axis=1)
    if missing_key.any():
        rows = frame.index[missing_key]
        raise ValueError(
            f"{source}: {missing_key.sum()} row(s) lack a value in {format_names(keys)} "
            f"({frame.index.name or 'row'}s {format_names(rows, 5)})"
        )
    if aggregate is None:
        duplicated = frame.duplicated(keys, keep="first")
        if duplicated.any():
            examples = frame.loc[duplicated, keys].drop_duplicates().head(5)
            shown = "; ".join(", ".join(map(str, row)) for row in examples.itertuples(index=False))
            raise ValueError(
                f"{source}: {duplicated.sum()} duplicated ({', '.join(keys)}) row(s), "
                f"e.g. {shown}; pass aggregate= to combine them"
            )

    values = numeric_frame(frame[[value]], source=source)[value].to_numpy()
    if zero_as_missing:
        values = np.where(values == 0, np.nan, values)
    sample_names = frame[sample].astype(str)
    samples = pd.unique(sample_names) if samples is None else pd.Index(samples).astype(str)
    sample_codes = pd.Categorical(sample_names, categories=samples).codes.astype(np.int64)
    if (sample_codes < 0).any():
        unknown = sample_names[sample_codes < 0].unique()
        raise ValueError(f"{source}: sample(s) {format_names(unknown)} not in the sample list")
    feature_codes = frame.groupby(feature, sort=False).ngroup().to_numpy()
    n_features = int(feature_codes.max()) + 1 if len(frame) else 0

    # min_count=1: a cell whose rows are all missing stays NaN instead of summing to 0
    cells = pd.Series(values).groupby(sample_codes * n_features + feature_codes)
    combined = cells.sum(min_count=1) if aggregate in (None, "sum") else cells.agg(aggregate)
    X = np.full((len(samples), n_features), np.nan)
    X.flat[combined.index.to_numpy()] = combined.to_numpy()

    first = frame.groupby(feature_codes, sort=True)
    var = first[feature].first()
    for name, column in (annotations or {}).items():
        var[name] = first[column].first()
    var.index = pd.RangeIndex(n_features).astype(str)
    return AnnData(X=X, obs=pd.DataFrame(index=pd.Index(samples, dtype=str)), var=var)


def unique_names(names: pd.Series, qualifier: pd.Series, *, source: object) -> pd.Index:
    """``names`` as an index; names shared by several features become ``name|qualifier``."""
    names = names.astype(str)
    shared = names.duplicated(keep=False).to_numpy()
    result = names.where(~shared, names + "|" + qualifier.astype(str))
    if result.duplicated().any():
        raise ValueError(
            f"{source}: duplicated feature name(s) {format_names(result[result.duplicated()])}"
        )
    return pd.Index(result.to_numpy(), dtype=str)


def read_long(
    path_or_df: str | os.PathLike | pd.DataFrame,
    *,
    sample: str = "sample",
    protein: str | None = "protein",
    peptide: str = "peptide",
    value: str = "value",
    sep: str | None = None,
    aggregate: Aggregate | None = None,
    zero_as_missing: bool = True,
) -> AnnData:
    """Read a generic long table (one row per sample × peptide) into a samples × peptides AnnData.

    Parameters
    ----------
    path_or_df
        Delimited text file (separator inferred from the suffix unless ``sep`` is given) or a
        DataFrame.
    sample, protein, peptide, value
        Column names. ``peptide`` identifies a feature; ``protein`` (optional, ``None`` if the table
        has none) must be the same on every row of a peptide.
    sep
        Field separator for files.
    aggregate
        ``"sum"``, ``"max"``, ``"mean"`` or ``"median"`` to combine several rows of one sample and
        peptide (e.g. charge states). By default such duplicates raise a ``ValueError``.
    zero_as_missing
        Treat 0 as missing (``False`` for data where 0 is a real value, e.g. log scale).

    Returns
    -------
    AnnData with ``obs_names`` = samples, ``var_names`` = peptides, ``var`` columns ``peptide``
    and ``protein``; values on the scale of the input, NaN = missing.

    Examples
    --------
    >>> df = pd.DataFrame(
    ...     {"sample": ["s1", "s2"], "protein": "P1", "peptide": "AAK", "value": [1.0, 2.0]}
    ... )
    >>> omixed.io.read_long(df).X  # doctest: +SKIP
    array([[1.],
           [2.]])
    """
    canonical = {sample: "sample", peptide: "peptide", value: "value"}
    if protein is not None:
        canonical[protein] = "protein"
    if isinstance(path_or_df, pd.DataFrame):
        frame, source = path_or_df, "table"
    else:
        source = os.fspath(path_or_df)
        columns, sep = read_header(path_or_df, sep=sep)
        for column in canonical:
            require_column(columns, column, source=source)
        text = {c: str for c in canonical if c != value}
        frame = read_delimited(path_or_df, sep=sep, usecols=list(canonical), dtype=text)
    for column in canonical:
        require_column(list(frame.columns), column, source=source)
    frame = frame[list(canonical)].rename(columns=canonical)
    if protein is not None:
        proteins_per_peptide = frame.groupby("peptide")["protein"].nunique()
        ambiguous = proteins_per_peptide.index[proteins_per_peptide > 1]
        if len(ambiguous):
            raise ValueError(
                f"{source}: peptide(s) {format_names(ambiguous, 5)} appear with more than one "
                f"{protein!r}; use one protein per peptide (e.g. the razor/leading protein)"
            )
    adata = long_to_anndata(
        frame,
        sample="sample",
        feature=["peptide"],
        value="value",
        annotations={"protein": "protein"} if protein is not None else None,
        aggregate=aggregate,
        zero_as_missing=zero_as_missing,
        source=source,
    )
    adata.var_names = adata.var["peptide"].astype(str).to_numpy()
    return adata
