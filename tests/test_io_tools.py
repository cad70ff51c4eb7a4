"""Readers of proteomics tool outputs, on subsets of real public files (tests/data/io/README.md).

Expected values come from the tool itself where the file carries them (DIA-NN's own pr/pg
matrices for the same search, MaxQuant's total ``Intensity`` column and its flags, Spectronaut's
FG.Quantity as the sum of its fragment areas, PEAKS' group areas), otherwise from pandas
applied directly to the file's cells.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import omixed
import omixed.io as io

DATA = Path(__file__).parent / "data" / "io"
MQ, DIANN, FP = DATA / "maxquant", DATA / "diann", DATA / "fragpipe"


def frame_of(adata) -> pd.DataFrame:
    return pd.DataFrame(adata.X, index=adata.obs_names, columns=adata.var_names)


def raw(path: Path, **kwargs) -> pd.DataFrame:
    """The file as pandas reads it, independently of omixed."""
    sep = "," if path.suffix == ".csv" else "\t"
    return pd.read_csv(path, sep=sep, low_memory=False, **kwargs)


def zero_nan(values) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return np.where(values == 0, np.nan, values)


EXPECTED_FORMATS = {
    "maxquant/peptides_lfq.txt": "MaxQuant peptides.txt",
    "maxquant/evidence_2_5_1.txt": "MaxQuant evidence.txt",
    "maxquant/evidence_short_rows.txt": "MaxQuant evidence.txt",
    "maxquant/maxdia_evidence.txt": "MaxQuant evidence.txt",
    "maxquant/proteinGroups.txt": "MaxQuant proteinGroups.txt",
    "maxquant/proteinGroups_short_rows.txt": "MaxQuant proteinGroups.txt",
    "diann/report_1_7.tsv": "DIA-NN report",
    "diann/report_1_8.tsv": "DIA-NN report",
    "diann/report_1_9.tsv": "DIA-NN report",
    "diann/report_2.parquet": "DIA-NN report",
    "diann/pr_matrix_1_8.tsv": "DIA-NN pr_matrix",
    "diann/pg_matrix_1_8.tsv": "DIA-NN pg_matrix",
    "diann/pg_matrix_2.tsv": "DIA-NN pg_matrix",
    "fragpipe/combined_ion.tsv": "FragPipe combined_ion",
    "fragpipe/combined_ion_9exp.tsv": "FragPipe combined_ion",
    "fragpipe/psm.tsv": "FragPipe psm",
    "fragpipe/combined_protein.tsv": "FragPipe combined_protein",
    "fragpipe/combined_protein_razor.tsv": "FragPipe combined_protein",
    "spectronaut/report.csv": "Spectronaut report",
    "alphadia/precursors_matrix.tsv": "AlphaDIA precursor matrix",
    "alphadia/pg_matrix.tsv": "AlphaDIA protein matrix",
    "sage/lfq.tsv": "Sage lfq.tsv",
    "peaks/lfq_dia_features.csv": "PEAKS LFQ table",
    "alphapept/results.csv": "AlphaPept results",
    "alphapept/results_proteins.csv": "AlphaPept protein table",
    "proteome_discoverer/PeptideGroups.txt": "Proteome Discoverer PeptideGroups",
    "proteome_discoverer/Proteins.txt": "Proteome Discoverer Proteins",
    "msstats/fragpipe_MSstats.csv": "MSstats format",
    "msstats/quantms_msstats_in.csv": "MSstats format",
}
PROTEIN_LEVEL = {name for name, fmt in EXPECTED_FORMATS.items() if "rotein" in fmt or "pg" in fmt}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", sorted(EXPECTED_FORMATS))
def test_every_real_file_loads_with_read_alone(name, tmp_path):
    """The shared shape: samples × features, text proteins, unique names, provenance."""
    adata = io.read(DATA / name)
    source = adata.uns["source"]
    assert source["format"].startswith(EXPECTED_FORMATS[name].split(" matrix")[0])
    assert source["path"] == str(DATA / name)
    assert source["rows_read"] >= source["rows_kept"] > 0
    assert source["rows_read"] - source["rows_kept"] == sum(source["rows_dropped"].values())
    assert adata.n_obs >= 1 and adata.n_vars >= 1
    assert adata.var_names.is_unique and adata.obs_names.is_unique
    protein = adata.var["protein"]
    assert protein.map(type).eq(str).all() and not protein.isin(["nan", ""]).any()
    assert (source["level"] == "protein") == (name in PROTEIN_LEVEL)
    if source["level"] != "protein":
        assert "peptide" in adata.var
    values = adata.X[np.isfinite(adata.X)]
    assert adata.X.dtype == np.float64 and (values > 0).all()  # raw scale, 0 read as missing
    adata.write_h5ad(tmp_path / "read.h5ad")  # uns["source"] survives h5ad: no None, no tuples
    assert omixed_read_h5ad(tmp_path / "read.h5ad").uns["source"]["format"] == source["format"]


def omixed_read_h5ad(path: Path):
    import anndata

    return anndata.read_h5ad(path)


# --------------------------------------------------------------------------- MaxQuant


def test_maxquant_peptides_lfq_columns_and_contaminant_flag():
    path = MQ / "peptides_lfq.txt"
    adata = io.read_maxquant(path)
    table = raw(path, dtype={"Reverse": str, "Potential contaminant": str})
    kept = table[table["Potential contaminant"].ne("+") & table["Reverse"].ne("+")]
    lfq = [c for c in table if c.startswith("LFQ intensity ")]
    assert adata.obs_names.tolist() == [c.removeprefix("LFQ intensity ") for c in lfq]
    assert adata.var_names.tolist() == kept["Sequence"].tolist()
    np.testing.assert_array_equal(adata.X, zero_nan(kept[lfq]).T)
    assert adata.uns["source"]["rows_dropped"] == {"flagged contaminant": 1}
    assert adata.var["protein"].tolist() == kept["Leading razor protein"].tolist()


def test_maxquant_protein_groups_against_maxquant_totals_and_flags():
    path = MQ / "proteinGroups.txt"
    table = raw(path, dtype=str, keep_default_na=False)
    # MaxQuant's "Intensity" column is the sum of the per-sample intensities
    intensities = io.read_maxquant(path, intensity="Intensity", drop_only_by_site=False)
    totals = table.set_index("Protein IDs").loc[intensities.var_names, "Intensity"].astype(float)
    np.testing.assert_allclose(np.nansum(intensities.X, axis=0), totals, rtol=1e-4)

    adata = io.read_maxquant(path)
    assert adata.uns["source"]["level"] == "protein"
    assert adata.obs_names.tolist()[:3] == ["Adnp_IP04", "Adnp_IP05", "Adnp_IP06"]
    # MaxQuant flags decoys '+' in Reverse and names them REV__; contaminants CON__
    reverse = table["Reverse"].eq("+")
    assert table.loc[reverse, "Protein IDs"].str.startswith("REV__").all()
    assert not adata.var_names.str.contains("REV__").any()
    assert not adata.var_names.str.startswith("CON__").any()
    dropped = adata.uns["source"]["rows_dropped"]
    assert dropped["flagged reverse"] == reverse.sum()
    all_flags = reverse | table["Potential contaminant"].eq("+")
    all_flags |= table["Only identified by site"].eq("+")
    assert adata.n_vars == (~all_flags).sum()
    kept = table[~all_flags].set_index("Protein IDs").loc[adata.var_names]
    lfq = [c for c in table if c.startswith("LFQ intensity ")]
    np.testing.assert_array_equal(adata.X, zero_nan(kept[lfq].astype(float)).T)


def test_maxquant_without_lfq_columns_falls_back_to_intensity(tmp_path):
    """LFQ off: MaxQuant writes no 'LFQ intensity' columns (derived here from the real file)."""
    table = raw(MQ / "proteinGroups.txt", dtype=str, keep_default_na=False)
    no_lfq = tmp_path / "proteinGroups.txt"
    table.drop(columns=[c for c in table if c.startswith("LFQ")]).to_csv(
        no_lfq, sep="\t", index=False
    )
    adata = io.read(no_lfq)
    expected = io.read_maxquant(MQ / "proteinGroups.txt", intensity="Intensity")
    pd.testing.assert_frame_equal(frame_of(adata), frame_of(expected))
    assert adata.uns["source"]["value"] == "Intensity"
    assert "LFQ was off" in adata.uns["source"]["notes"][0]


def test_maxquant_evidence_sums_like_pandas_pivot():
    path = MQ / "evidence_2_5_1.txt"
    table = raw(path)
    reference = table.pivot_table(
        index="Experiment", columns="Sequence", values="Intensity", aggfunc="sum"
    ).replace(0, np.nan)
    adata = io.read(path)
    assert adata.obs["raw_files"].tolist() == [
        f"LFQ_Orbitrap_DDA_Condition_{e}" for e in adata.obs_names
    ]
    ours = frame_of(adata).loc[reference.index, reference.columns]
    np.testing.assert_allclose(ours.to_numpy(), reference.to_numpy())


def test_maxquant_evidence_rows_without_trailing_fields_are_complete_rows():
    """MaxQuant omits trailing empty fields; the file's last line is such a row."""
    path = MQ / "evidence_short_rows.txt"
    lines = path.read_bytes().splitlines()
    assert lines[-1].count(b"\t") + 1 < lines[0].count(b"\t") + 1
    adata = io.read(path)
    last = raw(path).iloc[-1]
    assert adata[last["Experiment"], last["Sequence"]].X.item() > 0
    assert adata.uns["source"]["rows_read"] == len(lines) - 1


