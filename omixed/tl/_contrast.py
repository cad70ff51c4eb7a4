"""``tl.test``: per-feature t-tests of a fixed-effect contrast (lmerTest df, optional eBayes)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import _fitstore
from .._utils import get_matrix
from ..lmm import (
    contrast_moments,
    contrast_moments_grouped,
    contrast_vector,
    detection_test,
    fisher_combined,
    t_table,
)
from ._proteins import peptide_values

if TYPE_CHECKING:
    from anndata import AnnData

_METHODS = ("satterthwaite", "residual")


def test(
    adata: AnnData,
    *,
    contrast,
    key: str = "lmm",
    method: str = "satterthwaite",
    moderate: bool = False,
    robust: bool = False,
    hurdle: bool = False,
    key_added: str | None = None,
    layer: str | None = None,
    peptides: AnnData | None = None,
) -> pd.DataFrame:
    """Test a fixed-effect contrast in every feature of a mixed-model fit.

    Per feature, the contrast ``l'β`` of the REML fit stored under ``key`` is estimated with its
    standard error ``√(l'Cov(β̂)l)`` and tested against 0 with a t statistic.  The denominator
    degrees of freedom are

    ``"satterthwaite"``
        Satterthwaite's approximation, exactly as lmerTest computes it (Kuznetsova et al. 2017):
        ``2 (l'Cl)² / (g'Ag)`` with ``g`` the gradient of ``l'Cov(β̂)l`` in the variance
        parameters (θ, σ) and ``A`` their asymptotic covariance, twice the inverse Hessian of
        the REML deviance; see :func:`omixed.lmm.satterthwaite`.
    ``"residual"``
        ``n − p`` (observations minus estimable fixed effects), the naive choice; anticonservative
        for contrasts between groups of a random factor (e.g. condition across donors).

    With ``moderate=True`` the residual variances ``σ̂²`` are moderated across features by
    limma's ``squeezeVar`` (Smyth 2004), as msqrob2 does for mixed models: each ``σ̂²_i`` comes
    with msqrob2's effective residual df ``d_i = RSS_i/σ̂²_i`` (conditional residuals), a
    scaled-F prior ``(d₀, s₀²)`` is fitted and the posterior is
    ``σ̃²_i = (d_i σ̂²_i + d₀ s₀²)/(d_i + d₀)``.  The prior is limma's weighted maximum
    likelihood for unequal df (its default since 3.62; each feature weighted by
    ``1/ψ'(d_i/2)``): on incomplete data many proteins have ``d_i`` well below 1, and limma's
    older moment estimator, dominated by them, returns ``d₀ = ∞`` — one common variance for
    every feature (see :func:`omixed.lmm.squeeze_var`).  ``robust=True`` protects the prior
    against outlying variances as limma's ``robust = TRUE`` does.  What is moderated: σ² only;
    the whole ``Cov(β̂) = σ² C(θ̂)`` is rescaled by ``σ̃²_i/σ̂²_i`` with the relative variances
    θ̂ kept, so ``SE`` becomes ``SE·σ̃_i/σ̂_i``.  How the df combine: ``"residual"`` gives limma's and
    msqrob2's ``df + d₀``; ``"satterthwaite"`` counts the prior as ``d₀`` extra observations of
    σ in the Satterthwaite computation (``4d₀/σ̂²`` added to the σ entry of the deviance
    Hessian), which equals ``n − p + d₀`` without random effects and stays near the lmerTest df
    when the contrast's variance comes from a random term (plain ``df_satterthwaite + d₀`` is
    anticonservative there).  Both are capped at the pooled ``Σ d_i``, as in limma.

    A contrast is tested in a feature only if that feature's observed samples can estimate it
    (``l`` in the row space of its design): a protein never seen in the reference condition has
    no "vs reference" estimate, while the contrast between two levels it was seen in is
    reported — with the same value whichever aliased coefficient the fit dropped.  Untestable
    features get NaN and a ``reason``.

    ``hurdle=True`` (protein fits with ``peptides``) adds msqrob2's count component
    (:func:`omixed.lmm.detection_test`): a quasi-binomial test of how many of the protein's
    peptides were detected per sample, on the fit's fixed-effects design.  It finds proteins
    that disappear from a condition, which an intensity model cannot test.  Its p-value is
    combined with the intensity p-value by Fisher's method where both exist.

    Parameters
    ----------
    adata
        AnnData fitted by :func:`omixed.tl.fit` (REML), or the protein-level AnnData returned by
        :func:`omixed.tl.summarize_proteins` (then pass ``peptides``).
    contrast
        A coefficient name (``"condition[T.treated]"``), a ``{name: weight}`` dict, a vector with
        one weight per fixed effect, or an expression such as
        ``"condition[T.b] - condition[T.c]"``; R-style names (``"conditiontreated"``) work where
        unambiguous.  Coefficients are listed in ``adata.uns[key]["fixed_effects"]``.
    key
        The ``key_added`` of the fit.
    method
        ``"satterthwaite"`` (default) or ``"residual"`` denominator df.
    moderate
        Moderate the residual variances across features (see above).
    robust
        With ``moderate``: limma's robust prior, protected against outlying variances.
    hurdle
        Add the detection (count) component and the combined p-value (protein fits only).
    key_added
        Where to store the results (default ``f"{key}_test_<contrast>"``).
    layer
        The matrix the model was fit to; default: the one recorded by the fit.  For a protein
        fit, the layer of ``peptides`` (default: the one ``summarize_proteins`` used).
    peptides
        For a protein-level fit: the samples × peptides AnnData passed to
        :func:`~omixed.tl.summarize_proteins` (the tests need the peptide values).

    Returns
    -------
    Table with one row per feature, sorted by p-value like limma's ``topTable`` (untestable
    features last): ``estimate``, ``se``, ``t``, ``df``, ``pvalue`` (two-sided), ``padj``
    (Benjamini–Hochberg over the testable features) and ``reason`` (why a feature has no test;
    empty otherwise).  With ``hurdle=True`` also the count component's ``logOR``, ``logOR_se``,
    ``logOR_df``, ``logOR_pvalue``, the combined ``hurdle_pvalue`` and ``hurdle_padj`` (by
    which the table is sorted) and ``basis``: which components the combined p-value rests on
    (``"intensity+detection"``, ``"detection"`` or ``"intensity"``).  The same columns, in
    feature order, are stored in ``adata.varm[key_added]``; the contrast, method and, with
    ``moderate``, the prior (``df_prior``, ``var_prior``, ``n_prior``: how many features
    informed it) in ``adata.uns[key_added]``.  Both are removed by a refit under ``key``.

    Examples
    --------
    >>> import omixed
    >>> adata = omixed.datasets.example()
    >>> omixed.tl.fit(adata, "~ condition + (1|batch) + (1|donor)", progress=False)
    >>> top = omixed.tl.test(adata, contrast="condition[T.treated]")
    >>> list(top.columns)
    ['estimate', 'se', 't', 'df', 'pvalue', 'padj', 'reason']
    >>> "lmm_test_condition_T_treated" in adata.varm
    True
    """
    model = _fitstore.read(adata, key)
    info = _fitstore.info(adata, key)
    if not model.reml:
        raise ValueError(f"the fit under {key!r} is ML; Satterthwaite df need a REML fit")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    names = list(model.spec.fixed_names)
    weights, label = contrast_vector(contrast, names)
    satterthwaite = method == "satterthwaite"
    if robust and not moderate:
        raise ValueError("robust=True is an option of moderation; pass moderate=True too")
    options = {"satterthwaite": satterthwaite, "moderate": moderate, "robust": robust}
    if hurdle and "protein_key" not in info:
        raise ValueError(
            "hurdle=True tests detected peptides per protein: it needs a protein-level fit "
            "(omixed.tl.summarize_proteins) and its peptides"
        )

    if "protein_key" in info:
        if peptides is None:
            raise ValueError(
                f"uns[{key!r}] is a protein-level fit (summarize_proteins): pass the peptide "
                "AnnData it was made from as peptides="
            )
        if info["protein_key"] not in peptides.var.columns:
            raise KeyError(
                f"peptides.var has no column {info['protein_key']!r} (the fit's protein_key)"
            )
        long = peptide_values(peptides, info["protein_key"], layer or info["source_layer"] or None)
        obs = peptides.obs.copy()
        obs.index = obs.index.astype(str)
        moments = contrast_moments_grouped(model, long, obs, weights, feature="protein", **options)
        if hurdle:
            X = model.spec.fixed.matrix(obs)
            counts, totals = _detections(peptides, info["protein_key"], adata.var_names, layer)
            detection = detection_test(counts, totals, X, weights, index=adata.var_names)
    else:
        if peptides is not None:
            raise ValueError(f"uns[{key!r}] is not a protein-level fit; peptides= is not used")
        Y = get_matrix(adata, layer if layer is not None else (info["layer"] or None))
        moments = contrast_moments(model, Y, adata.obs, weights, **options)

    df = moments["df_satterthwaite" if satterthwaite else "df_residual"]
    var = moments["var"]
    params = {
        "contrast": label,
        "weights": dict(zip(names, map(float, weights), strict=True)),
        "fit_key": key,
        "method": method,
        "moderate": bool(moderate),
        "robust": bool(robust),
        "hurdle": bool(hurdle),
    }
    if moderate:
        df, var = moments[f"{df.name}_post"], moments["var_post"]
        params.update(moments.attrs)

    table = t_table(moments["estimate"], var, df).set_axis(adata.var_names)
    table["padj"] = _bh(table["pvalue"].to_numpy())
    table["reason"] = moments["reason"].to_numpy()
    order = ["pvalue", "t"]
    if hurdle:
        for column in ("logOR", "se", "df", "pvalue"):
            name = "logOR" if column == "logOR" else f"logOR_{column}"
            table[name] = detection[column].to_numpy()
        table["hurdle_pvalue"] = fisher_combined(table["pvalue"], table["logOR_pvalue"])
        table["hurdle_padj"] = _bh(table["hurdle_pvalue"].to_numpy())
        has = pd.DataFrame(
            {"intensity": table["pvalue"].notna(), "detection": table["logOR_pvalue"].notna()}
        )
        table["basis"] = np.select(
            [has.all(axis=1), has["detection"], has["intensity"]],
            ["intensity+detection", "detection", "intensity"],
            "",
        )
        params["detection_prior"] = dict(detection.attrs)
        order = ["hurdle_pvalue", "t"]
    key_added = _fitstore.check_key(key_added or f"{key}_test_{_slug(weights, names)}")
    adata.varm[key_added] = table
    params["n_tested"] = int(table["pvalue"].notna().sum())
    params["fit_id"] = info["fit_id"]
    adata.uns[key_added] = params
    _fitstore.register(adata, key, varm=[key_added], uns=[key_added])
    return table.sort_values(order, na_position="last", key=_rank_key)


def _detections(
    peptides: AnnData, protein_key: str, proteins: pd.Index, layer: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Proteins × samples detected peptides, and each protein's peptides seen in any sample."""
    observed = np.isfinite(get_matrix(peptides, layer))
    owner = pd.Index(proteins).get_indexer(peptides.var[protein_key].astype(str))
    seen = observed.any(axis=0) & (owner >= 0)
    member = np.zeros((proteins.size, peptides.n_vars))
    member[owner[seen], np.flatnonzero(seen)] = 1.0
    return member @ observed.T, member.sum(axis=1)


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values over the finite entries (NaN stays NaN)."""
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        from scipy.stats import false_discovery_control  # scipy.stats takes 0.5 s to import

        out[ok] = false_discovery_control(p[ok], method="bh")
    return out


def _rank_key(column: pd.Series) -> pd.Series:
    # Ties in p (e.g. underflow to 0) are broken by |t|, largest first.
    return -column.abs() if column.name == "t" else column


def _slug(weights: np.ndarray, names: list[str]) -> str:
    """A key-safe name of the contrast: ``condition_T_b_minus_condition_T_c``."""
    parts = []
    for w, name in zip(weights, names, strict=True):
        if w == 0:
            continue
        prefix = ("minus_" if w < 0 else "plus_") if parts or w < 0 else ""
        factor = "" if abs(w) == 1 else f"{abs(w):g}_".replace(".", "p")
        parts.append(prefix + factor + re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_"))
    return "_".join(parts)
