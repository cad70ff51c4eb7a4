"""Readers in omixed.io, checked against values computed by hand from the files in tests/data/io.

The test files use the exact column layout of each tool (MaxQuant 2.x peptides.txt/evidence.txt,
DIA-NN 1.8 and 2.x report.tsv), including irrelevant columns, '+' flags and zero intensities.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import omixed.io as io
from omixed.io._long import unique_names
from omixed.io._maxquant import _intensity_prefixes

DATA = Path(__file__).parent / "data" / "io"
PEPTIDES = DATA / "maxquant_peptides.txt"
EVIDENCE = DATA / "maxquant_evidence.txt"
DIANN = DATA / "diann_report.tsv"
DIANN2 = DATA / "diann2_report.tsv"
NAN = np.nan


def frame_of(adata) -> pd.DataFrame:
    return pd.DataFrame(adata.X, index=adata.obs_names, columns=adata.var_names)


def rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy a tab-separated test file through ``edit(DataFrame) -> DataFrame``."""
    frame = pd.read_csv(src, sep="\t", dtype=str, keep_default_na=False)
    edit(frame).to_csv(dst, sep="\t", index=False)
    return dst


# --------------------------------------------------------------------------- MaxQuant peptides.txt


def test_maxquant_peptides_lfq_by_hand():
    adata = io.read_maxquant(PEPTIDES)
    expected = pd.DataFrame(
        {
            "AAGLLSTYR": [1.0e6, 1.2e6, NAN],  # LFQ 0 in B1 -> missing
            "VLSPADKTNVK": [2.5e6, NAN, 3.0e6],
            "EGHLSPDIVAEQK": [NAN, NAN, NAN],  # never quantified: kept, all missing
            "TVAAPSVFIFPPSDEQLK": [4.0e6, 5.0e6, 6.0e6],
        },
        index=["A1", "A2", "B1"],
    )
    pd.testing.assert_frame_equal(frame_of(adata), expected)
    assert adata.X.dtype == np.float64
    # contaminant (LVNELTEFAK) and reverse (QTALVELVK) dropped
    assert adata.var["protein"].tolist() == ["P12345", "P12345", "P67890", "P01834"]
    assert adata.var.loc["AAGLLSTYR", "proteins"] == "P12345;P12346"
    assert adata.var.loc["AAGLLSTYR", "genes"] == "ALB1;ALB2"
    assert adata.var["peptide"].tolist() == adata.var_names.tolist()
    assert adata.uns["source"]["rows_dropped"] == {"flagged reverse": 1, "flagged contaminant": 1}


def test_maxquant_keeps_flagged_rows_on_request():
    adata = io.read_maxquant(PEPTIDES, drop_contaminants=False, drop_reverse=False)
    assert adata.n_vars == 6
    assert adata.var_names[adata.var["contaminant"]].tolist() == ["LVNELTEFAK"]
    assert adata.var_names[adata.var["reverse"]].tolist() == ["QTALVELVK"]
    assert adata.var["reverse"].dtype == bool
    np.testing.assert_array_equal(adata[:, "LVNELTEFAK"].X.ravel(), [5.0e7, 5.1e7, 5.2e7])

    only_reverse_dropped = io.read_maxquant(PEPTIDES, drop_contaminants=False)
    assert "LVNELTEFAK" in only_reverse_dropped.var_names
    assert "QTALVELVK" not in only_reverse_dropped.var_names


def test_maxquant_raw_intensity_prefix_ignores_total_column():
    adata = io.read_maxquant(PEPTIDES, intensity="Intensity")
    # "Intensity" (the total over samples) is not a sample; "Intensity A1" etc. are
    assert adata.obs_names.tolist() == ["A1", "A2", "B1"]
    np.testing.assert_array_equal(adata[:, "AAGLLSTYR"].X.ravel(), [9.0e5, 1.1e6, 5.0e4])
    np.testing.assert_array_equal(adata[:, "VLSPADKTNVK"].X.ravel(), [2.4e6, NAN, 2.9e6])