def test_maxquant_file_cut_mid_line_is_still_refused(tmp_path):
    data = (MQ / "evidence_short_rows.txt").read_bytes()
    cut = tmp_path / "evidence.txt"
    cut.write_bytes(data[: data.rindex(b"\n", 0, len(data) - 1) + 40])
    with pytest.raises(ValueError, match=r"looks truncated.*no line break"):
        io.read(cut)


def test_maxdia_experiments_of_several_runs_are_not_summed_silently():
    path = MQ / "maxdia_evidence.txt"
    with pytest.warns(UserWarning, match=r"'A' \(3 runs\).*sample='experiment'"):
        runs = io.read(path)
    table = raw(path)
    assert runs.obs_names.tolist() == list(pd.unique(table["Raw file"]))
    assert runs.obs["experiment"].tolist() == [n.split("Condition_")[1][0] for n in runs.obs_names]
    summed = io.read(path, sample="experiment")
    assert summed.obs_names.tolist() == ["A", "B"]
    by_hand = frame_of(runs).groupby(runs.obs["experiment"].to_numpy()).sum(min_count=1)
    pd.testing.assert_frame_equal(frame_of(summed), by_hand, check_names=False)


def test_maxquant_protein_groups_with_short_rows():
    path = MQ / "proteinGroups_short_rows.txt"
    adata = io.read(path)
    assert adata.uns["source"]["rows_read"] == 17
    assert adata.n_obs == 10 and adata.n_vars == 12
    assert sum(adata.uns["source"]["rows_dropped"].values()) == 5


