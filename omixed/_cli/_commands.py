"""The work of each ``omixed`` subcommand; argument parsing lives in :mod:`omixed.cli`.

Every command reads its inputs, computes everything, and only then writes its outputs, each
through :func:`omixed._utils.atomic_path`, so a failed or killed command leaves no partial file.
Each command imports the namespaces it uses itself: a workflow step pays only for its own imports
(``omixed.pl`` loads matplotlib, ``omixed.tl`` the engine).
"""

from __future__ import annotations

import argparse
import inspect
import logging
import re
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._choices import NORMALIZERS
from .._utils import get_matrix
from ..io._table import format_names
from ._files import RUN_KEY, read_h5ad, record, write_h5ad, write_tsv

if TYPE_CHECKING:
    from anndata import AnnData

log = logging.getLogger("omixed.cli")


def import_(args: argparse.Namespace) -> None:
    from .. import datasets, io
    from ..io._table import read_header

    if args.type in ("example", "h5ad") and args.options:
        raise ValueError(f"--options are reader options; 'omixed import {args.type}' takes none")
    if args.type == "example":
        if args.path is not None:
            raise ValueError("'omixed import example' takes no input path")
        adata = datasets.example()
    elif args.path is None:
        raise ValueError(f"'omixed import {args.type}' needs an input path")
    elif args.type == "h5ad":
        adata = read_h5ad(args.path)
    else:
        reader = getattr(io, f"read_{args.type}")
        options = {
            name: (f"--options '{{\"{name}\": ...}}'", f"input.options.{name}")
            for name in list(inspect.signature(reader).parameters)[1:]
        }
        try:
            adata = reader(args.path, **args.options)
        except ValueError as err:
            raise _where_to_set(err, options) from err
    if args.samples is not None:
        # The sheet is the authority on sample annotations: its columns replace those the
        # data already carry (an h5ad's obs, the example's design), instead of clashing.
        columns, _ = read_header(args.samples)
        adata.obs = adata.obs.drop(columns=[c for c in columns if c in adata.obs.columns])
        try:
            io.join_sample_sheet(adata, args.samples, sample_col=args.sample_column, how=args.how)
        except ValueError as err:
            raise _where_to_set(err, {"how": ("--how", "samples.how")}) from err
    record(
        adata,
        "import",
        {
            "type": args.type,
            "path": args.path,
            "options": args.options,
            "samples": args.samples,
            "sample_column": args.sample_column,
            "how": args.how,
        },
    )
    write_h5ad(adata, args.output)


def _where_to_set(err: ValueError, options: dict[str, tuple[str, str]]) -> ValueError:
    """``err``, plus where the options it suggests (``name=...``) are set, if it suggests any.

    ``options`` maps an option to how it is given on the command line and its key in the
    workflow's config, so that a hint written for the Python API can be followed everywhere.
    """
    named = [name for name in options if re.search(rf"\b{name}=", str(err))]
    if not named:
        return err
    where = "; ".join(
        f"{name}: {options[name][0]} on the command line, {options[name][1]} in the workflow config"
        for name in named
    )
    return ValueError(f"{err} ({where})")


def normalize(args: argparse.Namespace) -> None:
    from .. import pp

    unknown = [s for s in args.steps if s not in NORMALIZERS]
    if unknown:
        raise ValueError(f"unknown normalization step(s) {unknown}; choose from {[*NORMALIZERS]}")
    adata = read_h5ad(args.input)
    for step in args.steps:
        log.info("normalize: %s", step)
        getattr(pp, step)(adata)
    record(adata, "normalize", {"steps": list(args.steps)})
    write_h5ad(adata, args.output)


def split(args: argparse.Namespace) -> None:
    adata = read_h5ad(args.input)
    n_chunks = len(args.output)
    if n_chunks > adata.n_vars:
        raise ValueError(f"cannot split {adata.n_vars} features into {n_chunks} chunks")
    # Contiguous ranges, so that concatenating the chunk fits restores the feature order.
    ranges = np.array_split(np.arange(adata.n_vars), n_chunks)
    chunks = []
    for i, idx in enumerate(ranges):
        chunk = adata[:, idx].copy()
        span = [int(idx[0]), int(idx[-1]) + 1]
        record(chunk, "split", {"chunk": i + 1, "n_chunks": n_chunks, "features": span})
        chunks.append(chunk)
    for chunk, path in zip(chunks, args.output, strict=True):
        write_h5ad(chunk, path)


def fit(args: argparse.Namespace) -> None:
    from .. import tl

    adata = read_h5ad(args.input)
    tl.fit(
        adata,
        args.formula,
        layer=args.layer,
        reml=not args.ml,
        key_added=args.key,
        n_jobs=args.threads,
        progress=False,
    )
    params = {"formula": args.formula, "reml": not args.ml, "layer": args.layer, "key": args.key}
    record(adata, "fit", params)
    write_h5ad(adata, args.output)