def test_maxquant_without_lfq_reads_intensity_and_lists_prefixes(tmp_path):
    no_lfq = rewrite(
        PEPTIDES,
        tmp_path / "peptides.txt",
        lambda f: f.drop(columns=[c for c in f if c.startswith("LFQ")]),
    )
    adata = io.read_maxquant(no_lfq)
    pd.testing.assert_frame_equal(
        frame_of(adata), frame_of(io.read_maxquant(PEPTIDES, intensity="Intensity"))
    )
    assert adata.uns["source"]["value"] == "Intensity"
    with pytest.raises(KeyError, match=r"no 'iBAQ <sample>' columns.*'Intensity'"):
        io.read_maxquant(no_lfq, intensity="iBAQ")


def test_maxquant_old_contaminant_column_name(tmp_path):
    old = rewrite(
        PEPTIDES,
        tmp_path / "peptides.txt",
        lambda f: f.rename(columns={"Potential contaminant": "Contaminant"}),
    )
    new, renamed = io.read_maxquant(PEPTIDES), io.read_maxquant(old)
    assert renamed.var_names.tolist() == new.var_names.tolist()
    np.testing.assert_array_equal(renamed.X, new.X)


def test_maxquant_missing_flag_column_is_an_error_only_when_dropping(tmp_path):
    no_reverse = rewrite(PEPTIDES, tmp_path / "p.txt", lambda f: f.drop(columns="Reverse"))
    with pytest.raises(KeyError, match=r"'Reverse'.*drop_reverse=False"):
        io.read_maxquant(no_reverse)
    adata = io.read_maxquant(no_reverse, drop_reverse=False)
    assert "reverse" not in adata.var
    assert "QTALVELVK" in adata.var_names


def test_maxquant_missing_sequence_column(tmp_path):
    broken = rewrite(PEPTIDES, tmp_path / "p.txt", lambda f: f.drop(columns="Sequence"))
    with pytest.raises(KeyError, match=r"missing column 'Sequence'"):
        io.read_maxquant(broken, kind="peptides")
    with pytest.raises(ValueError, match=r"not a MaxQuant peptides.txt, evidence.txt or prot"):
        io.read_maxquant(broken)


def test_maxquant_labelled_channels_need_explicit_prefix(tmp_path):
    def silac(frame):
        for sample in ("A1", "A2", "B1"):
            frame[f"Intensity L {sample}"] = frame[f"Intensity {sample}"]
            frame[f"Intensity H {sample}"] = "0"
        return frame

    labelled = rewrite(PEPTIDES, tmp_path / "p.txt", silac)
    with pytest.raises(ValueError, match=r"labelled channels"):
        io.read_maxquant(labelled, intensity="Intensity")
    light = io.read_maxquant(labelled, intensity="Intensity L")
    assert light.obs_names.tolist() == ["A1", "A2", "B1"]
    assert np.isnan(io.read_maxquant(labelled, intensity="Intensity H").X).all()


def test_intensity_prefixes():
    columns = ["Intensity", "Intensity A", "LFQ intensity A", "Reporter intensity 1", "iBAQ A"]
    assert _intensity_prefixes(columns) == ["Intensity", "LFQ intensity", "Reporter intensity"]


def test_maxquant_kind_detection():
    assert io.read_maxquant(PEPTIDES).uns["source"]["format"] == "MaxQuant peptides.txt"
    assert io.read_maxquant(EVIDENCE).uns["source"]["format"] == "MaxQuant evidence.txt"
    with pytest.raises(ValueError, match=r"looks like MaxQuant evidence.txt"):
        io.read_maxquant(EVIDENCE, kind="peptides")
    with pytest.raises(ValueError, match=r"kind must be"):
        io.read_maxquant(PEPTIDES, kind="protein_groups")