def test_protein_table_is_ready_for_a_batch_model():
    """proteinGroups -> log -> tl.fit('~ condition + (1|batch)'), no peptide term needed."""
    adata = io.read(MQ / "proteinGroups.txt")
    omixed.pp.log_transform(adata)
    adata.obs["condition"] = [name.split("_")[0] for name in adata.obs_names]
    adata.obs["batch"] = ["b1", "b2", "b3"] * 3
    # 3 proteins have fewer than 4 values in these 9 samples: said once, each flagged.
    with pytest.warns(UserWarning, match="3 of 20 features were not fit"):
        omixed.tl.fit(adata, "~ condition + (1|batch)", progress=False)
    assert adata.uns["lmm"]["formula"] == "~ condition + (1|batch)"
    few = adata.var["lmm_reason"].str.startswith("fewer observations")
    assert few.sum() == 3 and (np.isfinite(adata.X).sum(axis=0)[few.to_numpy()] < 4).all()


# --------------------------------------------------------------------------- DIA-NN


def test_diann_report_reproduces_diann_own_pr_matrix():
    matrix = io.read(DIANN / "pr_matrix_1_8.tsv")
    report = io.read_diann(DIANN / "report_1_8.tsv", level="precursor")
    assert matrix.obs_names.tolist() == sorted(report.obs_names, key=matrix.obs_names.get_loc)
    ours = frame_of(report).reindex(index=matrix.obs_names, columns=matrix.var_names)
    np.testing.assert_allclose(ours.to_numpy(), matrix.X, rtol=1e-5)  # matrix: 6 digits
    assert matrix.obs["file"].iloc[0].startswith("/scratch/cpanse/PXD028735/dia/")


def test_diann_report_protein_level_reproduces_diann_own_pg_matrix():
    matrix = io.read(DIANN / "pg_matrix_1_8.tsv")
    report = io.read_diann(DIANN / "report_1_8.tsv", level="protein")
    assert report.uns["source"]["value"] == "PG.MaxLFQ"
    ours = frame_of(report).reindex(index=matrix.obs_names, columns=matrix.var_names)
    observed = np.isfinite(ours.to_numpy())
    assert observed.sum() > 100
    np.testing.assert_allclose(ours.to_numpy()[observed], matrix.X[observed], rtol=1e-5)


