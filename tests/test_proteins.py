"""Protein summarization from peptide-level AnnData, checked against lme4 and by hand."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import omixed


def _peptide_adata(long: pd.DataFrame, design: pd.DataFrame) -> ad.AnnData:
    wide = long.pivot(index="sample", columns="peptide", values="y")
    var = long.drop_duplicates("peptide").set_index("peptide").loc[wide.columns, ["feature"]]
    var = var.rename(columns={"feature": "protein"})
    return ad.AnnData(wide.to_numpy(), obs=design.loc[wide.index].astype("category"), var=var)


@pytest.fixture(scope="module")
def summarized(sim_peptides):
    long, design, ref = sim_peptides
    peptides = _peptide_adata(long, design)
    return peptides, omixed.tl.summarize_proteins(peptides, progress=False), ref


def test_protein_fits_match_lme4(summarized):
    _, proteins, ref = summarized
    ref = ref.loc[proteins.var_names]
    diff = proteins.var["lmm_criterion"] - ref["crit"]
    assert (diff <= 1e-4).mean() >= 0.995
    agree = diff.abs() <= 1e-4
    for term in ("batch", "sample", "peptide", "Residual"):
        got, want = proteins.varm["lmm_variance"][term][agree], ref[f"var:{term}"][agree]
        assert ((np.abs(got - want) <= 1e-3 * np.abs(want)) | (np.abs(got - want) <= 1e-5)).all()
    se = ref["se:conditiontreated"][agree]
    err = np.abs(
        proteins.varm["lmm_beta"]["condition[T.treated]"][agree]
        - ref["beta:conditiontreated"][agree]
    )
    assert (err <= 1e-3 * se).all()
    assert (proteins.var["lmm_n_obs"] == ref["nobs"]).all()


def test_abundance_is_fixed_plus_sample_and_batch_effects(summarized):
    peptides, proteins, _ = summarized
    beta = proteins.varm["lmm_beta"]
    treated = (proteins.obs["condition"] == "treated").to_numpy(float)
    expected = (
        beta["Intercept"].to_numpy()
        + np.outer(treated, beta["condition[T.treated]"])
        + proteins.varm["lmm_blup_sample"].loc[:, proteins.obs_names].to_numpy().T
        + proteins.varm["lmm_blup_batch"].loc[:, proteins.obs["batch"].astype(str)].to_numpy().T
    )
    np.testing.assert_allclose(proteins.X, expected, rtol=1e-12)
    batch = proteins.varm["lmm_blup_batch"].loc[:, proteins.obs["batch"].astype(str)].to_numpy().T
    np.testing.assert_allclose(proteins.layers["corrected"], proteins.X - batch, rtol=1e-12)
    n_pep = peptides.var.groupby("protein", observed=True).size()
    assert (proteins.var["n_peptides"] == n_pep.loc[proteins.var_names]).all()


def test_single_peptide_proteins_drop_the_peptide_term_and_min_peptides_filters():
    peptides = omixed.datasets.example_peptides()[:, :40].copy()
    proteins = omixed.tl.summarize_proteins(peptides, progress=False)
    single = proteins.var["n_peptides"] == 1
    if single.any():
        assert proteins.varm["lmm_variance"]["peptide"][single].eq(0).all()
        assert proteins.var["lmm_notes"][single].str.contains("peptide has < 2").all()
    kept = omixed.tl.summarize_proteins(peptides, min_peptides=3, progress=False)
    assert (kept.var["n_peptides"] >= 3).all()
    assert kept.uns["lmm"]["n_proteins_below_min_peptides"] == int(
        (proteins.var["n_peptides"] < 3).sum()
    )


def test_clear_errors():
    peptides = omixed.datasets.example_peptides()[:, :20].copy()
    with pytest.raises(KeyError, match="no column 'gene'"):
        omixed.tl.summarize_proteins(peptides, protein_key="gene")
    with pytest.raises(ValueError, match=r"\(1\|peptide\)"):
        omixed.tl.summarize_proteins(peptides, formula="~ condition + (1|batch)")
    with pytest.raises(ValueError, match="cannot remove"):
        omixed.tl.summarize_proteins(peptides, remove=("plate",))
