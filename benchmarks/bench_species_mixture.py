"""Protein fold changes against a known truth: a human/yeast/E. coli mixture (ProteoBench).

The samples of ProteoBench's LFQ modules (PXD028735, Van Puyvelde et al. 2022) mix commercial
human, yeast and E. coli digests so that, from condition B to A, human proteins are unchanged,
yeast proteins double and E. coli proteins drop four-fold: log2(A/B) = 0, +1, -2. Three
replicates per condition were run by data-dependent (DDA, Q Exactive HF-X) and
data-independent acquisition (DIA, "AIF" module). The inputs are ProteoBench's test subsets of
real outputs of six tools on those runs (benchmarks/data/species_mixture/README.md): random rows
of each tool's table, so most proteins have few peptides here and the numbers are a small-sample
view of each method, not a tool ranking.

For every input, peptide-level values are read with ``omixed.io.read(path, level="peptide")``
(precursors summed per peptide; MaxQuant/MaxDIA evidence per raw file), log2-transformed and
summarised per protein three ways:

* ``omixed``: :func:`omixed.tl.summarize_proteins` with the per-protein peptide model
  ``~ condition + (1|sample) + (1|peptide)``; log2 fold change = mean protein abundance in A
  minus mean in B;
* ``median ratio``: the median, over a protein's peptides, of each peptide's mean log2 in A
  minus mean in B (peptides seen in both conditions);
* ``tool``: the tool's own protein quantity where the file has one (DIA-NN's ``PG.MaxLFQ``).

Printed per input, species and method: proteins quantified (a fold change could be computed),
the median log2 fold change, its error against the truth (ProteoBench's "epsilon"), and the
median absolute error over the proteins every method quantified. No normalisation beyond the
tool's own: the human error shows how far a method's centre is off.

Usage: ``python benchmarks/bench_species_mixture.py``; reads only the committed files (no
download), about half a minute.
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import omixed

DATA = Path(__file__).parent / "data" / "species_mixture"
TRUTH = {"HUMAN": 0.0, "YEAST": 1.0, "ECOLI": -2.0}  # log2(A / B)
INPUTS = {
    # name: (file, reader options, tool protein options or None)
    "DIA-NN 1.9 (DIA)": ("diann_1_9_report.tsv.gz", {"level": "peptide"}, {"level": "protein"}),
    "FragPipe combined_ion (DIA)": ("fragpipe_dia_combined_ion.tsv.gz", {"level": "peptide"}, None),
    "MaxDIA evidence (DIA)": ("maxdia_evidence.txt.gz", {"sample": "raw_file"}, None),
    "MaxQuant 2.5.1 evidence (DDA)": (
        "maxquant_2_5_1_evidence.txt.gz",
        {"sample": "raw_file"},
        None,
    ),
    "AlphaPept results (DDA)": ("alphapept_results.csv.gz", {"level": "peptide"}, None),
    "Sage lfq.tsv (DDA)": ("sage_lfq.tsv.gz", {"level": "peptide"}, None),
}
FORMULA = "~ condition + (1|sample) + (1|peptide)"


def species_of(names: pd.Series) -> pd.Series:
    """HUMAN/YEAST/ECOLI from UniProt entry names (``..._HUMAN``); None when mixed or unknown."""

    def one(text: str) -> str | None:
        found = set(re.findall(r"_(HUMAN|YEAST|ECOLI)\b", str(text)))
        return found.pop() if len(found) == 1 else None

    return names.map(one)


def condition_of(samples: pd.Index) -> np.ndarray:
    return np.array([re.search(r"Condition_([AB])", s).group(1) for s in samples])


def fold_changes(values: pd.DataFrame, condition: np.ndarray) -> pd.Series:
    """Per column: mean of log2 values in A minus mean in B (NaN unless seen in both)."""
    a = values[condition == "A"].mean()
    b = values[condition == "B"].mean()
    return a - b


def median_peptide_ratio(peptides, condition: np.ndarray) -> pd.Series:
    log = pd.DataFrame(np.log2(peptides.X), index=peptides.obs_names, columns=peptides.var_names)
    ratios = fold_changes(log, condition)
    return ratios.groupby(peptides.var["protein"].to_numpy()).median()


def omixed_fold_changes(peptides, condition: np.ndarray) -> tuple[pd.Series, float]:
    data = peptides.copy()
    data.X = np.log2(data.X)
    data.obs["condition"] = condition
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # per-protein notes (e.g. too few observations)
        proteins = omixed.tl.summarize_proteins(data, formula=FORMULA, remove=(), progress=False)
    seconds = time.perf_counter() - start
    abundance = pd.DataFrame(proteins.X, index=proteins.obs_names, columns=proteins.var_names)
    return fold_changes(abundance, condition), seconds


def tool_fold_changes(path: Path, options: dict, condition_by_sample) -> pd.Series:
    proteins = omixed.io.read(path, **options)
    log = pd.DataFrame(np.log2(proteins.X), index=proteins.obs_names, columns=proteins.var_names)
    return fold_changes(log, condition_by_sample(proteins.obs_names))


def summarise(
    name: str, estimates: dict[str, pd.Series], species: pd.Series, proteins: pd.Index | None = None
) -> pd.DataFrame:
    """Per method and species; only ``proteins`` when given."""
    if proteins is not None:
        estimates = {m: e[e.index.isin(proteins)] for m, e in estimates.items()}
    common = set.intersection(*(set(e.dropna().index) for e in estimates.values()))
    rows = []
    for method, estimate in estimates.items():
        estimate = estimate.dropna()
        kind = species.reindex(estimate.index)
        for sp, truth in TRUTH.items():
            values = estimate[kind == sp]
            shared = values[values.index.isin(common)]
            rows.append(
                {
                    "input": name,
                    "method": method,
                    "species": sp,
                    "expected": truth,
                    "n": len(values),
                    "median log2FC": values.median(),
                    "error": values.median() - truth,
                    "MAE common": (shared - truth).abs().median(),
                    "n common": len(shared),
                }
            )
    return pd.DataFrame(rows)


def main() -> None:
    missing = [f for f, _, _ in INPUTS.values() if not (DATA / f).is_file()]
    if missing:
        raise SystemExit(f"missing benchmark inputs in {DATA}: {missing} (see README.md there)")
    tables, multi = [], []
    for name, (file, options, tool) in INPUTS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. MaxDIA experiments grouping runs: said in uns
            peptides = omixed.io.read(DATA / file, **options)
        condition = condition_of(peptides.obs_names)
        protein_names = peptides.var.groupby("protein")["protein"].first()
        if "protein_names" in peptides.var:
            protein_names = peptides.var.groupby("protein")["protein_names"].first()
        species = species_of(protein_names)
        estimates = {"median ratio": median_peptide_ratio(peptides, condition)}
        estimates["omixed"], seconds = omixed_fold_changes(peptides, condition)
        if tool is not None:
            estimates["tool"] = tool_fold_changes(DATA / file, tool, condition_of)
        print(
            f"{name}: {peptides.n_obs} runs, {peptides.n_vars} peptides of "
            f"{species.notna().sum()} single-species proteins; summarize_proteins {seconds:.1f} s"
        )
        tables.append(summarise(name, estimates, species))
        n_peptides = peptides.var.groupby("protein").size()
        multi.append(summarise(name, estimates, species, n_peptides.index[n_peptides >= 3]))
    table = pd.concat(tables, ignore_index=True)
    with pd.option_context("display.width", 140, "display.max_rows", 200):
        print()
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        for title, part in (("all proteins", table), ("proteins with >= 3 peptides", multi)):
            part = pd.concat(part, ignore_index=True) if isinstance(part, list) else part
            print(f"\nMean over species of |median error|, and proteins quantified ({title}):")
            pivot = part.assign(abs_error=part["error"].abs()).pivot_table(
                index="input",
                columns="method",
                values=["abs_error", "n"],
                aggfunc={"abs_error": "mean", "n": "sum"},
            )
            print(pivot.to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