def test_diann_pr_matrix_peptide_level_sums_precursors():
    path = DIANN / "pr_matrix_1_8.tsv"
    peptides = io.read_diann(path, level="peptide")
    table = raw(path)
    runs = [c for c in table if c.startswith("/")]
    summed = table.groupby(["Protein.Group", "Stripped.Sequence"], sort=False)[runs].sum(
        min_count=1
    )
    assert peptides.n_vars == len(summed)
    np.testing.assert_allclose(peptides.X, summed.to_numpy().T)


def test_diann_1_7_report_file_names_and_empty_protein_groups():
    path = DIANN / "report_1_7.tsv"
    table = raw(path)
    assert "Run" not in table
    with pytest.warns(UserWarning, match=r"6 row\(s\) without a protein group"):
        adata = io.read(path, level="precursor")
    assert adata.obs_names.tolist() == ["KL_Try_001_a", "KL_Try_001_b", "KL_Try_001_c"]
    assert adata.obs["file"].iloc[0] == r"D:\Raw\PXD010529\KL_Try_001_a.mzML.dia"
    assert adata.uns["source"]["rows_dropped"] == {
        "no protein group ('Protein.Group' empty)": table["Protein.Group"].isna().sum()
    }
    kept = table[table["Protein.Group"].notna()]
    assert set(adata.var_names) == set(kept["Precursor.Id"])
    assert not adata.var["protein"].eq("nan").any()


@pytest.mark.parametrize(
    ("option", "column", "threshold"),
    [
        ("q_value", "Q.Value", 0.001),
        ("global_q_value", "Global.Q.Value", 0.0005),
        ("lib_q_value", "Lib.Q.Value", 0.0001),
        ("global_pg_q_value", "Global.PG.Q.Value", 0.0005),
        ("lib_pg_q_value", "Lib.PG.Q.Value", 0.0005),
        ("pg_q_value", "PG.Q.Value", 0.001),
    ],
)
def test_diann_q_value_filters(option, column, threshold):
    path = DIANN / "report_1_9.tsv"
    table = raw(path)
    adata = io.read_diann(path, level="precursor", **{"q_value": None, option: threshold})
    passing = table[table[column] <= threshold]
    assert 0 < len(passing) < len(table)
    assert adata.uns["source"]["rows_dropped"] == {
        f"{column} > {threshold}": len(table) - len(passing)
    }
    assert set(adata.var_names) == set(passing["Precursor.Id"])


def test_diann_2_parquet_report():
    path = DIANN / "report_2.parquet"
    table = pd.read_parquet(path)
    with pytest.warns(UserWarning, match="7 row"):
        adata = io.read(path, level="precursor")
    expected = table[table["Protein.Group"].ne("") & (table["Q.Value"] <= 0.01)]
    assert adata.uns["source"]["rows_kept"] == len(expected)
    ours = frame_of(adata)
    for run, precursor, value in expected[["Run", "Precursor.Id", "Precursor.Normalised"]].values:
        assert ours.loc[run, precursor] == value


def test_diann_pg_matrix_contaminants():
    path = DIANN / "pg_matrix_2.tsv"
    adata = io.read(path)
    n_cont = raw(path)["Protein.Group"].str.startswith("Cont_").sum()
    assert n_cont > 0 and adata.uns["source"]["rows_dropped"] == {"contaminant": n_cont}
    assert io.read(path, drop_contaminants=False).n_vars == adata.n_vars + n_cont
    with pytest.raises(ValueError, match="main report only"):
        io.read(path, lib_pg_q_value=0.01)


# --------------------------------------------------------------------------- FragPipe


def test_fragpipe_combined_ion_and_peptide_sums():
    path = FP / "combined_ion.tsv"
    table = raw(path)
    columns = [c for c in table if c.endswith(" Intensity") and "MaxLFQ" not in c]
    precursors = io.read(path)
    np.testing.assert_array_equal(precursors.X, zero_nan(table[columns]).T)
    assert precursors.obs_names.tolist() == [c.removesuffix(" Intensity") for c in columns]
    peptides = io.read(path, level="peptide")
    summed = table.replace(0, np.nan).groupby(["Protein", "Peptide Sequence"], sort=False)
    np.testing.assert_allclose(peptides.X, summed[columns].sum(min_count=1).to_numpy().T)