def test_maxquant_truncated_file(tmp_path):
    data = PEPTIDES.read_bytes()
    cut = tmp_path / "peptides.txt"
    cut.write_bytes(data[: len(data) - 40])  # cut inside the last row
    with pytest.raises(ValueError, match=r"truncated"):
        io.read_maxquant(cut)


def test_maxquant_corrupt_file(tmp_path):
    data = PEPTIDES.read_bytes()
    bad = tmp_path / "peptides.txt"
    bad.write_bytes(data[:900] + b"\xff\xfe" + data[902:])  # not UTF-8
    with pytest.raises(ValueError, match=r"could not parse .*peptides.txt"):
        io.read_maxquant(bad)
    bad.write_bytes(data.replace(b"\t1200000\t", b"\t1.2e6x\t"))
    with pytest.raises(ValueError, match=r"data row 1, column 'LFQ intensity A2': '1.2e6x'"):
        io.read_maxquant(bad)


# --------------------------------------------------------------------------- MaxQuant evidence.txt


def test_maxquant_evidence_sum_by_hand():
    adata = io.read_maxquant(EVIDENCE, kind="evidence")
    expected = pd.DataFrame(
        {
            # A1: charge 2 (fraction 1) + charge 3 (fraction 2); B1: intensity 0;
            # A2: 800000 + empty (MSMS row) + 300000
            "AAGLLSTYR": [1.0e6 + 2.5e5, NAN, 8.0e5 + 3.0e5],
            # A1: unmodified + N-term acetylated form
            "VLSPADKTNVK": [3.0e6 + 5.0e5, 2.0e6, NAN],
            "EGHLSPDIVAEQK": [NAN, NAN, NAN],  # only zero intensities
        },
        index=["A1", "B1", "A2"],  # order of first appearance
    )
    pd.testing.assert_frame_equal(frame_of(adata), expected)
    assert adata.var.loc["AAGLLSTYR", "protein"] == "P12345"
    assert "genes" not in adata.var  # this evidence.txt has no Gene names column


def test_maxquant_evidence_matches_pandas_pivot():
    """An independent computation: pandas' pivot_table over the rows that pass the filters."""
    raw = pd.read_csv(EVIDENCE, sep="\t")
    kept = raw[raw["Reverse"].ne("+") & raw["Potential contaminant"].ne("+")]
    kept = kept[kept["Intensity"] > 0]
    for aggregate in ("sum", "max"):
        reference = kept.pivot_table(
            index="Experiment", columns="Sequence", values="Intensity", aggfunc=aggregate
        )
        adata = io.read_maxquant(EVIDENCE, kind="evidence", aggregate=aggregate)
        ours = frame_of(adata).loc[reference.index, reference.columns]
        np.testing.assert_allclose(ours.to_numpy(), reference.to_numpy())


def test_maxquant_evidence_max():
    adata = io.read_maxquant(EVIDENCE, kind="evidence", aggregate="max")
    assert adata[:, "AAGLLSTYR"].X.ravel().tolist()[::2] == [1.0e6, 8.0e5]
    assert adata["A1", "VLSPADKTNVK"].X.item() == 3.0e6
    with pytest.raises(ValueError, match=r"aggregate must be"):
        io.read_maxquant(EVIDENCE, kind="evidence", aggregate="mean")


def test_maxquant_evidence_without_experiment_uses_raw_files(tmp_path):
    no_exp = rewrite(EVIDENCE, tmp_path / "evidence.txt", lambda f: f.drop(columns="Experiment"))
    adata = io.read_maxquant(no_exp, kind=None)
    assert adata.obs_names.tolist() == [
        "run_A1_f1",
        "run_A1_f2",
        "run_B1_f1",
        "run_A2_f1",
        "run_A2_f2",
    ]
    assert adata["run_A1_f1", "AAGLLSTYR"].X.item() == 1.0e6
    assert adata["run_A2_f1", "AAGLLSTYR"].X.item() == 8.0e5  # 800000 + empty


