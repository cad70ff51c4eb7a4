from __future__ import annotations

import time
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from omixed import datasets, tl


@pytest.fixture(scope="module")
def genes() -> ad.AnnData:
    return datasets.example()


@pytest.fixture(scope="module")
def peptides() -> ad.AnnData:
    return datasets.example_peptides()


def _batch_offsets(adata: ad.AnnData, protein: np.ndarray) -> np.ndarray:
    """Mean of X − truth over observed values per batch (rows) and protein (columns)."""
    diff = pd.DataFrame(adata.X - adata.layers["truth"])
    per_protein = diff.T.groupby(protein).mean().T  # samples × proteins
    return per_protein.groupby(adata.obs["batch"].cat.codes.to_numpy()).mean().to_numpy()


def test_example_design(genes: ad.AnnData) -> None:
    assert genes.shape == (48, 2000)
    assert list(genes.obs_names[:2]) == ["S00", "S01"] and genes.var_names[-1] == "F1999"
    for column in ("batch", "donor", "condition"):
        assert isinstance(genes.obs[column].dtype, pd.CategoricalDtype)
    assert list(genes.obs["condition"].cat.categories) == ["control", "treated"]
    obs = genes.obs
    assert obs["donor"].nunique() == 16
    per_donor = obs.groupby("donor", observed=True).agg(
        n=("batch", "size"), batches=("batch", "nunique"), conditions=("condition", "nunique")
    )
    assert (per_donor["n"] == 3).all() and (per_donor["batches"] == 3).all()
    assert (per_donor["conditions"] == 1).all()  # donors nested in condition
    counts = pd.crosstab(obs["batch"], obs["condition"])
    assert counts.shape == (4, 2) and (counts > 0).all().all()  # crossed
    assert counts.sum(axis=1).nunique() > 1  # unequal batch sizes
    assert (counts["control"] / counts.sum(axis=1)).nunique() > 1  # unequal condition shares


def test_example_is_deterministic() -> None:
    first, second = datasets.example(seed=3), datasets.example(seed=3)
    np.testing.assert_array_equal(np.isnan(first.X), np.isnan(second.X))
    np.testing.assert_array_equal(first.X, second.X)  # NaN == NaN here
    np.testing.assert_array_equal(first.layers["truth"], second.layers["truth"])
    pd.testing.assert_frame_equal(first.var, second.var)
    pd.testing.assert_frame_equal(first.obs, second.obs)
    other = datasets.example(seed=4)
    assert not np.array_equal(np.isnan(first.X), np.isnan(other.X))
    assert first.uns["example"]["seed"] == 3 and other.uns["example"]["seed"] == 4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_example_missing_values(seed: int) -> None:
    adata = datasets.example(seed=seed)
    missing = np.isnan(adata.X)
    assert 0.08 < missing.mean() < 0.12
    truth = adata.layers["truth"]
    assert not np.isnan(truth).any()
    # low intensities go missing more often: a clear gap on the log2 scale
    assert truth[missing].mean() < truth[~missing].mean() - 1.5
    # the chance to be missing levels off at 60 %: the faintest features are mostly missing,
    # yet every feature keeps enough observations to be fit
    faintest = np.argsort(truth.mean(axis=0))[:20]
    assert missing[:, faintest].mean() > 0.4
    assert (~missing).sum(axis=0).min() >= 12


@pytest.mark.parametrize(
    ("make", "fit"),
    [
        (
            datasets.example,
            lambda a: tl.fit(a, "~ condition + (1|batch) + (1|donor)", progress=False),
        ),
        (datasets.example_peptides, lambda a: tl.summarize_proteins(a, progress=False)),
    ],
    ids=["example", "example_peptides"],
)
def test_examples_fit_every_feature_without_warnings(make, fit) -> None:
    adata = make()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fitted = fit(adata) or adata
    assert fitted.var["lmm_converged"].all()


def test_example_truth_is_the_batch_free_signal(genes: ad.AnnData) -> None:
    offsets = _batch_offsets(genes, np.arange(genes.n_vars))  # batches × features
    diff = genes.X - genes.layers["truth"]
    codes = genes.obs["batch"].cat.codes.to_numpy()
    observed = ~np.isnan(diff)
    # X − truth is one number per batch and feature (the batch effect) ...
    np.testing.assert_allclose(diff[observed], offsets[codes][observed], atol=1e-12)
    # ... exactly zero where the feature has no batch effect ...
    no_batch = genes.var["sd_batch"].to_numpy() == 0
    assert no_batch.sum() > 100
    assert np.all(np.nan_to_num(diff[:, no_batch]) == 0)
    # ... and spread in proportion to the simulated batch SD
    rho = stats.spearmanr(np.nanstd(offsets, axis=0)[~no_batch], genes.var["sd_batch"][~no_batch])[
        0
    ]
    assert rho > 0.8


def test_example_truth_carries_condition_and_donor(genes: ad.AnnData) -> None:
    truth = genes.layers["truth"]
    treated = (genes.obs["condition"] == "treated").to_numpy()
    effect = genes.var["true_effect"].to_numpy()
    assert np.mean(effect != 0) == pytest.approx(0.15)
    estimate = truth[treated].mean(axis=0) - truth[~treated].mean(axis=0)
    # the difference of condition means estimates the effect without bias (slope 1)
    slope = np.polyfit(effect, estimate, 1)[0]
    assert slope == pytest.approx(1, abs=0.05)
    assert np.corrcoef(estimate, effect)[0, 1] > 0.8
    # donor means of the within-condition residuals spread with the simulated donor SD
    residual = truth - np.where(treated[:, None], truth[treated].mean(0), truth[~treated].mean(0))
    donor_means = pd.DataFrame(residual).groupby(genes.obs["donor"].to_numpy()).mean()
    rho = stats.spearmanr(donor_means.std(axis=0), genes.var["sd_donor"])[0]
    assert rho > 0.6