def merge(args: argparse.Namespace) -> None:
    """The chunk fits, stacked in the data's feature order, stored as one fit of the data."""
    from .. import _fitstore, lmm
    from ..tl._fit import warn_failures

    adata = read_h5ad(args.data)
    fits, records = [], []
    for path in args.chunks:
        chunk = read_h5ad(path)
        try:
            fits.append(_fitstore.read(chunk, args.key))
        except KeyError as err:
            raise ValueError(f"{path} holds no fit under {args.key!r}: {err.args[0]}") from None
        records.append(_fitstore.info(chunk, args.key))
    same = ("layer", "weights_layer", "robust", "reml")
    for path, res, rec in zip(args.chunks, fits, records, strict=True):
        if not res.spec.same_model(fits[0].spec) or any(rec[k] != records[0][k] for k in same):
            raise ValueError(
                f"{path} was fit with another model ({res.spec.formula!r} on its design) than "
                f"{args.chunks[0]} ({fits[0].spec.formula!r}); refit the chunks with one model"
            )
    names = pd.Index(np.concatenate([res.feature_names for res in fits]))
    if names.has_duplicates or not names.sort_values().equals(adata.var_names.sort_values()):
        missing = adata.var_names.difference(names)
        extra = names.difference(adata.var_names)
        duplicated = names[names.duplicated()].unique()
        raise ValueError(
            f"the chunks do not cover the features of {args.data} once each: missing "
            f"{format_names(missing, 5) or 'none'}; not in the data "
            f"{format_names(extra, 5) or 'none'}; "
            f"duplicated {format_names(duplicated, 5) or 'none'}"
        )
    res = lmm.LMMResult.concat(fits, order=adata.var_names)
    # The same notes as a fit of the whole data in one piece gives.
    for note in res.spec.warnings:
        log.warning("UserWarning: %s", note)
    _fitstore.write(adata, res, key=args.key, params={k: records[0][k] for k in same[:3]})
    warn_failures(res, args.key)
    run = dict(adata.uns.get(RUN_KEY, {}))
    chunk_run = read_h5ad(args.chunks[0]).uns.get(RUN_KEY, {})
    if "fit" in chunk_run:
        run["fit"] = chunk_run["fit"]
    adata.uns[RUN_KEY] = run
    record(adata, "merge", {"n_chunks": len(fits)})
    write_h5ad(adata, args.output)


def transform(args: argparse.Namespace) -> None:
    from .. import tl

    adata = read_h5ad(args.input)
    reference = read_h5ad(args.reference)
    tl.transform(adata, reference, key=args.key, remove=args.remove, layer_added=args.layer_added)
    params = {"reference": str(args.reference), "key": args.key, "remove": list(args.remove)}
    record(adata, "transform", params)
    write_h5ad(adata, args.output)


def correct(args: argparse.Namespace) -> None:
    from .. import tl

    adata = read_h5ad(args.input)
    tl.correct(
        adata, key=args.key, remove=args.remove, method=args.method, layer_added=args.layer_added
    )
    params = {
        "key": args.key,
        "remove": list(args.remove),
        "method": args.method,
        "layer_added": args.layer_added,
    }
    record(adata, "correct", params)
    write_h5ad(adata, args.output)


def export(args: argparse.Namespace) -> None:
    from .. import get, tl

    outputs = (args.h5ad, args.corrected_tsv, args.fit_tsv, args.varpart_tsv)
    if all(path is None for path in outputs):
        raise ValueError(
            "nothing to export: give --h5ad, --corrected-tsv, --fit-tsv and/or --varpart-tsv"
        )
    adata = read_h5ad(args.input)
    varpart = tl.variance_partition(adata, key=args.key)
    record(adata, "export", {"key": args.key, "layer": args.layer})
    run = dict(adata.uns[RUN_KEY])
    if args.h5ad is not None:
        write_h5ad(adata, args.h5ad)
    if args.corrected_tsv is not None:
        write_tsv(corrected_table(adata, args.key, args.layer), args.corrected_tsv, run)
    if args.fit_tsv is not None:
        write_tsv(get.fit_df(adata, key=args.key), args.fit_tsv, run)
    if args.varpart_tsv is not None:
        write_tsv(varpart.rename_axis("feature"), args.varpart_tsv, run)


def corrected_table(adata: AnnData, key: str, layer: str) -> pd.DataFrame:
    """Features × (their annotations from the input, e.g. gene names, then the samples)."""
    annotations = adata.var.loc[:, ~adata.var.columns.str.startswith(f"{key}_")]
    clash = annotations.columns.intersection(adata.obs_names)
    if len(clash):
        raise ValueError(
            f"var column(s) {format_names(clash)} have the names of samples; rename them "
            "(adata.var) so the corrected table can hold both"
        )
    values = pd.DataFrame(
        get_matrix(adata, layer).T, index=adata.var_names, columns=adata.obs_names
    )
    return pd.concat([annotations, values], axis=1).rename_axis("feature")


def plot(args: argparse.Namespace) -> None:
    from .. import pl

    if args.varpart is None and args.pca is None:
        raise ValueError("nothing to plot: give --varpart and/or --pca")
    adata = read_h5ad(args.input)
    # The plot functions save atomically themselves.
    if args.varpart is not None:  # computes the variance partition if the input has none
        pl.variance_partition(adata, key=args.key, show=False, save=args.varpart)
        log.info("wrote %s", args.varpart)
    if args.pca is not None:
        pl.pca(adata, layers=(None, args.layer), color=args.color, show=False, save=args.pca)
        log.info("wrote %s", args.pca)