# --------------------------------------------------------------------------- DIA-NN


def diann_expected() -> pd.DataFrame:
    """Peptide level, Precursor.Normalised, Q.Value <= 0.01 (worked out from the report rows)."""
    return pd.DataFrame(
        {
            # S1: charge 2 (1000) + charge 3 (200); S2: charge 3 has Q 0.02 -> only 1500;
            # S3: quantity 0 -> missing
            "AEFAEVSK": [1200.0, 1500.0, NAN],
            "YLYEIAR": [800.0, 900.0, 1000.0],
            "VGVNGFGR": [500.0, 600.0, 700.0],
            # LISWYDNEFGYSNR (Q 0.03) filtered out; M-oxidised precursor is its own sequence
            "MYLYEIAR": [NAN, NAN, 300.0],
        },
        index=["S1", "S2", "S3"],
    )


def test_diann_peptide_level_by_hand():
    adata = io.read_diann(DIANN)
    pd.testing.assert_frame_equal(frame_of(adata), diann_expected())
    assert adata.var.loc["VGVNGFGR", "protein"] == "P04406"
    assert adata.var.loc["VGVNGFGR", "protein_ids"] == "P04406;P04406-2"
    assert adata.var.loc["VGVNGFGR", "genes"] == "GAPDH"
    assert adata.var.loc["AEFAEVSK", "protein_names"] == "ALBU_HUMAN"
    assert adata.uns["source"]["rows_kept"] == 11


def test_diann_q_value_thresholds():
    loose = io.read_diann(DIANN, q_value=0.05)
    assert loose["S2", "AEFAEVSK"].X.item() == 1500.0 + 300.0
    assert loose[:, "LISWYDNEFGYSNR"].X.ravel().tolist()[0] == 80.0
    unfiltered = io.read_diann(DIANN, q_value=None)
    assert unfiltered.n_vars == 5
    # PG.Q.Value of GAPDH is 0.03 in S1/S2 and 0.004 in S3
    strict_pg = io.read_diann(DIANN, pg_q_value=0.01)
    np.testing.assert_array_equal(strict_pg[:, "VGVNGFGR"].X.ravel(), [NAN, NAN, 700.0])
    pd.testing.assert_frame_equal(
        frame_of(strict_pg).drop(columns="VGVNGFGR"), diann_expected().drop(columns="VGVNGFGR")
    )


def test_diann_filtering_everything_out_is_an_error():
    with pytest.raises(ValueError, match=r"no peptide left after filtering \(13 Q.Value > 0.0001"):
        io.read_diann(DIANN, q_value=0.0001)


def test_diann_raw_quantity():
    adata = io.read_diann(DIANN, quantity="Precursor.Quantity")
    assert adata["S1", "AEFAEVSK"].X.item() == 1100.0 + 210.0


def test_diann_precursor_level():
    adata = io.read_diann(DIANN, level="precursor")
    assert adata.var_names.tolist() == [
        "AEFAEVSK2",
        "AEFAEVSK3",
        "YLYEIAR2",
        "VGVNGFGR2",
        "M(UniMod:35)YLYEIAR2",
    ]
    np.testing.assert_array_equal(adata[:, "AEFAEVSK3"].X.ravel(), [200.0, NAN, NAN])
    np.testing.assert_array_equal(adata[:, "AEFAEVSK2"].X.ravel(), [1000.0, 1500.0, NAN])
    assert adata.var.loc["M(UniMod:35)YLYEIAR2", "peptide"] == "MYLYEIAR"
    assert adata.var["charge"].tolist() == [2, 3, 2, 2, 2]
    # summing precursors gives the peptide level
    peptide = frame_of(io.read_diann(DIANN))
    summed = frame_of(adata).T.groupby(adata.var["peptide"].to_numpy()).sum(min_count=1).T
    pd.testing.assert_frame_equal(summed[peptide.columns], peptide)