def test_fragpipe_psm_runs_and_decoys():
    path = FP / "psm.tsv"
    table = raw(path)
    adata = io.read(path)
    assert adata.obs_names.tolist() == ["A1"]
    n_decoy = table["Protein"].str.startswith("rev_").sum()
    assert n_decoy == 8 and adata.uns["source"]["rows_dropped"] == {"decoy": n_decoy}
    # this FragPipe run wrote no MS1 intensities on its PSMs (all 0): every value is missing
    assert table["Intensity"].eq(0).all() and np.isnan(adata.X).all()


def test_fragpipe_combined_protein_maxlfq_and_contaminants():
    path = FP / "combined_protein.tsv"
    table = raw(path)
    adata = io.read(path)
    assert adata.uns["source"]["value"] == "MaxLFQ Intensity"
    contaminant = table["Protein"].str.startswith("contam_")
    assert adata.uns["source"]["rows_dropped"] == {"contaminant": contaminant.sum()}
    kept = table[~contaminant].set_index("Protein").loc[adata.var_names]
    columns = [f"{s} MaxLFQ Intensity" for s in adata.obs_names]
    np.testing.assert_array_equal(adata.X, zero_nan(kept[columns]).T)


def test_fragpipe_older_protein_table_uses_razor_intensity():
    adata = io.read(FP / "combined_protein_razor.tsv")
    assert adata.uns["source"]["value"] == "Razor Intensity"
    assert adata.obs_names.tolist() == [f"S{i}" for i in range(1, 21)]


# --------------------------------------------------------------------------- other tools


def test_spectronaut_precursor_quantity_is_its_fragment_sum():
    path = DATA / "spectronaut" / "report.csv"
    default = io.read(path)
    from_fragments = io.read(path, quantity="F.NormalizedPeakArea")
    # equal up to the 15 digits the file was written with
    pd.testing.assert_frame_equal(frame_of(default), frame_of(from_fragments), rtol=1e-7)
    assert default.obs["condition"].tolist() == ["A", "A", "A", "B", "B", "B"]
    table = raw(path)
    assert default.var_names.tolist() == list(pd.unique(table["EG.PrecursorId"]))
    peptides = io.read(path, level="peptide")
    assert peptides.n_vars == table["PEP.StrippedSequence"].nunique()


def test_sage_q_values_and_intensities():
    path = DATA / "sage" / "lfq.tsv"
    table = raw(path)
    strict = io.read(path, q_value=0.001)
    passing = table[table["q_value"] <= 0.001]
    assert strict.n_vars == len(passing) < len(table)
    files = [c for c in table if c.endswith(".mzML.gz")]
    np.testing.assert_array_equal(strict.X, zero_nan(passing[files]).T)
    assert strict.obs_names.tolist() == [f.removesuffix(".mzML.gz") for f in files]


def test_peaks_normalized_areas_match_its_group_areas():
    """PEAKS writes each group's area rounded to 3 significant digits (one sample per group)."""
    path = DATA / "peaks" / "lfq_dia_features.csv"
    adata = io.read(path)
    table = raw(path)
    table.index = table["Peptide"] + "/" + table["z"].astype(str)
    kept = table.loc[adata.var_names]
    groups = kept[[f"Group {i} Normalized Area" for i in range(1, 7)]].to_numpy(float)
    rounded = np.vectorize(lambda v: float(f"{v:.3g}") if np.isfinite(v) else 0.0)(adata.X.T)
    np.testing.assert_allclose(rounded, groups, rtol=1e-12)
    contaminants = table["Accession"].str.contains(r"(?:^|;)(?:CON__|contam_|cRAP-|Cont_)")
    assert adata.uns["source"]["rows_dropped"] == {"contaminant": contaminants.sum()}


def test_alphadia_matrices():
    precursors = io.read(DATA / "alphadia" / "precursors_matrix.tsv")
    table = raw(DATA / "alphadia" / "precursors_matrix.tsv")
    np.testing.assert_array_equal(precursors.X, zero_nan(table.iloc[:, 1:7]).T)
    assert precursors.uns["source"]["notes"] == ["no 'pg' column: protein taken from 'genes'"]
    proteins = io.read(DATA / "alphadia" / "pg_matrix.tsv")
    n_cont = raw(DATA / "alphadia" / "pg_matrix.tsv")["pg"].str.contains("Cont_").sum()
    assert proteins.uns["source"]["rows_dropped"] == {"contaminant": n_cont}


