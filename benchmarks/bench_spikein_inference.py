"""Differential tests against a known truth on real data: the human/yeast/E. coli mixture.

The inputs are those of ``bench_species_mixture.py`` (ProteoBench's real test subsets of six
tools on PXD028735; from condition A to B human proteins are unchanged, yeast proteins halve and
E. coli proteins rise four-fold).  Per input the peptide-level model
``~ condition + (1|sample) + (1|peptide)`` is fit per protein (:func:`omixed.tl.summarize_proteins`)
and ``condition[T.B]`` tested with :func:`omixed.tl.test`:

* ``omixed``: Satterthwaite df, no moderation;
* ``omixed moderated``: limma's prior on the residual variances (weighted likelihood); the prior
  df of the moment estimator on the same variances is printed beside it;
* ``omixed hurdle``: moderated, plus msqrob2's detection component (Fisher-combined p-values);
* ``lme4 + lmerTest``: the same model fit per protein in R, Satterthwaite df (when R with lme4
  and lmerTest is installed), timed in the same run.  lme4 refuses a protein whose grouping
  factors have as many levels as observations (most one-peptide proteins here), so omixed is
  also scored on the proteins lme4 could fit, BH over those.

Printed per input and method: proteins tested; calibration on the human background (the null:
fraction of p < 0.05 and the Kolmogorov–Smirnov distance of its p-values from uniform); true
and false positives at BH 5 % (yeast and E. coli called / human called); and the true
positives among the top 50 by p-value.

Usage: ``python benchmarks/bench_spikein_inference.py``; about a minute with R.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from bench_species_mixture import DATA, INPUTS, condition_of, species_of
from scipy import stats

import omixed
from omixed import lmm

FORMULA = "~ condition + (1|sample) + (1|peptide)"
CONTRAST = "condition[T.B]"
PEER = Path(__file__).with_name("lmertest_proteins.R")


def _peptides(file: str, options: dict):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peptides = omixed.io.read(DATA / file, **options)
    peptides.X = np.log2(peptides.X)
    omixed.pp.median_center(peptides)
    peptides.obs["condition"] = pd.Categorical(condition_of(peptides.obs_names))
    names = peptides.var.get("protein_names", peptides.var["protein"])
    species = species_of(names.groupby(peptides.var["protein"].to_numpy()).first())
    return peptides, species


def _omixed(peptides) -> tuple[dict[str, pd.DataFrame], dict, float]:
    """The three omixed tests, the moderation prior and the seconds taken."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proteins = omixed.tl.summarize_proteins(
            peptides, formula=FORMULA, remove=(), progress=False
        )
        plain = omixed.tl.test(proteins, contrast=CONTRAST, peptides=peptides)
        moderated = omixed.tl.test(
            proteins, contrast=CONTRAST, peptides=peptides, moderate=True, key_added="moderated"
        )
        hurdle = omixed.tl.test(
            proteins, contrast=CONTRAST, peptides=peptides, moderate=True, hurdle=True
        )
    seconds = time.perf_counter() - start
    results = {
        "omixed": plain[["pvalue", "padj"]],
        "omixed moderated": moderated[["pvalue", "padj"]],
        "omixed hurdle": hurdle[["hurdle_pvalue", "hurdle_padj"]].set_axis(
            ["pvalue", "padj"], axis=1
        ),
    }
    prior = {k: proteins.uns["moderated"][k] for k in ("df_prior", "n_prior")}
    prior["model"] = omixed.get.model(proteins)
    return results, prior, seconds