def test_diann_2x_layout_matches_18_and_drops_decoys():
    new, old = io.read_diann(DIANN2), io.read_diann(DIANN)
    pd.testing.assert_frame_equal(frame_of(new), frame_of(old))
    assert "KSVEAFEA" not in io.read_diann(DIANN2, q_value=None).var_names  # Decoy == 1


def test_diann_missing_columns(tmp_path):
    with pytest.raises(KeyError, match=r"'Ms1.Normalised'"):
        io.read_diann(DIANN, quantity="Ms1.Normalised")  # a 2.x column, absent in 1.8
    no_pg_q = rewrite(DIANN, tmp_path / "r.tsv", lambda f: f.drop(columns="PG.Q.Value"))
    assert io.read_diann(no_pg_q).n_vars == 4
    with pytest.raises(KeyError, match=r"'PG.Q.Value'"):
        io.read_diann(no_pg_q, pg_q_value=0.01)
    with pytest.raises(ValueError, match=r"level must be one of"):
        io.read_diann(DIANN, level="fragment")
    with pytest.raises(ValueError, match=r"'PG.MaxLFQ' differs between rows"):
        io.read_diann(DIANN, level="protein")  # these hand-made rows are not DIA-NN's


def test_diann_duplicated_precursor_is_an_error(tmp_path):
    doubled = rewrite(DIANN, tmp_path / "r.tsv", lambda f: pd.concat([f, f.iloc[[0]]]))
    with pytest.raises(ValueError, match=r"duplicated .*S1, AEFAEVSK2"):
        io.read_diann(doubled, level="precursor")


def test_diann_parquet_report(tmp_path):
    pytest.importorskip("pyarrow")
    parquet = tmp_path / "report.parquet"
    pd.read_csv(DIANN2, sep="\t").to_parquet(parquet)
    pd.testing.assert_frame_equal(frame_of(io.read_diann(parquet)), diann_expected())


def test_unique_names_qualifies_shared_sequences():
    names = unique_names(
        pd.Series(["AAK", "CCK", "AAK"]), pd.Series(["P1", "P2", "P3"]), source="test"
    )
    assert names.tolist() == ["AAK|P1", "CCK", "AAK|P3"]


# --------------------------------------------------------------------------- generic long table


def long_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample": ["s1", "s1", "s2", "s2", "s3"],
            "protein": ["P1", "P1", "P1", "P2", "P2"],
            "peptide": ["AAK", "CCK", "AAK", "DDK", "DDK"],
            "value": [1.0, 2.0, 0.0, 4.0, 5.0],
            "other": ["x"] * 5,
        }
    )


def test_read_long_dataframe():
    adata = io.read_long(long_frame())
    expected = pd.DataFrame(
        {"AAK": [1.0, NAN, NAN], "CCK": [2.0, NAN, NAN], "DDK": [NAN, 4.0, 5.0]},
        index=["s1", "s2", "s3"],
    )
    pd.testing.assert_frame_equal(frame_of(adata), expected)
    assert adata.var["protein"].tolist() == ["P1", "P1", "P2"]
    kept_zero = io.read_long(long_frame(), zero_as_missing=False)
    assert kept_zero["s2", "AAK"].X.item() == 0.0


def test_read_long_duplicates(tmp_path):
    frame = pd.concat([long_frame(), long_frame().iloc[[0, 3]].assign(value=[10.0, 20.0])])
    with pytest.raises(ValueError, match=r"2 duplicated .*s1, AAK.*s2, DDK.*aggregate="):
        io.read_long(frame)
    summed = io.read_long(frame, aggregate="sum")
    assert summed["s1", "AAK"].X.item() == 11.0
    assert summed["s2", "DDK"].X.item() == 24.0
    assert io.read_long(frame, aggregate="median")["s1", "AAK"].X.item() == 5.5
    with pytest.raises(ValueError, match=r"aggregate must be"):
        io.read_long(frame, aggregate="first")


