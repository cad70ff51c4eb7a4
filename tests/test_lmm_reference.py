"""Accuracy of the engine against independent lme4 fits (tests/data/reference)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from omixed import lmm

CLASSIC = ["dyestuff", "penicillin", "pastes", "sleepstudy", "sleepstudy_uncorrelated"]


def _term(group: str, component: str) -> str:
    """omixed's name of one component of a random term: "Subject", "Subject.Days"."""
    return group if component == "(Intercept)" else f"{group}.{component}"


def _theta_name(lme4_name: str, groups) -> str:
    """lme4's θ names ("Subject.(Intercept)", "Subject.Days.(Intercept)") in omixed's terms."""
    group = next(g for g in groups if lme4_name.startswith(g + "."))
    rest = lme4_name[len(group) + 1 :]
    if rest == "(Intercept)" or "." not in rest:
        return _term(group, rest)
    row, col = rest.split(".", 1)  # an off-diagonal entry of the term's factor T
    return f"{_term(group, row)}~{_term(group, col)}"


def _rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.abs(a - b) / np.maximum(np.abs(b), 1e-300)


@pytest.mark.parametrize("method", ["REML", "ML"])
@pytest.mark.parametrize("name", CLASSIC)
def test_classic_datasets_match_lme4(name, method, lme4_classic, classic_data):
    model = lme4_classic[name]
    ref = model[method]
    data = classic_data(model["data"])
    response = model["formula"].split("~")[0].strip()
    res = lmm.fit(data[response].to_numpy(), data, model["formula"], reml=method == "REML")

    assert res.converged.iloc[0]
    assert _rel(res.criterion.iloc[0], ref["criterion"]) < 1e-6
    names = np.atleast_1d(ref["theta_names"])  # R's JSON writes length-1 vectors as scalars
    theta = [res.theta.iloc[0][_theta_name(n, ref["ranef"])] for n in names]
    np.testing.assert_allclose(theta, np.atleast_1d(ref["theta"]), rtol=1e-4)
    assert _rel(np.sqrt(res.variance["Residual"].iloc[0]), ref["sigma"]) < 1e-4
    np.testing.assert_allclose(res.beta.iloc[0].to_numpy(), list(ref["beta"].values()), rtol=1e-4)
    np.testing.assert_allclose(res.se.iloc[0].to_numpy(), list(ref["beta_se"].values()), rtol=1e-4)
    for vc in ref["varcorr"]:
        # lme4 names a second term on the same factor "Subject.1"; ours is "Subject.Days".
        group = vc["grp"].split(".")[0]
        if vc["grp"] == "Residual":
            name = "Residual"
        elif "var2" in vc:
            name = f"cov({_term(group, vc['var1'])},{_term(group, vc['var2'])})"
        else:
            name = _term(group, vc["var1"])
        assert _rel(res.variance[name].iloc[0], vc["vcov"]) < 1e-4
    for group, levels in ref["ranef"].items():
        for column in (c for c in levels[0] if c not in {"level", "_row"}):
            term = _term(group, column)
            expected = pd.Series({lv["level"]: lv[column] for lv in levels})
            got = res.blup[term].iloc[0].loc[expected.index]
            # 1e-4 relative to the largest BLUP: a BLUP near 0 moves with lme4's own tolerance
            # (sleepstudy ML: lme4 stops 5e-9 above our criterion, one BLUP of 0.14 moves 1e-4).
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())


def _check_against_lme4(res: lmm.LMMResult, ref: pd.DataFrame, terms: list[str]) -> None:
    diff = res.criterion - ref["crit"]
    # An exact optimizer may beat lme4 (which stops at a tolerance); it must not lose to it.
    assert (diff <= 1e-4).mean() >= 0.995, diff.describe()
    assert (res.n_obs == ref["nobs"]).all()
    agree = diff.abs() <= 1e-4
    assert agree.mean() > 0.9
    for term in [*terms, "Residual"]:
        got, want = res.variance[term][agree], ref[f"var:{term}"][agree]
        ok = (_rel(got, want) <= 1e-3) | (np.abs(got - want) <= 1e-5)
        assert ok.all(), pd.concat([got, want], axis=1)[~ok]
    se = ref["se:conditiontreated"][agree]
    beta_err = np.abs(res.beta["condition[T.treated]"][agree] - ref["beta:conditiontreated"][agree])
    assert (beta_err <= 1e-3 * se).all()
    assert (_rel(res.se["condition[T.treated]"][agree], se) <= 1e-3).all()
    intercept_err = np.abs(res.beta["Intercept"][agree] - ref["beta:(Intercept)"][agree])
    assert (intercept_err <= 1e-3 * ref["se:(Intercept)"][agree]).all()


def test_sim_genes_match_lme4(sim_genes):
    Y, design, names, ref = sim_genes
    res = lmm.fit(Y, design, "y ~ condition + (1|batch) + (1|donor)", feature_names=names)
    assert res.converged.all()
    _check_against_lme4(res, ref, ["batch", "donor"])


def test_sim_peptides_match_lme4(sim_peptides):
    long, design, ref = sim_peptides
    formula = "y ~ condition + (1|batch) + (1|sample) + (1|peptide)"
    res, positions = lmm.fit_grouped(long, design, formula)
    assert res.converged.all()
    _check_against_lme4(res, ref.loc[res.feature_names], ["batch", "sample", "peptide"])
    # Every observed peptide has a position and a BLUP; padded positions stay NaN.
    assert len(positions) == long[["feature", "peptide"]].drop_duplicates().shape[0]
    n_pep = long.groupby("feature")["peptide"].nunique()
    observed = res.blup["peptide"].notna().sum(axis=1)
    assert (observed == n_pep.loc[observed.index]).all()


def test_sim_peptides_ranking_finds_the_true_changes_as_lme4_does(sim_peptides, sim_peptides_truth):
    """Spike-in style: 38 of the 120 simulated proteins change with condition, 82 do not.

    Ranking by |β/SE| of the condition must find at least as many true changes as lme4's fit
    of the same model in every top-k list, and no more false ones at the usual |t| cutoffs.
    """
    long, design, ref = sim_peptides
    truth = sim_peptides_truth
    res, _ = lmm.fit_grouped(long, design, "y ~ condition + (1|batch) + (1|sample) + (1|peptide)")
    ours = (res.beta["condition[T.treated]"] / res.se["condition[T.treated]"]).abs()
    theirs = (ref["beta:conditiontreated"] / ref["se:conditiontreated"]).abs().loc[ours.index]
    changed = truth.loc[ours.index, "effect"] != 0
    assert changed.sum() == 38
    found = changed.loc[ours.sort_values(ascending=False, kind="stable").index].cumsum()
    found_lme4 = changed.loc[theirs.sort_values(ascending=False, kind="stable").index].cumsum()
    assert (found.to_numpy() >= found_lme4.to_numpy()).all()
    for cutoff in (2.0, 3.0):
        assert (changed & (ours > cutoff)).sum() >= (changed & (theirs > cutoff)).sum()
        assert (~changed & (ours > cutoff)).sum() <= (~changed & (theirs > cutoff)).sum()
