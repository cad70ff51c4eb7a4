"""``omixed.io.read``: recognise a tool's output from its header and call that tool's reader."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

from anndata import AnnData

# importing the tool modules registers their formats
from . import (  # noqa: F401
    _alphadia,
    _alphapept,
    _diann,
    _fragpipe,
    _maxquant,
    _msstats,
    _peaks,
    _proteome_discoverer,
    _sage,
    _spectronaut,
)
from ._registry import FORMATS, sniff
from ._table import format_names


def read(path: str | os.PathLike, **options: object) -> AnnData:
    """Read any supported proteomics output, recognised from its columns, into an AnnData.

    Parameters
    ----------
    path
        A tool's output file (see Returns for the list).
    **options
        Passed to the tool's reader (e.g. ``sample="raw_file"`` for MaxQuant evidence,
        ``lib_pg_q_value=0.01`` for DIA-NN); see :func:`read_maxquant`, :func:`read_diann`,
        :func:`read_fragpipe`, :func:`read_spectronaut`, :func:`read_alphadia`,
        :func:`read_sage`, :func:`read_peaks`, :func:`read_alphapept`,
        :func:`read_proteome_discoverer` and :func:`read_msstats`.

    Returns
    -------
    Samples × features AnnData as the tool's reader returns it (peptide or precursor level where
    the tool writes it, protein level for protein tables); ``uns["source"]["format"]`` names the
    recognised format. A file that matches no format raises a ``ValueError`` listing the
    recognised formats and the file's first columns.

    Examples
    --------
    >>> adata = omixed.io.read("report.parquet")  # doctest: +SKIP
    >>> adata.uns["source"]["format"]  # doctest: +SKIP
    'DIA-NN report'
    """
    fmt = _recognise(path)
    known = inspect.signature(fmt.reader).parameters
    unknown = sorted(set(options) - set(known) - {"path"})
    if unknown:
        raise TypeError(
            f"{path} is a {fmt.name}, read by {fmt.reader.__name__}, which has no option(s) "
            f"{format_names(unknown)} (options: {format_names(list(known)[1:])})"
        )
    return fmt.reader(path, **{**fmt.options, **options})


def reader_for(path: str | os.PathLike) -> tuple[str, Callable[..., AnnData]]:
    """The format :func:`read` recognises in ``path`` and the reader it calls.

    Parameters
    ----------
    path
        A tool's output file.

    Returns
    -------
    The format's name (e.g. ``"DIA-NN report"``) and its reader function (whose keyword
    arguments are the options :func:`read` accepts for this file).

    Examples
    --------
    >>> omixed.io.reader_for("report.tsv")  # doctest: +SKIP
    ('DIA-NN report', <function read_diann ...>)
    """
    fmt = _recognise(path)
    return fmt.name, fmt.reader


def _recognise(path: str | os.PathLike):
    header = sniff(path)
    for fmt in FORMATS:
        if fmt.detect(header):
            return fmt
    raise ValueError(
        f"{path}: not a recognised proteomics output. Recognised: "
        f"{'; '.join(f.name for f in FORMATS)}. This file's columns: "
        f"{format_names(header.columns, 12)}. Generic tables: omixed.io.read_table (wide) "
        "or omixed.io.read_long (one row per sample and feature)"
    )
