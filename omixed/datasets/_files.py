"""The simulated peptides of :func:`example_peptides` as the files proteomics tools write.

Each peptide gets a tryptic sequence and each protein the concatenation of its peptides, so the
sequence columns (neighbouring residues, positions, cleavage windows, mass) agree with each other.
Quantities are ``2**y`` of the simulated log2 values, written as the tools write numbers (whole
intensities in MaxQuant's tables, 6 significant digits in DIA-NN's); columns that the readers do
not use hold plausible fixed or random values, so that the files have the tools' full layout.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ._example import example_peptides

# Residues inside a tryptic peptide (no K/R) and monoisotopic residue masses (Da).
_INNER = np.array(list("ACDEFGHILMNPQSTVWY"))
_MASS = {
    "A": 71.03711, "C": 103.00919, "D": 115.02694, "E": 129.04259, "F": 147.06841,
    "G": 57.02146, "H": 137.05891, "I": 113.08406, "K": 128.09496, "L": 113.08406,
    "M": 131.04049, "N": 114.04293, "P": 97.05276, "Q": 128.05858, "R": 156.10111,
    "S": 87.03203, "T": 101.04768, "V": 99.06841, "W": 186.07931, "Y": 163.06333,
}  # fmt: skip
_WATER = 18.010565


def example_files(*, directory: str | os.PathLike = ".", seed: int = 0) -> dict[str, Path]:
    """Write :func:`example_peptides` as a MaxQuant ``peptides.txt``, a DIA-NN ``report.tsv`` and a
    sample sheet, to try the readers and the proteomics workflow on.

    ``peptides.txt`` has the columns of MaxQuant 1.6's peptide table (one row per peptide,
    ``Intensity <sample>`` and ``LFQ intensity <sample>`` with 0 for a missing value);
    ``report.tsv`` those of DIA-NN 1.8's main report (one row per observed precursor and run,
    one precursor of charge 2 per peptide); ``samples.tsv`` has ``sample``, ``batch`` and
    ``condition``. Both tables hold ``2**y`` of the same simulated values, so ``log2`` of either
    reader's matrix is ``example_peptides(seed=seed).X`` to the files' precision (MaxQuant writes
    whole intensities, DIA-NN 6 significant digits), with peptides named by their sequence
    instead of ``P0000_pep00``.

    Parameters
    ----------
    directory
        Folder to write the three files to (created if missing).
    seed
        Seed of :func:`example_peptides` and of the sequences.

    Returns
    -------
    The paths, keyed ``"maxquant"``, ``"diann"`` and ``"samples"``.

    Examples
    --------
    >>> import tempfile
    >>> import omixed
    >>> files = omixed.datasets.example_files(directory=tempfile.mkdtemp())
    >>> peptides = omixed.io.read_maxquant(files["maxquant"])
    >>> peptides.shape, peptides.var["protein"].nunique()
    ((24, 2184), 300)
    """
    adata = example_peptides(seed=seed)
    rng = np.random.default_rng([seed, 1])
    peptides = _peptide_table(adata, rng)
    samples = adata.obs_names.astype(str).tolist()
    # peptides × samples, whole numbers as MaxQuant writes them, 0 = not quantified
    intensity = np.rint(np.nan_to_num(2.0**adata.X.T)).astype(np.int64)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "maxquant": folder / "peptides.txt",
        "diann": folder / "report.tsv",
        "samples": folder / "samples.tsv",
    }
    _maxquant(peptides, samples, intensity, rng).to_csv(paths["maxquant"], sep="\t", index=False)
    report = _diann(peptides, samples, intensity, rng)
    report.to_csv(paths["diann"], sep="\t", index=False, float_format="%.6g")
    sheet = adata.obs[["batch", "condition"]].rename_axis("sample")
    sheet.to_csv(paths["samples"], sep="\t")
    return paths


def _peptide_table(adata, rng: np.random.Generator) -> pd.DataFrame:
    """One row per peptide: sequence, protein, gene and the sequence context in its protein."""
    protein = adata.var["protein"].astype(str).to_numpy()
    lengths = rng.integers(7, 21, protein.size)
    inner = rng.choice(_INNER, size=(protein.size, 20))
    ends = rng.choice(["K", "R"], size=protein.size)
    sequence = ["".join(inner[i, : n - 1]) + ends[i] for i, n in enumerate(lengths)]
    table = pd.DataFrame({"sequence": sequence, "protein": protein, "length": lengths})
    table["gene"] = "GENE" + table["protein"].str[1:]
    protein_sequence = table.groupby("protein", sort=False)["sequence"].agg("".join)
    offset = table.groupby("protein", sort=False)["length"].cumsum() - table["length"]
    table["start"] = offset + 1  # 1-based, as MaxQuant counts
    table["end"] = offset + table["length"]
    full = table["protein"].map(protein_sequence)
    table["before"] = [
        s[b - 2] if b > 1 else "-" for s, b in zip(full, table["start"], strict=True)
    ]
    table["after"] = [s[e] if e < len(s) else "-" for s, e in zip(full, table["end"], strict=True)]
    padded = "_" * 15 + full + "_" * 15
    table["n_window"] = [p[b - 1 : b + 30] for p, b in zip(padded, table["start"], strict=True)]
    table["c_window"] = [p[e - 1 : e + 30] for p, e in zip(padded, table["end"], strict=True)]
    table["mass"] = [sum(_MASS[a] for a in s) + _WATER for s in sequence]
    return table


def _maxquant(
    peptides: pd.DataFrame, samples: list[str], intensity: np.ndarray, rng: np.random.Generator
) -> pd.DataFrame:
    """MaxQuant 1.6 ``peptides.txt``."""
    n = len(peptides)
    observed = intensity > 0
    n_obs = observed.sum(axis=1)
    first_id = np.concatenate([[0], np.cumsum(n_obs)[:-1]])
    ids = [";".join(map(str, range(a, a + k))) for a, k in zip(first_id, n_obs, strict=True)]
    seq = peptides["sequence"]
    columns = {
        "Sequence": seq,
        "N-term cleavage window": peptides["n_window"],
        "C-term cleavage window": peptides["c_window"],
        "Amino acid before": peptides["before"],
        "First amino acid": seq.str[0],
        "Second amino acid": seq.str[1],
        "Second last amino acid": seq.str[-2],
        "Last amino acid": seq.str[-1],
        "Amino acid after": peptides["after"],
        "Length": peptides["length"],
        "Missed cleavages": 0,
        "Mass": peptides["mass"].round(5),
        "Proteins": peptides["protein"],
        "Leading razor protein": peptides["protein"],
        "Start position": peptides["start"],
        "End position": peptides["end"],
        "Gene names": peptides["gene"],
        "Protein names": "Simulated protein " + peptides["protein"].str[1:],
        "Unique (Groups)": "yes",
        "Unique (Proteins)": "yes",
        "Charges": "2",
        "PEP": [f"{p:.5G}" for p in 10.0 ** -rng.uniform(2, 30, n)],
        "Score": rng.uniform(60, 250, n).round(2),
        **{f"Experiment {s}": np.where(observed[:, j], "1", "") for j, s in enumerate(samples)},
        "Intensity": intensity.sum(axis=1),
        **{f"Intensity {s}": intensity[:, j] for j, s in enumerate(samples)},
        "Reverse": "",
        "Potential contaminant": "",
        "id": np.arange(n),
        "Protein group IDs": pd.factorize(peptides["protein"])[0],
        "Mod. peptide IDs": np.arange(n),
        "Evidence IDs": ids,
        "MS/MS IDs": ids,
        "Best MS/MS": first_id,
        "Oxidation (M) site IDs": "",
        **{f"LFQ intensity {s}": intensity[:, j] for j, s in enumerate(samples)},
        "MS/MS Count": n_obs,
    }
    return pd.DataFrame(columns)


def _diann(
    peptides: pd.DataFrame, samples: list[str], intensity: np.ndarray, rng: np.random.Generator
) -> pd.DataFrame:
    """DIA-NN 1.8 main report: one row per observed precursor and run, ordered by run."""
    run_index, peptide_index = np.nonzero(intensity.T > 0)
    rows = peptides.iloc[peptide_index].reset_index(drop=True)
    quantity = intensity[peptide_index, run_index].astype(float)  # written with 6 digits
    run = np.asarray(samples)[run_index]
    protein_quantity = pd.Series(quantity).groupby([rows["protein"], run]).transform("sum")
    rt = rng.uniform(5, 60, len(peptides))[peptide_index]
    m = len(rows)

    def q_values() -> np.ndarray:
        return rng.uniform(1e-5, 5e-3, m)

    columns = {
        "File.Name": [f"C:\\data\\{r}.raw" for r in run],
        "Run": run,
        "Protein.Group": rows["protein"],
        "Protein.Ids": rows["protein"],
        "Protein.Names": rows["gene"] + "_SIM",
        "Genes": rows["gene"],
        **dict.fromkeys(["PG.Quantity", "PG.Normalised", "PG.MaxLFQ"], protein_quantity),
        **dict.fromkeys(
            ["Genes.Quantity", "Genes.Normalised", "Genes.MaxLFQ", "Genes.MaxLFQ.Unique"],
            protein_quantity,
        ),
        "Modified.Sequence": rows["sequence"],
        "Stripped.Sequence": rows["sequence"],
        "Precursor.Id": rows["sequence"] + "2",
        "Precursor.Charge": 2,
        "Q.Value": q_values(),
        "PEP": q_values(),
        "Global.Q.Value": q_values(),
        "Protein.Q.Value": q_values(),
        "PG.Q.Value": q_values(),
        "Global.PG.Q.Value": q_values(),
        "GG.Q.Value": q_values(),
        "Translated.Q.Value": 0,
        "Proteotypic": 1,
        "Precursor.Quantity": quantity,
        "Precursor.Normalised": quantity,
        "Precursor.Translated": quantity,
        "Translated.Quality": "",
        "Ms1.Translated": quantity,
        "Quantity.Quality": rng.uniform(0.6, 1.0, m).round(4),
        "RT": rt.round(4),
        "RT.Start": (rt - 0.15).round(4),
        "RT.Stop": (rt + 0.15).round(4),
        "iRT": (rt * 2 - 40).round(4),
        "Predicted.RT": rt.round(4),
        "Predicted.iRT": (rt * 2 - 40).round(4),
        "Lib.Q.Value": 0,
        "Lib.PG.Q.Value": 0,
        "Ms1.Profile.Corr": rng.uniform(0.5, 1.0, m).round(4),
        "Ms1.Area": quantity,
        "Evidence": rng.uniform(1, 8, m).round(4),
        "Spectrum.Similarity": rng.uniform(0.3, 1.0, m).round(4),
        "Averagine": 1,
        "Mass.Evidence": rng.uniform(1, 4, m).round(4),
        "CScore": rng.uniform(0.9, 1.0, m).round(5),
        "Decoy.Evidence": 0,
        "Decoy.CScore": -1e7,
        "Fragment.Quant.Raw": "",
        "Fragment.Quant.Corrected": "",
        "Fragment.Correlations": "",
        "MS2.Scan": rng.integers(1000, 90000, m),
        "IM": 0,
        "iIM": 0,
        "Predicted.IM": 0,
        "Predicted.iIM": 0,
    }
    return pd.DataFrame(columns)
