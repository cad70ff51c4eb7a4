"""The work of each ``omixed`` subcommand; argument parsing lives in :mod:`omixed.cli`.

Every command reads its inputs, computes everything, and only then writes its outputs, each
through :func:`omixed._utils.atomic_path`, so a failed or killed command leaves no partial file.
Each command imports the namespaces it uses itself: a workflow step pays only for its own imports
(``omixed.pl`` loads matplotlib, ``omixed.tl`` the engine).
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import logging
import re
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._choices import NORMALIZERS
from .._utils import get_matrix
from ..io._table import format_names
from ._files import RUN_KEY, Outputs, read_h5ad, record, write_h5ad

if TYPE_CHECKING:
    from anndata import AnnData

log = logging.getLogger("omixed.cli")


_INPUTS = ("input", "path", "samples", "data", "chunks", "reference", "peptides")
_OUTPUTS = ("output", "h5ad", "corrected_tsv", "fit_tsv", "varpart_tsv", "varpart", "pca")
_OUTPUTS += ("table", "volcano")


def check_paths(args: argparse.Namespace) -> None:
    """Before any work: outputs that would overwrite an input, repeat each other or cannot be
    written are refused, and so is a key that could not be stored."""
    from .._choices import check_key
    from .._utils import check_outputs

    def given(names):
        for name in names:
            value = getattr(args, name, None)
            yield from ([] if value is None else value if isinstance(value, list) else [value])

    outputs = list(given(_OUTPUTS))
    # TSV tables carry their provenance in <name>.tsv.json beside them.
    outputs += [
        f"{path}.json"
        for name in ("corrected_tsv", "fit_tsv", "varpart_tsv", "table")
        for path in given([name])
    ]
    check_outputs(list(given(_INPUTS)), outputs)
    if getattr(args, "key", None) is not None:
        check_key(args.key)


def import_(args: argparse.Namespace) -> None:
    from .. import datasets, io
    from ..io._table import read_header

    examples = {"example": datasets.example, "example_peptides": datasets.example_peptides}
    if args.type in (*examples, "h5ad") and args.options:
        raise ValueError(f"--options are reader options; 'omixed import {args.type}' takes none")
    if args.type in examples:
        if args.path is not None:
            raise ValueError(f"'omixed import {args.type}' takes no input path")
        adata = examples[args.type]()
    elif args.path is None:
        raise ValueError(f"'omixed import {args.type}' needs an input path")
    elif args.type == "h5ad":
        adata = read_h5ad(args.path)
    else:
        reader = io.read if args.type == "auto" else getattr(io, f"read_{args.type}")
        chosen = io.reader_for(args.path)[1] if args.type == "auto" else reader
        options = {
            name: (f"--options '{{\"{name}\": ...}}'", f"input.options.{name}")
            for name in list(inspect.signature(chosen).parameters)[1:]
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
    ranges = _chunks(adata, n_chunks, args.by)
    chunks = []
    for i, idx in enumerate(ranges):
        chunk = adata[:, idx].copy()
        span = [int(idx[0]), int(idx[-1]) + 1]
        params = {"chunk": i + 1, "n_chunks": n_chunks, "features": span, "by": args.by}
        record(chunk, "split", params)
        chunks.append(chunk)
    outputs = Outputs()
    for chunk, path in zip(chunks, args.output, strict=True):
        outputs.h5ad(chunk, path)
    outputs.commit()


def _chunks(adata: AnnData, n_chunks: int, by: str | None) -> list[np.ndarray]:
    """Feature indices of each chunk: contiguous ranges, or whole groups of ``var[by]``.

    Ranges keep the feature order, so concatenated chunk fits restore it.  Groups (the peptides
    of each protein) stay together, in order of first appearance, balanced by feature count.
    """
    if by is None:
        if n_chunks > adata.n_vars:
            raise ValueError(f"cannot split {adata.n_vars} features into {n_chunks} chunks")
        return np.array_split(np.arange(adata.n_vars), n_chunks)
    if by not in adata.var.columns:
        raise ValueError(
            f"--by {by!r} is not a column of the features (var columns: "
            f"{format_names(adata.var.columns)})"
        )
    codes, groups = pd.factorize(adata.var[by].astype(str), sort=False)
    if n_chunks > groups.size:
        raise ValueError(f"cannot split {groups.size} {by} groups into {n_chunks} chunks")
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    # Cut after the group where the running feature count passes each chunk's share, keeping
    # at least one group per chunk.
    ends = np.cumsum(sizes)
    cuts, previous = [], -1
    for k in range(1, n_chunks):
        cut = int(np.searchsorted(ends, ends[-1] * k / n_chunks))
        cut = min(max(cut, previous + 1), groups.size - 1 - (n_chunks - k))
        cuts.append(cut)
        previous = cut
    bounds = [0, *(int(ends[c]) for c in cuts), int(ends[-1])]
    return [order[a:b] for a, b in itertools.pairwise(bounds)]


def fit(args: argparse.Namespace) -> None:
    from .. import tl

    adata = read_h5ad(args.input)
    options = {"formula": args.formula, "reml": not args.ml, "layer": args.layer}
    tl.fit(adata, **options, key_added=args.key, n_jobs=args.threads, progress=False)
    record(adata, "fit", {**options, "key": args.key})
    write_h5ad(adata, args.output)


def merge(args: argparse.Namespace) -> None:
    """Chunk fits as one fit: stored into ``--data`` (feature chunks of one data set), or, for
    protein chunks of ``omixed summarize``, the protein tables concatenated."""
    from .. import _fitstore

    chunks, fits, records = [], [], []
    for path in args.chunks:
        chunk = read_h5ad(path)
        try:
            fits.append(_fitstore.read(chunk, args.key))
        except KeyError as err:
            raise ValueError(f"{path} holds no fit under {args.key!r}: {err.args[0]}") from None
        records.append(_fitstore.info(chunk, args.key))
        chunks.append(chunk)
    proteins = ["protein_key" in record for record in records]
    if any(proteins) != all(proteins):
        raise ValueError("the chunks mix protein summaries and feature fits; merge them apart")
    same = ("layer", "weights_layer", "robust", "reml", "protein_key", "removed")
    for path, res, rec in zip(args.chunks, fits, records, strict=True):
        model = res.spec.same_model(fits[0].spec) or (
            all(proteins) and res.spec.same_fixed_and_terms(fits[0].spec)
        )
        if not model or any(rec.get(k) != records[0].get(k) for k in same):
            raise ValueError(
                f"{path} was fit with another model ({res.spec.formula!r} on its design) than "
                f"{args.chunks[0]} ({fits[0].spec.formula!r}); refit the chunks with one model"
            )
    if all(proteins):
        if args.data is not None:
            raise ValueError("protein summaries are merged without --data")
        adata = _merge_proteins(chunks, fits, records, args.key)
    else:
        if args.data is None:
            raise ValueError("feature chunks are merged into the data they came from: give --data")
        adata = _merge_features(read_h5ad(args.data), fits, records, args)
    run = dict(adata.uns.get(RUN_KEY, {}))
    for step in ("fit", "summarize"):
        if step in chunks[0].uns.get(RUN_KEY, {}):
            run[step] = chunks[0].uns[RUN_KEY][step]
    adata.uns[RUN_KEY] = run
    record(adata, "merge", {"n_chunks": len(fits)})
    write_h5ad(adata, args.output)


def _merge_features(adata: AnnData, fits: list, records: list[dict], args) -> AnnData:
    from .. import _fitstore, lmm
    from ..tl._fit import warn_failures

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
    params = {k: records[0][k] for k in ("layer", "weights_layer", "robust")}
    _fitstore.write(adata, res, key=args.key, params=params)
    warn_failures(res, args.key)
    return adata


def _merge_proteins(chunks: list, fits: list, records: list[dict], key: str) -> AnnData:
    import anndata as ad

    from .. import _fitstore, lmm
    from ..tl._fit import warn_failures

    if any(not chunk.obs.equals(chunks[0].obs) for chunk in chunks[1:]):
        raise ValueError("the protein chunks have different samples; summarize one data set")
    res = lmm.LMMResult.concat(fits)
    merged = ad.concat(
        [
            ad.AnnData(c.X, obs=c.obs, var=c.var[["n_peptides"]], layers=dict(c.layers))
            for c in chunks
        ],
        axis=1,
        merge="first",
    )
    merged.obs = chunks[0].obs.copy()
    params = {
        k: v
        for k, v in records[0].items()
        if k
        in (
            "layer",
            "weights_layer",
            "robust",
            "protein_key",
            "min_peptides",
            "removed",
            "source_layer",
        )
    }
    params["n_proteins_below_min_peptides"] = sum(
        int(r.get("n_proteins_below_min_peptides", 0)) for r in records
    )
    _fitstore.write(merged, res, key=key, params=params)
    merged.uns[f"{key}_peptides"] = pd.concat(
        [chunk.uns[f"{key}_peptides"] for chunk in chunks], ignore_index=True
    )
    warn_failures(res, key)
    return merged


def summarize(args: argparse.Namespace) -> None:
    from .. import tl

    peptides = read_h5ad(args.input)
    options = {
        "protein_key": args.protein_key,
        "formula": args.formula,
        "remove": args.remove,
        "min_peptides": args.min_peptides,
        "reml": not args.ml,
        "robust": args.robust,
    }
    proteins = tl.summarize_proteins(
        peptides, **options, key_added=args.key, n_jobs=args.threads, progress=False
    )
    proteins.uns[RUN_KEY] = dict(peptides.uns.get(RUN_KEY, {}))
    record(proteins, "summarize", {**options, "key": args.key})
    write_h5ad(proteins, args.output)


def test(args: argparse.Namespace) -> None:
    """A contrast tested in every feature: the table (and a volcano plot), written together."""
    from .. import pl, tl

    adata = read_h5ad(args.input)
    peptides = read_h5ad(args.peptides) if args.peptides is not None else None
    top = tl.test(
        adata,
        contrast=args.contrast,
        key=args.key,
        method=args.method,
        moderate=args.moderate,
        robust=args.robust,
        hurdle=args.hurdle,
        peptides=peptides,
        key_added="test",
    )
    if "n_peptides" in adata.var.columns:
        top.insert(0, "n_peptides", adata.var.loc[top.index, "n_peptides"].to_numpy())
    params = {
        k: getattr(args, k)
        for k in ("contrast", "key", "method", "moderate", "robust", "hurdle", "peptides")
    }
    record(adata, "test", params)
    outputs = Outputs()
    outputs.tsv(top.rename_axis("feature"), args.table, dict(adata.uns[RUN_KEY]))
    if args.volcano is not None:
        outputs.figure(pl.volcano(adata, key="test", show=False), args.volcano)
    outputs.commit()
    called = top["hurdle_padj" if args.hurdle else "padj"] < 0.05
    log.info("%s: %d of %d features at adjusted p < 0.05", args.contrast, called.sum(), len(top))


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
    outputs = Outputs()
    if args.h5ad is not None:
        outputs.h5ad(adata, args.h5ad)
    if args.corrected_tsv is not None:
        outputs.tsv(corrected_table(adata, args.key, args.layer), args.corrected_tsv, run)
    if args.fit_tsv is not None:
        outputs.tsv(get.fit_df(adata, key=args.key), args.fit_tsv, run)
    if args.varpart_tsv is not None:
        outputs.tsv(varpart.rename_axis("feature"), args.varpart_tsv, run)
    outputs.commit()


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
    outputs = Outputs()
    if args.varpart is not None:  # computes the variance partition if the input has none
        figure = pl.variance_partition(adata, key=args.key, show=False)
        outputs.figure(figure, args.varpart)
    if args.pca is not None:
        figure = pl.pca(adata, layers=(None, args.layer), color=args.color, show=False)
        outputs.figure(figure, args.pca)
    outputs.commit()