def test_alphapept_results_decoys_and_repeated_precursors():
    path = DATA / "alphapept" / "results.csv"
    table = raw(path)
    adata = io.read(path)
    targets = table[~table["decoy"]]
    assert adata.uns["source"]["rows_dropped"] == {"decoy": int(table["decoy"].sum())}
    summed = targets.pivot_table(
        index="shortname",
        columns=["sequence", "charge"],
        values="ms1_int_sum_apex_dn",
        aggfunc="sum",
    )
    for (sequence, charge), column in summed.items():
        ours = frame_of(adata)[f"{sequence}/{int(charge)}"]
        np.testing.assert_allclose(ours.loc[column.index], column.to_numpy())
    proteins = io.read(DATA / "alphapept" / "results_proteins.csv")
    assert proteins.obs_names.tolist() == ["A", "B"]


def test_proteome_discoverer_abundances():
    path = DATA / "proteome_discoverer" / "PeptideGroups.txt"
    table = raw(path)
    adata = io.read(path)
    assert adata.obs_names.tolist() == [f"F{i}" for i in range(1, 7)]
    assert adata.obs["label"].tolist()[0] == "Sample, ConditionA"
    kept = table[~table["Contaminant"]]
    assert adata.uns["source"]["rows_dropped"] == {"contaminant": int(table["Contaminant"].sum())}
    columns = [f"Abundance: F{i}: Sample, Condition{'A' if i < 4 else 'B'}" for i in range(1, 7)]
    np.testing.assert_array_equal(adata.X, zero_nan(kept[columns]).T)
    normalized = io.read(path, abundance="normalized")
    assert normalized.uns["source"]["value"] == "normalized abundance"
    proteins = io.read(DATA / "proteome_discoverer" / "Proteins.txt")
    assert proteins.n_obs == 27 and proteins.uns["source"]["level"] == "protein"


def test_msstats_format_from_fragpipe_and_quantms():
    path = DATA / "msstats" / "fragpipe_MSstats.csv"
    table = raw(path)
    adata = io.read(path)
    contam = table["ProteinName"].str.startswith("contam_")
    assert adata.uns["source"]["rows_dropped"] == {"contaminant": int(contam.sum())}
    kept = table[~contam]
    for row in kept.dropna(subset="Intensity").itertuples():
        key = f"{row.PeptideSequence}/{row.PrecursorCharge}"
        assert adata[row.Run, key].X.item() == row.Intensity
    assert set(adata.obs["condition"]) == set(kept["Condition"])
    quantms = io.read(DATA / "msstats" / "quantms_msstats_in.csv")
    assert quantms.obs["reference"].str.endswith(".mzML").all()


# --------------------------------------------------------------------------- read()


def test_read_names_formats_and_columns_when_nothing_matches(tmp_path):
    path = tmp_path / "mystery.tsv"
    path.write_text("gene\tcount_a\tcount_b\nX\t1\t2\n")
    with pytest.raises(ValueError, match=r"Recognised: .*MaxQuant peptides.txt.*'gene', 'count_a'"):
        io.read(path)


def test_read_refuses_unknown_options():
    with pytest.raises(TypeError, match=r"read_sage, which has no option\(s\) 'kind'"):
        io.read(DATA / "sage" / "lfq.tsv", kind="peptides")


def test_header_only_and_empty_files_are_errors_naming_the_file(tmp_path):
    header = (DATA / "sage" / "lfq.tsv").read_text().splitlines()[0]
    only = tmp_path / "lfq.tsv"
    only.write_text(header + "\n")
    with pytest.raises(ValueError, match=r"lfq.tsv has a header but no data rows"):
        io.read(only)
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(ValueError, match=r"empty.tsv is empty"):
        io.read(tmp_path / "empty.tsv")


def test_filters_that_leave_nothing_are_errors_not_empty_data():
    with pytest.raises(ValueError, match=r"no precursor left after filtering.*Q.Value > 1e-09"):
        io.read(DIANN / "report_1_9.tsv", level="precursor", q_value=1e-9)


def test_parquet_that_is_not_parquet(tmp_path):
    fake = tmp_path / "report.parquet"
    fake.write_text("File.Name\tRun\n")
    with pytest.raises(ValueError, match=r"could not read .*report.parquet as parquet"):
        io.read(fake)