def test_read_long_file_with_own_column_names(tmp_path):
    path = tmp_path / "long.csv"
    long_frame().rename(
        columns={"sample": "Run", "protein": "Accession", "peptide": "Seq", "value": "Area"}
    ).to_csv(path, index=False)
    adata = io.read_long(path, sample="Run", protein="Accession", peptide="Seq", value="Area")
    pd.testing.assert_frame_equal(frame_of(adata), frame_of(io.read_long(long_frame())))
    no_protein = io.read_long(str(path), sample="Run", protein=None, peptide="Seq", value="Area")
    assert "protein" not in no_protein.var
    with pytest.raises(KeyError, match=r"missing column 'value'.*'Area'"):
        io.read_long(path, sample="Run", protein=None, peptide="Seq")


def test_read_long_bad_input():
    ambiguous = long_frame().assign(protein=["P1", "P1", "P9", "P2", "P2"])
    with pytest.raises(ValueError, match=r"'AAK'.*more than one 'protein'"):
        io.read_long(ambiguous)
    with pytest.raises(ValueError, match=r"lack a value"):
        io.read_long(long_frame().assign(sample=["s1", None, "s2", "s2", "s3"]))
    with pytest.raises(ValueError, match=r"row 4, column 'value': 'high'"):
        io.read_long(long_frame().assign(value=[1, 2, 3, 4, "high"]))


# --------------------------------------------------------------------------- wide table


def test_read_table_by_hand():
    adata = io.read_table(DATA / "wide.tsv", annotation_cols=["gene"])
    expected = pd.DataFrame(
        {
            "AAGLLSTYR": [1.5e6, NAN, 2.0e6],  # 0 -> missing
            "VLSPADKTNVK": [3.0e6, 3.3e6, NAN],  # NA -> missing
            "VGVNGFGR": [5.0e5, 6.0e5, 7.0e5],
        },
        index=["S1", "S2", "S3"],
    )
    pd.testing.assert_frame_equal(frame_of(adata), expected, check_names=False)
    assert adata.var["gene"].tolist() == ["ALB", "ALB", "GAPDH"]
    assert (
        io.read_table(DATA / "wide.tsv", annotation_cols=["gene"], zero_as_missing=False)[
            "S2", "AAGLLSTYR"
        ].X.item()
        == 0.0
    )


def test_read_table_orientations_agree(tmp_path):
    wide = pd.read_csv(DATA / "wide.tsv", sep="\t", index_col=0).drop(columns="gene")
    transposed = tmp_path / "samples.csv"
    wide.T.rename_axis("sample").to_csv(transposed)
    by_sample = io.read_table(transposed, orientation="samples_x_features")
    by_feature = io.read_table(DATA / "wide.tsv", annotation_cols=["gene"])
    pd.testing.assert_frame_equal(frame_of(by_sample), frame_of(by_feature), check_names=False)
    gz = tmp_path / "samples.csv.gz"
    gz.write_bytes(gzip.compress(transposed.read_bytes()))
    np.testing.assert_array_equal(
        io.read_table(gz, orientation="samples_x_features").X, by_sample.X
    )


def test_read_table_separator_guessed_from_header(tmp_path):
    path = tmp_path / "matrix.dat"
    path.write_text("id;S1;S2\nf1;1,5;2\nf2;3;4\n")
    with pytest.raises(ValueError, match=r"row 'f1', column 'S1': '1,5'"):
        io.read_table(path)
    path.write_text("id,S1,S2\nf1,1.5,2\nf2,3,4\n")
    np.testing.assert_array_equal(io.read_table(path).X, [[1.5, 3.0], [2.0, 4.0]])


