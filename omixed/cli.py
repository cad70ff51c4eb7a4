"""``omixed`` command line: the steps of the Snakemake workflow, each usable on its own.

    omixed import example -o data.h5ad
    omixed normalize data.h5ad -o norm.h5ad --steps median_center
    omixed split norm.h5ad -o chunk1.h5ad chunk2.h5ad
    omixed fit chunk1.h5ad --formula "~ condition + (1|batch)" -o fit1.h5ad   # (and chunk2)
    omixed merge --data norm.h5ad fit1.h5ad fit2.h5ad -o fitted.h5ad
    omixed correct fitted.h5ad --remove batch -o corrected.h5ad
    omixed export corrected.h5ad --h5ad final.h5ad --corrected-tsv corrected.tsv \\
        --fit-tsv fit.tsv --varpart-tsv variance_partition.tsv
    omixed plot final.h5ad --varpart varpart.png --pca pca.png

``omixed fit norm.h5ad ... -o fitted.h5ad`` fits everything at once instead of split/fit/merge.
Messages go to stderr; a failing command exits with status 1 and writes no output.
A command imports only what it uses (``--help`` nothing heavy), so each step starts quickly.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence

from . import __version__
from ._choices import CORRECTION_METHODS, INPUT_TYPES, NORMALIZERS

log = logging.getLogger("omixed.cli")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omixed",
        description="Remove batch effects from omics data with per-feature linear mixed models.",
    )
    parser.add_argument("--version", action="version", version=f"omixed {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: str, help: str) -> argparse.ArgumentParser:
        """A subcommand run by the function ``func`` of :mod:`omixed._cli._commands`."""
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = command("import", "import_", "Read input data (and a sample sheet) into an h5ad file.")
    p.add_argument("type", choices=INPUT_TYPES, help="input format ('example': bundled data)")
    p.add_argument("path", nargs="?", help="input file (not for 'example')")
    p.add_argument("-o", "--output", required=True, help="h5ad file to write")
    p.add_argument("--samples", help="sample sheet (TSV/CSV); its columns replace obs columns")
    p.add_argument("--sample-column", default="sample", help="sample-name column of the sheet")
    p.add_argument(
        "--how",
        choices=["exact", "inner"],
        default="exact",
        help="samples in the data but not the sheet, or the other way round: 'exact' (default) "
        "stops and lists them, 'inner' keeps the samples in both",
    )
    p.add_argument(
        "--options",
        type=_json_object,
        default={},
        help='reader keyword arguments as JSON, e.g. \'{"orientation": "samples_x_features"}\' '
        "(see omixed.io.read_table, read_maxquant, read_diann, read_long)",
    )

    p = command("normalize", "normalize", "Apply normalization steps, in order, to X.")
    p.add_argument("input", help="h5ad file")
    p.add_argument("-o", "--output", required=True, help="h5ad file to write")
    p.add_argument(
        "--steps",
        nargs="*",
        default=[],
        metavar="STEP",
        help=f"steps from {', '.join(NORMALIZERS)} (none: copy unchanged)",
    )

    p = command("split", "split", "Split the features into contiguous chunks, one h5ad each.")
    p.add_argument("input", help="h5ad file")
    p.add_argument("-o", "--output", nargs="+", required=True, help="one h5ad per chunk, in order")
    p.add_argument("--by", help="keep features with the same value of this var column together")

    p = command("fit", "fit", "Fit a linear mixed model to every feature.")
    p.add_argument("input", help="h5ad file")
    p.add_argument("--formula", required=True, help='e.g. "~ condition + (1|batch) + (1|donor)"')
    p.add_argument("-o", "--output", required=True, help="fitted h5ad to write")
    p.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    p.add_argument("--layer", help="fit this layer instead of X")
    p.add_argument("--key", default="lmm", help="prefix of the stored results")
    p.add_argument("--threads", type=_positive, default=1, help="worker processes")

    p = command("merge", "merge", "Combine the fits of chunks into one fitted h5ad.")
    p.add_argument(
        "chunks", nargs="+", help="fitted h5ad files of 'omixed fit' or 'omixed summarize'"
    )
    p.add_argument("--data", help="for 'omixed fit' chunks: the h5ad that was split")
    p.add_argument("-o", "--output", required=True, help="fitted h5ad to write")
    p.add_argument("--key", default="lmm", help="the fit's key in the chunk files")

    p = command(
        "summarize", "summarize", "Summarise peptides to proteins: one mixed model per protein."
    )
    p.add_argument("input", help="h5ad of samples × peptides (log scale)")
    p.add_argument("-o", "--output", required=True, help="h5ad of samples × proteins to write")
    p.add_argument("--protein-key", default="protein", help="var column naming each protein")
    p.add_argument(
        "--formula",
        help="model per protein (default: ~ condition + (1|batch) + (1|sample) + (1|peptide) "
        "with the condition and batch parts where the samples have those columns)",
    )
    p.add_argument(
        "--remove",
        nargs="*",
        help="random terms removed for the corrected layer (default: all but sample and peptide)",
    )
    p.add_argument("--min-peptides", type=_positive, default=1, help="fewer: protein left out")
    p.add_argument("--robust", action="store_true", help="Huber M-estimation, as msqrob2")
    p.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    p.add_argument("--key", default="lmm", help="prefix of the stored results")
    p.add_argument("--threads", type=_positive, default=1, help="worker processes")

    p = command("test", "test", "Test a contrast in every feature: a table and a volcano plot.")
    p.add_argument("input", help="fitted h5ad (omixed fit / merge / summarize)")
    p.add_argument("--contrast", required=True, help='e.g. "condition[T.treated]"')
    p.add_argument("--table", required=True, help="TSV of the results, sorted by p-value")
    p.add_argument("--volcano", help="volcano plot (PNG, PDF or SVG by suffix)")
    p.add_argument("--peptides", help="for protein fits: the peptide h5ad they were made from")
    p.add_argument(
        "--method", choices=("satterthwaite", "residual"), default="satterthwaite", help="df"
    )
    p.add_argument("--moderate", action="store_true", help="limma's moderation of σ²")
    p.add_argument("--robust", action="store_true", help="robust moderation prior")
    p.add_argument("--hurdle", action="store_true", help="add the detection test (proteins)")
    p.add_argument("--key", default="lmm", help="the fit's key")

    p = command("correct", "correct", "Subtract the fitted effects of chosen terms.")
    p.add_argument("input", help="fitted h5ad")
    p.add_argument("-o", "--output", required=True, help="h5ad file to write")
    p.add_argument("--remove", nargs="+", default=["batch"], help="terms to remove (default batch)")
    p.add_argument(
        "--method",
        choices=CORRECTION_METHODS,
        default="eb",
        help="how a random term's effects are estimated (see omixed.tl.correct; default eb)",
    )
    p.add_argument("--key", default="lmm", help="the fit's key")
    p.add_argument("--layer-added", default="corrected", help="layer receiving corrected values")

    p = command("transform", "transform", "Correct new samples with a saved fit (no refit).")
    p.add_argument("input", help="h5ad of the new samples (normalized like the reference)")
    p.add_argument("--reference", required=True, help="fitted h5ad (e.g. results/corrected.h5ad)")
    p.add_argument("-o", "--output", required=True, help="h5ad file to write")
    p.add_argument("--remove", nargs="+", default=["batch"], help="terms to remove (default batch)")
    p.add_argument("--key", default="lmm", help="the fit's key")
    p.add_argument("--layer-added", default="corrected", help="layer receiving corrected values")

    p = command(
        "export",
        "export",
        "Add the variance partition and write the final h5ad and TSV tables.",
    )
    p.add_argument("input", help="corrected h5ad")
    p.add_argument("--h5ad", help="final h5ad (fit, correction and variance partition)")
    p.add_argument("--corrected-tsv", help="corrected values, features × samples")
    p.add_argument("--fit-tsv", help="per-feature fit: criterion, convergence, variances, β, SE")
    p.add_argument("--varpart-tsv", help="variance fractions per feature and term")
    p.add_argument("--key", default="lmm", help="the fit's key")
    p.add_argument("--layer", default="corrected", help="layer written to --corrected-tsv")

    p = command("plot", "plot", "Plot the variance partition and PCA before/after correction.")
    p.add_argument("input", help="corrected h5ad")
    p.add_argument("--varpart", help="variance-partition plot (PNG)")
    p.add_argument("--pca", help="PCA before/after plot (PNG)")
    p.add_argument("--key", default="lmm", help="the fit's key")
    p.add_argument("--layer", default="corrected", help="corrected layer")
    p.add_argument(
        "--color", nargs="+", default=["batch", "condition"], help="obs columns to colour by"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``omixed`` command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = build_parser().parse_args(argv)
    from ._cli import _commands
    from ._cli._files import ARGV

    # Our own handler on our own logger (not the root logger), removed again at the end, so
    # that calling main() from Python leaves the caller's logging and warnings as they were.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s omixed %(levelname)s: %(message)s"))
    root = logging.getLogger("omixed")
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING if args.quiet else logging.INFO)
    token = ARGV.set(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _log_warning
            _commands.check_paths(args)
            getattr(_commands, args.func)(args)
    except (ValueError, KeyError, TypeError, OSError) as err:
        # KeyError's str() is the repr of its message; show the message itself.
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        log.error("%s: %s", args.command, message)
        return 1
    finally:
        ARGV.reset(token)
        root.removeHandler(handler)
        root.setLevel(level)
    return 0


def _log_warning(message, category, *_args, **_kwargs) -> None:
    """Warnings as one log line each, without the source line that raised them."""
    log.warning("%s: %s", category.__name__, message)


if __name__ == "__main__":
    sys.exit(main())
