"""Start-up cost of the ``omixed`` command line, and the example workflow's wall time.

Part 1 times fresh processes (best of ``--repeats``): ``python -c pass`` (the interpreter alone,
the peer), ``python -c "import anndata"`` (what every step that reads an h5ad loads),
``omixed --help``, the imports of the heaviest steps, and every workflow step on a small input
(the example data cut to 100 features, the fewest that leave complete features for the PCA plot),
where the step's own work is small: its time is about the fixed cost each job of the workflow
pays (``import`` simulates the full example data, as the workflow's first job does).

Part 2 (``--workflow``) runs the example workflow (``snakemake --cores 2`` in a fresh copy of
``workflow/``, ``config/`` and ``profiles/``: 11 jobs and Snakemake's own start) and, as its
peer, the same steps through the Python API in one fresh process (example data, median centring,
fit, correction, variance partition, both plots written to PNG), and prints both wall times.

Usage: ``python benchmarks/bench_startup.py [--repeats 5] [--workflow]``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORMULA = "~ condition + (1|batch) + (1|donor)"
# The workflow's steps in order, as its rules call them (two chunks instead of four).
STEPS = {
    "import": ["import", "example", "-o", "imported.h5ad"],
    "normalize": ["normalize", "tiny.h5ad", "--steps", "median_center", "-o", "normalized.h5ad"],
    "split": ["split", "normalized.h5ad", "-o", "1-of-2.h5ad", "2-of-2.h5ad"],
    "fit": ["fit", "1-of-2.h5ad", "--formula", FORMULA, "-o", "1-of-2.fit.h5ad"],
    "fit (2nd chunk)": ["fit", "2-of-2.h5ad", "--formula", FORMULA, "-o", "2-of-2.fit.h5ad"],
    "merge": [
        "merge",
        "--data",
        "normalized.h5ad",
        "1-of-2.fit.h5ad",
        "2-of-2.fit.h5ad",
        "-o",
        "fit.h5ad",
    ],
    "correct": ["correct", "fit.h5ad", "--remove", "batch", "-o", "corrected.h5ad"],
    "export": [
        "export",
        "corrected.h5ad",
        "--h5ad",
        "final.h5ad",
        "--corrected-tsv",
        "corrected.tsv",
        "--fit-tsv",
        "fit.tsv",
        "--varpart-tsv",
        "varpart.tsv",
    ],
    "plot": ["plot", "final.h5ad", "--varpart", "varpart.png", "--pca", "pca.png"],
}
STEP_IMPORTS = "import omixed.cli, omixed._cli._commands"
API = f"""
import warnings
import omixed
adata = omixed.datasets.example()
omixed.pp.median_center(adata)
omixed.tl.fit(adata, {FORMULA!r}, progress=False)
omixed.tl.correct(adata, remove=["batch"])
omixed.tl.variance_partition(adata)
omixed.pl.variance_partition(adata, show=False, save="varpart.png")
omixed.pl.pca(adata, layers=(None, "corrected"), color=["batch", "condition"], show=False,
              save="pca.png")
"""


def seconds(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{done.stderr.decode()}")
    return time.perf_counter() - start


def startup(repeats: int) -> None:
    omixed = [sys.executable, "-m", "omixed.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        subprocess.run(
            [sys.executable, "-c", "import omixed; "
             "omixed.datasets.example()[:, :100].copy().write_h5ad('tiny.h5ad')"],
            cwd=cwd,
            check=True,
        )  # fmt: skip
        runs = {
            "python -c pass": [sys.executable, "-c", "pass"],
            'python -c "import anndata"': [sys.executable, "-c", "import anndata"],
            # what the heaviest steps load before any work
            "imports of export": [sys.executable, "-c", STEP_IMPORTS + ", omixed.tl, omixed.get"],
            "imports of plot": [sys.executable, "-c", STEP_IMPORTS + ", omixed.pl"],
            "omixed --help": [*omixed, "--help"],
            **{f"omixed {name}": [*omixed, "-q", *argv] for name, argv in STEPS.items()},
        }
        best = {name: float("inf") for name in runs}
        for _ in range(repeats):  # interleaved, so that a busy moment of the machine hits all
            for name, argv in runs.items():
                best[name] = min(best[name], seconds(argv, cwd))
    peer = best["python -c pass"]
    print(f"fresh processes, best of {repeats} (the steps on 48 samples × 100 features):")
    for name, value in best.items():
        print(f"  {name:28s} {value:6.3f} s  {value / peer:5.0f}× python -c pass")


def workflow() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        for part in ("workflow", "config", "profiles"):
            shutil.copytree(REPO / part, project / part)
        wall = seconds(["snakemake", "--cores", "2", "--quiet"], project)
        api = seconds([sys.executable, "-c", API], project)
    print("example workflow (48 samples × 2000 features, 11 jobs on 2 cores):")
    print(f"  snakemake --cores 2          {wall:6.1f} s")
    print(f"  the same steps, Python API   {api:6.1f} s  (one process, n_jobs=1)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per command")
    parser.add_argument("--workflow", action="store_true", help="also time the example workflow")
    args = parser.parse_args()
    startup(args.repeats)
    if args.workflow:
        workflow()


if __name__ == "__main__":
    main()