@pytest.mark.parametrize(
    ("text", "kwargs", "error", "match"),
    [
        ("id,S1,S1\nf1,1,2\n", {}, ValueError, r"duplicated column name.*'S1'"),
        ("id,S1,S2\nf1,1,2\nf1,3,4\n", {}, ValueError, r"duplicated row name.*'f1'"),
        ("id,S1,S2\nf1,1,2\nf2,3", {}, ValueError, r"truncated"),
        ("", {}, ValueError, r"is empty"),
        (None, {}, FileNotFoundError, None),
        ("id,S1,S2\nf1,1,2\n", {"annotation_cols": ["gene"]}, KeyError, r"missing column 'gene'"),
        ("id,S1,S2\nf1,1,2\n", {"orientation": "wide"}, ValueError, r"orientation must be"),
    ],
    ids=["dup-column", "dup-row", "truncated", "empty", "absent", "no-annotation", "orientation"],
)
def test_read_table_bad_files(tmp_path, text, kwargs, error, match):
    path = tmp_path / "m.csv"
    if text is not None:  # None: the file does not exist
        path.write_text(text)
    with pytest.raises(error, match=match):
        io.read_table(path, **kwargs)


# --------------------------------------------------------------------------- sample sheet


def test_join_sample_sheet_aligns_and_types():
    adata = io.read_maxquant(EVIDENCE, kind="evidence")  # samples A1, B1, A2; sheet A1, A2, B1
    assert io.join_sample_sheet(adata, DATA / "samplesheet.tsv") is None
    assert adata.obs["batch"].tolist() == ["b1", "b1", "b2"]
    assert adata.obs["condition"].tolist() == ["control", "treated", "control"]
    assert adata.obs["age"].tolist() == [34, 29, 41]
    assert isinstance(adata.obs["condition"].dtype, pd.CategoricalDtype)
    assert list(adata.obs["condition"].cat.categories) == ["control", "treated"]
    assert pd.api.types.is_integer_dtype(adata.obs["age"])
    assert pd.isna(adata.obs.loc["A2", "note"])


def test_join_sample_sheet_mismatch(tmp_path):
    adata = io.read_maxquant(PEPTIDES)
    sheet = pd.DataFrame({"sample": ["A1", "A2", "C9"], "batch": ["b1", "b2", "b3"]})
    with pytest.raises(
        ValueError, match=r"missing from sample sheet: 'B1'.*missing from adata: 'C9'"
    ):
        io.join_sample_sheet(adata, sheet)
    with pytest.warns(UserWarning, match=r"keeping the samples in both"):
        inner = io.join_sample_sheet(adata, sheet, how="inner", copy=True)
    assert inner.obs_names.tolist() == ["A1", "A2"]
    np.testing.assert_array_equal(inner.X, adata[["A1", "A2"]].X)
    assert adata.n_obs == 3
    assert "batch" not in adata.obs  # copy=True left the input alone
    with pytest.raises(ValueError, match=r"no sample in common"):
        io.join_sample_sheet(adata, sheet.assign(sample=["x", "y", "z"]), how="inner")


def test_join_sample_sheet_bad_sheets(tmp_path):
    adata = io.read_maxquant(PEPTIDES)
    dup = pd.DataFrame({"sample": ["A1", "A1", "A2", "B1"], "batch": list("abcd")})
    with pytest.raises(ValueError, match=r"duplicated sample name.*'A1'"):
        io.join_sample_sheet(adata, dup)
    with pytest.raises(KeyError, match=r"missing column 'Sample ID'"):
        io.join_sample_sheet(adata, DATA / "samplesheet.tsv", sample_col="Sample ID")
    io.join_sample_sheet(adata, DATA / "samplesheet.tsv")
    with pytest.raises(ValueError, match=r"already has column.*'batch'"):
        io.join_sample_sheet(adata, DATA / "samplesheet.tsv")