def test_peptides_design(peptides: ad.AnnData) -> None:
    var = peptides.var
    assert peptides.n_obs == 24 and peptides.obs["batch"].nunique() == 3
    assert var["protein"].nunique() == 300
    n_peptides = var.groupby("protein", observed=True).size()
    assert n_peptides.between(2, 12).all() and n_peptides.nunique() > 5
    assert np.array_equal(var["peptide"].astype(str), peptides.var_names)
    assert (var["peptide"].astype(str).str.split("_").str[0] == var["protein"].astype(str)).all()
    counts = pd.crosstab(peptides.obs["batch"], peptides.obs["condition"])
    assert (counts > 0).all().all() and counts.sum(axis=1).nunique() > 1
    # protein-level truth is constant within a protein
    per_protein = var.groupby("protein", observed=True)[["true_effect", "sd_batch", "sd_resid"]]
    assert (per_protein.nunique() == 1).all().all()


def test_peptides_deterministic_and_missing(peptides: ad.AnnData) -> None:
    again = datasets.example_peptides()
    np.testing.assert_array_equal(peptides.X, again.X)
    pd.testing.assert_frame_equal(peptides.var, again.var)
    missing = np.isnan(peptides.X)
    assert 0.12 < missing.mean() < 0.18
    truth = peptides.layers["truth"]
    assert truth[missing].mean() < truth[~missing].mean() - 1.5


def test_peptides_truth_structure(peptides: ad.AnnData) -> None:
    protein = peptides.var["protein"].cat.codes.to_numpy()
    # the batch effect is shared by all peptides of a protein: one offset per batch and protein
    offsets = _batch_offsets(peptides, protein)  # batches × proteins
    codes = peptides.obs["batch"].cat.codes.to_numpy()
    diff = peptides.X - peptides.layers["truth"]
    observed = ~np.isnan(diff)
    expected = offsets[codes][:, protein]
    np.testing.assert_allclose(diff[observed], expected[observed], atol=1e-12)

    # within a protein, peptide means of the truth differ by the peptides' ionisation offsets
    def centred(values: np.ndarray) -> np.ndarray:
        return values - pd.Series(values).groupby(protein).transform("mean").to_numpy()

    peptide_means = centred(peptides.layers["truth"].mean(axis=0))
    ionisation = centred(peptides.var["ionisation"].to_numpy())
    assert np.corrcoef(peptide_means, ionisation)[0, 1] > 0.95


@pytest.mark.parametrize("make", [datasets.example, datasets.example_peptides])
def test_examples_are_fast_and_h5ad_writable(make, tmp_path) -> None:
    best = min(_seconds(make) for _ in range(3))
    assert best < 0.5
    adata = make(seed=7)
    adata.write_h5ad(tmp_path / "example.h5ad")
    back = ad.read_h5ad(tmp_path / "example.h5ad")
    np.testing.assert_array_equal(back.X, adata.X)
    assert back.uns == adata.uns


def _seconds(make) -> float:
    start = time.perf_counter()
    make()
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return datasets.example_files(directory=tmp_path_factory.mktemp("files"))


def test_example_files_hold_the_peptides_in_both_formats(files: dict, peptides) -> None:
    import omixed

    maxquant = omixed.io.read_maxquant(files["maxquant"])
    diann = omixed.io.read_diann(files["diann"])
    assert list(maxquant.obs_names) == list(peptides.obs_names) == list(diann.obs_names)
    assert sorted(maxquant.var_names) == sorted(diann.var_names)
    assert maxquant.n_vars == peptides.n_vars
    # peptides keep their order and protein; values are 2**y, whole numbers in MaxQuant's
    # table (so log2 is off by at most 0.5 / 2**min(y) / ln 2) and 6 digits in DIA-NN's
    assert list(maxquant.var["protein"]) == list(peptides.var["protein"].astype(str))
    bound = 0.5 / 2 ** np.nanmin(peptides.X) / np.log(2)
    np.testing.assert_allclose(np.log2(maxquant.X), peptides.X, rtol=0, atol=bound)
    dia = np.log2(diann[:, maxquant.var_names].X)
    np.testing.assert_allclose(dia, np.log2(maxquant.X), rtol=0, atol=5e-6 / np.log(2))
    sheet = pd.read_csv(files["samples"], sep="\t", index_col="sample")
    pd.testing.assert_frame_equal(
        sheet, peptides.obs[["batch", "condition"]].astype(str).rename_axis("sample")
    )


def test_example_files_sequences_agree_with_their_protein(files: dict) -> None:
    table = pd.read_csv(files["maxquant"], sep="\t", keep_default_na=False)
    assert table["Sequence"].is_unique
    assert (table["End position"] - table["Start position"] + 1 == table["Length"]).all()
    assert table["Sequence"].str[-1].isin(["K", "R"]).all()  # tryptic
    protein = table.groupby("Proteins", sort=False)["Sequence"].agg("".join)
    for _, row in table.sample(50, random_state=0).iterrows():
        full = protein[row["Proteins"]]
        start, end = row["Start position"], row["End position"]
        assert full[start - 1 : end] == row["Sequence"]
        assert row["Amino acid before"] == (full[start - 2] if start > 1 else "-")
        assert row["Amino acid after"] == (full[end] if end < len(full) else "-")
    # monoisotopic mass of GAHAVLWMLAGTFR (hand-summed residues + water): 1528.79726
    first = table.iloc[0]
    assert first["Sequence"] == "GAHAVLWMLAGTFR"
    assert first["Mass"] == pytest.approx(1528.79726, abs=1e-5)
