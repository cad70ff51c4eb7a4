"""The detection (count) component of msqrob2's hurdle model, and its use in tl.test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import omixed
from omixed import lmm
from omixed.lmm._hurdle import _binomial_irls

DATA = Path(__file__).parent / "data" / "hurdle"


def _counts():
    counts = pd.read_csv(DATA / "counts.csv")
    design = pd.read_csv(DATA / "design.csv").set_index("sample")
    wide = counts.pivot(index="feature", columns="sample", values="detected")[design.index]
    totals = counts.groupby("feature")["peptides"].first().loc[wide.index]
    X = lmm.build_spec(design, "~ condition + batch").X
    return wide, totals, X


def test_the_binomial_fits_match_r_glm():
    # R's glm.fit(cbind(c, n - c) + 0.1, X, binomial()) as msqrob2's msqrobGlm calls it.
    wide, totals, X = _counts()
    successes = wide.to_numpy() + 0.1
    trials = np.broadcast_to(totals.to_numpy()[:, None] + 0.2, successes.shape)
    beta, cov, deviance, converged = _binomial_irls(successes, trials, X)
    ref = pd.read_csv(DATA / "glm_reference.csv")
    coef = ref.pivot(index="feature", columns="term", values="coef").loc[wide.index]
    se = ref.pivot(index="feature", columns="term", values="se_unscaled").loc[wide.index]
    terms = ["(Intercept)", "conditionb", "conditionc", "batchy"]
    assert converged.all()
    np.testing.assert_allclose(beta, coef[terms].to_numpy(), rtol=1e-6, atol=1e-8)
    # glm.fit takes the covariance at its last iteration's starting weights, one step before
    # the converged fit at which it is taken here: they agree to the convergence tolerance.
    np.testing.assert_allclose(np.sqrt(np.diagonal(cov, axis1=1, axis2=2)), se[terms], rtol=2e-5)
    dev = ref.groupby("feature")["deviance"].first().loc[wide.index]
    np.testing.assert_allclose(deviance, dev, rtol=1e-8, atol=1e-10)


def test_a_protein_gone_from_a_condition_is_detected_and_a_steady_one_is_not():
    wide, totals, X = _counts()
    res = lmm.detection_test(wide.to_numpy(), totals.to_numpy(), X, np.array([0, 1.0, 0, 0]))
    res.index = wide.index
    assert res.loc["P0", "logOR"] < -3 and res.loc["P0", "pvalue"] < 1e-3  # gone in b
    assert np.isnan(res.loc["P1", "pvalue"])  # always detected: no information on a contrast
    assert res["df"].drop("P1").gt(0).all()


def test_fisher_combination_keeps_a_lone_p_value():
    p = lmm.fisher_combined(
        np.array([0.01, np.nan, 0.5, np.nan]), np.array([0.02, 0.03, 0.5, np.nan])
    )
    assert p[1] == pytest.approx(0.03)
    assert np.isnan(p[3])
    # χ² on 4 df has the survival function e^(−x/2)(1 + x/2); here x = −2(log 0.01 + log 0.02).
    x = -2.0 * np.log(0.01 * 0.02)
    assert p[0] == pytest.approx(np.exp(-x / 2) * (1 + x / 2), rel=1e-12)
    assert p[2] > 0.5


@pytest.fixture(scope="module")
def vanishing():
    """Example peptides where 12 unchanged proteins drop below detection in treated samples."""
    pep = omixed.datasets.example_peptides()
    omixed.pp.median_center(pep)
    proteins = pep.var["protein"]
    steady = pep.var.groupby("protein", observed=True)["true_effect"].first() == 0
    gone = steady.index[steady][:12]
    treated = (pep.obs["condition"] == "treated").to_numpy()
    pep.X[np.ix_(treated, proteins.isin(gone).to_numpy())] = np.nan
    fitted = omixed.tl.summarize_proteins(pep, progress=False)  # every protein is fit
    top = omixed.tl.test(fitted, contrast="condition[T.treated]", peptides=pep, hurdle=True)
    return top, gone, steady


def test_the_hurdle_finds_proteins_that_vanish_from_a_condition(vanishing):
    top, gone, _ = vanishing
    # The intensity model cannot test them: no treated value at all.
    assert top.loc[gone, "estimate"].isna().all()
    assert (top.loc[gone, "reason"] == "contrast not estimable from the observed samples").all()
    assert (top.loc[gone, "basis"] == "detection").all()
    assert (top.loc[gone, "hurdle_padj"] < 0.05).sum() >= 10


def test_the_hurdle_adds_no_false_positives_on_the_background(vanishing):
    top, gone, steady = vanishing
    background = steady.index[steady].difference(gone)
    calls = top.loc[background, "hurdle_padj"] < 0.05
    assert calls.mean() <= 0.05
    assert (top.loc[background, "basis"] == "intensity+detection").mean() > 0.9


def test_hurdle_needs_a_protein_fit():
    adata = omixed.datasets.example()[:, :20].copy()
    omixed.tl.fit(adata, "~ condition + (1|batch)", progress=False)
    with pytest.raises(ValueError, match="hurdle=True tests detected peptides"):
        omixed.tl.test(adata, contrast="condition[T.treated]", hurdle=True)