def test_join_sample_sheet_names_compared_as_text(tmp_path):
    adata = io.read_long(
        pd.DataFrame({"sample": ["01", "02"], "protein": "P", "peptide": "AAK", "value": [1, 2]})
    )
    path = tmp_path / "sheet.csv"
    path.write_text("sample,batch\n01,1\n02,2\n")
    io.join_sample_sheet(adata, path)
    assert adata.obs["batch"].tolist() == [1, 2]


# --------------------------------------------------------------------------- issues 16/18


def test_semicolon_csv_is_read(tmp_path):
    """Spreadsheets in many locales save ';'-separated .csv (issue 18: a ufunc TypeError)."""
    path = tmp_path / "matrix.csv"
    path.write_text("id;S1;S2\nf1;1.5;2\nf2;3;4\n")
    np.testing.assert_array_equal(io.read_table(path).X, [[1.5, 3.0], [2.0, 4.0]])
    with pytest.raises(ValueError, match=r"one column when split at comma.*pass sep=';'"):
        io.read_table(path, sep=",")


def test_read_table_suggests_annotation_cols_for_text_columns(tmp_path):
    path = tmp_path / "m.tsv"
    path.write_text("id\tgene\tS1\tS2\nf1\tALB\t1\t2\nf2\tGAPDH\t3\t4\n")
    with pytest.raises(ValueError, match=r"column 'gene': 'ALB'.*annotation_cols=\['gene'\]"):
        io.read_table(path)
    assert io.read_table(path, annotation_cols=["gene"]).var["gene"].tolist() == ["ALB", "GAPDH"]


def test_read_table_suggests_orientation_for_a_transposed_table(tmp_path):
    path = tmp_path / "m.tsv"
    path.write_text("sample\tf1\tf2\tf3\nS1\t1\t2\t3\nS2\t4\t5\t6\n")
    with pytest.warns(UserWarning, match=r"2 features × 3 samples.*orientation='samples_x_f"):
        io.read_table(path)
    assert io.read_table(path, orientation="samples_x_features").shape == (2, 3)


def test_read_table_header_only(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id,S1,S2\n")
    with pytest.raises(ValueError, match=r"m.csv has a header but no data rows"):
        io.read_table(path)


def test_sample_sheet_na_is_a_level_in_text_columns(tmp_path):
    adata = io.read_long(
        pd.DataFrame({"sample": ["s1", "s2", "s3"], "protein": "P", "peptide": "AAK", "value": 1.0})
    )
    sheet = tmp_path / "sheet.tsv"
    sheet.write_text("sample\tbatch\tage\tnote\ns1\tNA\t34\t\ns2\tb2\tNA\tx\ns3\tNA\t41\t-\n")
    joined = io.join_sample_sheet(adata, sheet, copy=True)
    assert joined.obs["batch"].tolist() == ["NA", "b2", "NA"]  # a batch called NA
    assert list(joined.obs["batch"].cat.categories) == ["NA", "b2"]
    np.testing.assert_array_equal(joined.obs["age"], [34.0, np.nan, 41.0])  # numeric: missing
    assert pd.isna(joined.obs.loc["s1", "note"])  # an empty cell is missing
    pandas_like = io.join_sample_sheet(adata, sheet, keep_default_na=True, copy=True)
    assert pandas_like.obs["batch"].isna().tolist() == [True, False, True]
    dashes = io.join_sample_sheet(adata, sheet, na_values=["-"], copy=True)
    assert dashes.obs["note"].isna().tolist() == [True, False, True]


def test_sample_sheet_refuses_one_and_text_one_in_a_column():
    adata = io.read_long(
        pd.DataFrame({"sample": ["s1", "s2", "s3"], "protein": "P", "peptide": "AAK", "value": 1.0})
    )
    sheet = pd.DataFrame({"sample": ["s1", "s2", "s3"], "batch": [1, "1", 2]})
    with pytest.raises(ValueError, match=r"column 'batch' holds '1' as int and as str"):
        io.join_sample_sheet(adata, sheet)