def _lme4(peptides) -> tuple[pd.DataFrame | None, float]:
    if not _have_r():
        return None, np.nan
    Y = peptides.X
    rows, cols = np.nonzero(np.isfinite(Y))
    long = pd.DataFrame(
        {
            "protein": peptides.var["protein"].to_numpy()[cols],
            "peptide": peptides.var_names.to_numpy()[cols],
            "sample": peptides.obs_names.to_numpy()[rows],
            "condition": peptides.obs["condition"].to_numpy()[rows],
            "y": Y[rows, cols],
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "long.csv", Path(tmp) / "out.csv"
        long.to_csv(src, index=False)
        run = subprocess.run(
            ["Rscript", str(PEER), str(src), FORMULA, "conditionB", str(out)],
            capture_output=True,
            text=True,
            check=True,
        )
        table = pd.read_csv(out).set_index("protein")
    table.index = table.index.astype(str)
    table = table.rename(columns={"p": "pvalue"})
    ok = table["pvalue"].notna()
    table["padj"] = np.nan
    table.loc[ok, "padj"] = stats.false_discovery_control(table.loc[ok, "pvalue"], method="bh")
    return table[["estimate", "pvalue", "padj"]], float(run.stdout.split()[-1])


def _have_r() -> bool:
    try:
        probe = subprocess.run(
            ["Rscript", "-e", "suppressPackageStartupMessages({library(lme4); library(lmerTest)})"],
            capture_output=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _score(name: str, method: str, table: pd.DataFrame, species: pd.Series) -> dict:
    kind = species.reindex(table.index)
    tested = table["pvalue"].notna() & kind.notna()
    null = table.loc[tested & (kind == "HUMAN"), "pvalue"]
    called = table["padj"] < 0.05
    true = kind.isin(["YEAST", "ECOLI"])
    top = table.loc[tested].sort_values("pvalue").head(50)
    return {
        "input": name,
        "method": method,
        "tested": int(tested.sum()),
        "human p<0.05": float((null < 0.05).mean()),
        "human KS D": float(stats.kstest(null, "uniform").statistic) if len(null) else np.nan,
        "TP (BH 5%)": int((called & true & tested).sum()),
        "FP (BH 5%)": int((called & (kind == "HUMAN") & tested).sum()),
        "true in top 50": int(true.reindex(top.index).sum()),
    }


def main() -> None:
    rows, priors = [], []
    for name, (file, options, _) in INPUTS.items():
        peptides, species = _peptides(file, options)
        results, prior, seconds = _omixed(peptides)
        model = prior.pop("model")
        lme4, r_seconds = _lme4(peptides)
        if lme4 is not None:
            results["lme4 + lmerTest"] = lme4
        for method, table in results.items():
            rows.append(_score(name, method, table, species))
        if lme4 is not None:  # omixed on the proteins lme4 could fit (it refuses the others)
            fitted = lme4.index[lme4["pvalue"].notna()]
            for method in ("omixed", "omixed moderated"):
                subset = results[method].reindex(fitted)
                subset = subset.assign(
                    padj=stats.false_discovery_control(subset["pvalue"].fillna(1.0), method="bh")
                )
                rows.append(_score(name, f"{method} (lme4's proteins)", subset, species))
        # The moment estimator on the same residual variances, for comparison.
        mom = lmm.contrast_moments_grouped(
            model,
            *_long(peptides),
            CONTRAST,
        )
        ok = mom["sigma2"].notna() & (mom["df_effective"] > 0)
        legacy = lmm.squeeze_var(mom.loc[ok, "sigma2"], mom.loc[ok, "df_effective"], legacy=True)
        priors.append(
            {
                "input": name,
                "d0 (likelihood)": prior["df_prior"],
                "d0 (moments)": legacy.df_prior,
                "variances": prior["n_prior"],
                "df < 1": int((mom.loc[ok, "df_effective"] < 1).sum()),
                "omixed s": seconds,
                "lme4 s": r_seconds,
            }
        )
    with pd.option_context("display.width", 160):
        print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print()
        print(pd.DataFrame(priors).to_string(index=False, float_format=lambda v: f"{v:.2f}"))


def _long(peptides):
    Y = peptides.X
    rows, cols = np.nonzero(np.isfinite(Y))
    long = pd.DataFrame(
        {
            "feature": peptides.var["protein"].astype(str).to_numpy()[cols],
            "peptide": peptides.var_names.to_numpy()[cols],
            "sample": peptides.obs_names.astype(str).to_numpy()[rows],
            "y": Y[rows, cols],
        }
    )
    obs = peptides.obs.copy()
    obs.index = obs.index.astype(str)
    return long, obs


if __name__ == "__main__":
    main()
