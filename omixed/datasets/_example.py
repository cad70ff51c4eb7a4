"""Simulated omics data with a known truth: the workflow's default input and the README's examples.

Values are on the log2 scale. For feature ``j`` and sample ``i``

    y_ij = μ_j + δ_j·treated_i + (random effects of sample i's groups)_j + ε_ij,   ε_ij ~ N(0, σ²_j)

where each random effect has its own per-feature SD, some exactly 0 (no effect at all). The truth
(``layers["truth"]``) is ``y`` without the batch term, i.e. what a perfect batch correction returns.
Values are then missing with a probability that rises as the measured intensity falls, as in
mass-spectrometry proteomics, and levels off at 60 %: like a table after the usual valid-value
filter, it holds features seen in a good share of the samples, so every feature can be fit.

Only ``numpy.random.default_rng(seed)`` draws random numbers: a seed gives bitwise identical data.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from scipy import optimize, special

# Each donor gives one sample to three of the four batches; this is the batch it skips. Chosen so
# batch sizes (12, 14, 11, 11) and the share of controls per batch (7/12, 5/14, 6/11, 3/11) differ.
_SKIPPED_BATCH = {"control": (1, 1, 2, 3, 3, 3, 3), "treated": (0, 0, 0, 0, 2, 2, 2, 2, 3)}
# Peptide data: samples per batch (B0, B1, B2) and condition; batches of 9, 8 and 7 samples.
_PEPTIDE_BATCHES = {"control": (5, 3, 4), "treated": (4, 5, 3)}
_CONDITIONS = ["control", "treated"]


def example(*, seed: int = 0) -> ad.AnnData:
    """Simulated proteomics/transcriptomics-like data: 2000 features × 48 samples, log2 scale.

    Design: 16 donors (7 control, 9 treated; donors are nested in ``condition``), each with 3
    samples in 3 of 4 batches, so ``batch`` is crossed with ``condition`` but unbalanced: batch
    sizes 12, 14, 11, 11 and control shares 7/12, 5/14, 6/11, 3/11. Samples are ordered by batch.

    Per feature: mean ~ N(20, 2²); 15% of the features change with ``condition`` by
    ±(0.5 + Exp(0.75)); batch and donor SDs ~ Gamma(2, mean 0.8 resp. 0.5), each exactly 0 for
    ~20% of features; residual SD 0.4·exp(N(0, 0.35²)). About 10% of the values are missing, low
    intensities more often, at most ~60% of a feature's (see ``uns["example"]``).

    Parameters
    ----------
    seed
        Seed of ``numpy.random.default_rng``; the design does not depend on it.

    Returns
    -------
    AnnData with ``obs`` columns ``batch``, ``donor``, ``condition`` (categoricals; names
    ``S00``...), ``var`` columns ``true_effect``, ``sd_batch``, ``sd_donor``, ``sd_resid`` (names
    ``F0000``...), ``layers["truth"]`` (batch-free values, complete) and ``uns["example"]`` (seed
    and parameters).

    Examples
    --------
    >>> import omixed
    >>> adata = omixed.datasets.example()
    >>> adata.shape
    (48, 2000)
    """
    params = {
        "seed": seed,
        "mean": 20.0,
        "sd_mean": 2.0,
        "fraction_changed": 0.15,
        "mean_sd_batch": 0.8,
        "mean_sd_donor": 0.5,
        "fraction_sd_zero": 0.2,
        "median_sd_resid": 0.4,
        "sd_log_sd_resid": 0.35,
        "missing_fraction": 0.10,
        "missing_at_random": 0.02,
        "missing_max": 0.6,
        "missing_scale": 1.0,
    }
    rng = np.random.default_rng(seed)
    obs = _gene_design()
    n_features = 2000
    mean = rng.normal(params["mean"], params["sd_mean"], n_features)
    effect = _effects(rng, n_features, params["fraction_changed"])
    sd_batch = _gamma_sds(rng, n_features, params["mean_sd_batch"], params["fraction_sd_zero"])
    sd_donor = _gamma_sds(rng, n_features, params["mean_sd_donor"], params["fraction_sd_zero"])
    sd_resid = _resid_sds(rng, n_features, params)

    treated = (obs["condition"] == "treated").to_numpy()
    truth = (
        mean
        + np.outer(treated, effect)
        + _random_effect(rng, obs["donor"].cat.codes.to_numpy(), sd_donor)
        + rng.standard_normal((obs.shape[0], n_features)) * sd_resid
    )
    values = truth + _random_effect(rng, obs["batch"].cat.codes.to_numpy(), sd_batch)
    var = pd.DataFrame(
        {"true_effect": effect, "sd_batch": sd_batch, "sd_donor": sd_donor, "sd_resid": sd_resid},
        index=pd.Index([f"F{j:04d}" for j in range(n_features)]),
    )
    return _with_missing(rng, values, truth, obs, var, params, name="example")


def example_peptides(*, seed: int = 0) -> ad.AnnData:
    """Simulated peptide-level proteomics data: ~300 proteins with 2–12 peptides each × 24 samples.

    Design: 3 batches of 9, 8 and 7 samples with 5/4, 3/5 and 4/3 control/treated samples.

    Per protein: mean ~ N(22, 2²); 15% change with ``condition`` by ±(0.5 + Exp(0.75)); SDs of
    the batch effect and of the sample effect (shared by a protein's peptides within a sample)
    ~ Gamma(2, mean 0.5 resp. 0.4), exactly 0 for ~20% of proteins; peptide ionisation offsets
    ~ N(0, sd_peptide²) with sd_peptide ~ Gamma(2, mean 1); residual SD 0.3·exp(N(0, 0.35²)).
    About 15% of the values are missing, low intensities more often, at most ~60% of a peptide's.

    Parameters
    ----------
    seed
        Seed of ``numpy.random.default_rng``; the sample design does not depend on it.

    Returns
    -------
    AnnData (samples × peptides) with ``obs`` columns ``batch``, ``condition`` (categoricals),
    ``var`` columns ``protein``, ``peptide`` (categoricals; ``peptide`` equals ``var_names``, e.g.
    ``P0000_pep00``), ``ionisation`` (the peptide's offset) and, repeated for each peptide of a
    protein, ``true_effect``, ``sd_batch``, ``sd_sample``, ``sd_peptide``, ``sd_resid``;
    ``layers["truth"]`` (batch-free values, complete) and ``uns["example_peptides"]``.

    Examples
    --------
    >>> import omixed
    >>> peptides = omixed.datasets.example_peptides()
    >>> peptides.var["protein"].nunique()
    300
    """
    params = {
        "seed": seed,
        "n_proteins": 300,
        "min_peptides": 2,
        "max_peptides": 12,
        "mean": 22.0,
        "sd_mean": 2.0,
        "fraction_changed": 0.15,
        "mean_sd_batch": 0.5,
        "mean_sd_sample": 0.4,
        "mean_sd_peptide": 1.0,
        "fraction_sd_zero": 0.2,
        "median_sd_resid": 0.3,
        "sd_log_sd_resid": 0.35,
        "missing_fraction": 0.15,
        "missing_at_random": 0.02,
        "missing_max": 0.6,
        "missing_scale": 1.0,
    }
    rng = np.random.default_rng(seed)
    obs = _peptide_design()
    n_proteins = params["n_proteins"]
    n_peptides = rng.integers(params["min_peptides"], params["max_peptides"] + 1, n_proteins)
    protein = np.repeat(np.arange(n_proteins), n_peptides)  # protein index of every peptide
    mean = rng.normal(params["mean"], params["sd_mean"], n_proteins)
    effect = _effects(rng, n_proteins, params["fraction_changed"])
    sd_batch = _gamma_sds(rng, n_proteins, params["mean_sd_batch"], params["fraction_sd_zero"])
    sd_sample = _gamma_sds(rng, n_proteins, params["mean_sd_sample"], params["fraction_sd_zero"])
    sd_peptide = _gamma_sds(rng, n_proteins, params["mean_sd_peptide"], 0.0)
    sd_resid = _resid_sds(rng, n_proteins, params)
    ionisation = rng.standard_normal(protein.size) * sd_peptide[protein]

    n_samples = obs.shape[0]
    treated = (obs["condition"] == "treated").to_numpy()
    protein_level = (
        mean + np.outer(treated, effect) + _random_effect(rng, np.arange(n_samples), sd_sample)
    )
    truth = (
        protein_level[:, protein]
        + ionisation
        + rng.standard_normal((n_samples, protein.size)) * sd_resid[protein]
    )
    batch = _random_effect(rng, obs["batch"].cat.codes.to_numpy(), sd_batch)
    values = truth + batch[:, protein]
    proteins = np.array([f"P{p:04d}" for p in range(n_proteins)])
    names = [f"{proteins[p]}_pep{k:02d}" for p, n in enumerate(n_peptides) for k in range(n)]
    var = pd.DataFrame(
        {
            "protein": pd.Categorical(proteins[protein], categories=proteins),
            "peptide": pd.Categorical(names, categories=names),
            "ionisation": ionisation,
            "true_effect": effect[protein],
            "sd_batch": sd_batch[protein],
            "sd_sample": sd_sample[protein],
            "sd_peptide": sd_peptide[protein],
            "sd_resid": sd_resid[protein],
        },
        index=pd.Index(names),
    )
    return _with_missing(rng, values, truth, obs, var, params, name="example_peptides")


def _gene_design() -> pd.DataFrame:
    """Samples of :func:`example`: batch, donor and condition, ordered by batch then donor."""
    donors = [(condition, skip) for condition, skips in _SKIPPED_BATCH.items() for skip in skips]
    rows = [
        (f"B{b}", f"D{d:02d}", condition)
        for d, (condition, skip) in enumerate(donors)
        for b in range(4)
        if b != skip
    ]
    design = pd.DataFrame(rows, columns=["batch", "donor", "condition"])
    design = design.sort_values(["batch", "donor"], kind="stable", ignore_index=True)
    return _as_obs(design)


def _peptide_design() -> pd.DataFrame:
    """Samples of :func:`example_peptides`: batch and condition, ordered by batch then condition."""
    rows = [
        (f"B{b}", condition)
        for b in range(3)
        for condition, sizes in _PEPTIDE_BATCHES.items()
        for _ in range(sizes[b])
    ]
    return _as_obs(pd.DataFrame(rows, columns=["batch", "condition"]))


def _as_obs(design: pd.DataFrame) -> pd.DataFrame:
    """Make the design columns categoricals (``condition``: control first); name samples S00..."""
    obs = design.astype("category")
    obs["condition"] = obs["condition"].cat.set_categories(_CONDITIONS)
    obs.index = pd.Index([f"S{i:02d}" for i in range(obs.shape[0])])
    return obs


def _effects(rng: np.random.Generator, n: int, fraction: float) -> np.ndarray:
    """Condition effects: ±(0.5 + Exp(0.75)) for a random ``fraction`` of the features, else 0."""
    effect = np.zeros(n)
    changed = rng.choice(n, size=round(fraction * n), replace=False)
    sign = rng.choice([-1.0, 1.0], size=changed.size)
    effect[changed] = sign * (0.5 + rng.exponential(0.75, changed.size))
    return effect


def _gamma_sds(rng: np.random.Generator, n: int, mean: float, fraction_zero: float) -> np.ndarray:
    """Per-feature SDs ~ Gamma(shape 2) with the given mean; a random ``fraction_zero`` set to 0."""
    sds = rng.gamma(2.0, mean / 2.0, n)
    sds[rng.random(n) < fraction_zero] = 0.0
    return sds


def _resid_sds(rng: np.random.Generator, n: int, params: dict) -> np.ndarray:
    """Per-feature residual SDs ``median_sd_resid · exp(N(0, sd_log_sd_resid²))``."""
    return params["median_sd_resid"] * np.exp(rng.normal(0.0, params["sd_log_sd_resid"], n))


def _random_effect(rng: np.random.Generator, codes: np.ndarray, sds: np.ndarray) -> np.ndarray:
    """Level effects ~ N(0, sds_j²) per feature j, expanded to the samples (samples × features)."""
    levels = rng.standard_normal((codes.max() + 1, sds.size)) * sds
    return levels[codes]


def _with_missing(
    rng: np.random.Generator,
    values: np.ndarray,
    truth: np.ndarray,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    params: dict,
    *,
    name: str,
) -> ad.AnnData:
    """The simulated AnnData: ``values`` with some missing (drawn last), ``truth`` and ``params``.

    ``params`` gains the offset of the missingness curve and is stored as ``uns[name]``.
    """
    missing, params["missing_offset"] = _missing_not_at_random(rng, values, params)
    return ad.AnnData(
        np.where(missing, np.nan, values),
        obs=obs,
        var=var,
        layers={"truth": truth},
        uns={name: params},
    )


def _missing_not_at_random(
    rng: np.random.Generator, values: np.ndarray, params: dict
) -> tuple[np.ndarray, float]:
    """Draw which values go missing: P = a + (m − a)·expit((c − y)/s), with a, m, s from ``params``.

    P rises from ``missing_at_random`` (a) for bright values to ``missing_max`` (m) for faint ones.
    The offset ``c`` is solved for so the expected missing fraction is
    ``params["missing_fraction"]``; returns the mask and ``c``.
    """
    at_random, scale = params["missing_at_random"], params["missing_scale"]
    most = params["missing_max"]

    def probability(offset: float) -> np.ndarray:
        return at_random + (most - at_random) * special.expit((offset - values) / scale)

    offset = optimize.brentq(
        lambda c: probability(c).mean() - params["missing_fraction"],
        values.min() - 50 * scale,
        values.max() + 50 * scale,
    )
    return rng.random(values.shape) < probability(offset), float(offset)
