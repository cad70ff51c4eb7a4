"""``tl.summarize_proteins``: peptide-level mixed models summarised to protein abundances."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd

from .. import _fitstore, lmm
from .._utils import get_matrix
from ._fit import warn_failures

if TYPE_CHECKING:
    from anndata import AnnData

_RESERVED = ("sample", "peptide")


def protein_formula(adata: AnnData) -> str:
    """The default per-protein model of :func:`summarize_proteins` for these samples.

    msqrob2's model, with the ``condition`` and ``batch`` parts only where ``adata.obs`` has
    those columns: ``~ condition + (1|batch) + (1|sample) + (1|peptide)``.

    Parameters
    ----------
    adata
        Samples × peptides (only ``obs`` is read).

    Returns
    -------
    The formula.

    Examples
    --------
    >>> import omixed
    >>> omixed.tl.protein_formula(omixed.datasets.example_peptides())
    '~ condition + (1|batch) + (1|sample) + (1|peptide)'
    """
    fixed = "condition" if "condition" in adata.obs.columns else "1"
    batch = " + (1|batch)" if "batch" in adata.obs.columns else ""
    return f"~ {fixed}{batch} + (1|sample) + (1|peptide)"


def peptide_values(adata: AnnData, protein_key: str, layer: str | None) -> pd.DataFrame:
    """Observed peptide values in long form: protein, peptide, sample, y (one row each)."""
    Y = get_matrix(adata, layer)
    rows, cols = np.nonzero(np.isfinite(Y))
    return pd.DataFrame(
        {
            "protein": adata.var[protein_key].astype(str).to_numpy()[cols],
            "peptide": adata.var_names.to_numpy()[cols],
            "sample": adata.obs_names.astype(str).to_numpy()[rows],
            "y": Y[rows, cols],
        }
    )


def summarize_proteins(
    adata: AnnData,
    *,
    protein_key: str = "protein",
    formula: str | None = None,
    layer: str | None = None,
    reml: bool = True,
    key_added: str = "lmm",
    n_jobs: int = 1,
    min_peptides: int = 1,
    remove: Sequence[str] | None = None,
    progress: bool | None = None,
    robust: bool = False,
) -> AnnData:
    """Fit one mixed model per protein on its peptide × sample values and summarise to proteins.

    The model (MSqRob/msqrob2's) is, per protein, ``y ~ condition + (1|batch) + (1|sample) +
    (1|peptide)`` on that protein's observed peptide intensities (log scale).  ``sample`` is the
    AnnData's observation and ``peptide`` its variable; both names are reserved in the formula.
    Proteins are bucketed by number of peptides and each bucket is one vectorized fit.

    Parameters
    ----------
    adata
        Samples × peptides on the log scale; ``var[protein_key]`` names each peptide's protein.
    protein_key
        Column of ``adata.var`` with the protein of each peptide.
    formula
        Model per protein; ``(1|sample)`` and ``(1|peptide)`` refer to observations and variables.
        Default: ``~ condition + (1|batch) + (1|sample) + (1|peptide)`` with the ``condition``
        and ``batch`` parts only where ``adata.obs`` has those columns.
    layer
        Use ``adata.layers[layer]`` instead of ``adata.X``.
    reml
        REML (default) or ML.
    key_added
        Prefix of the stored fit results (as in :func:`omixed.tl.fit`).
    n_jobs
        Worker processes per bucket.
    min_peptides
        Proteins with fewer observed peptides are left out (counted in ``uns``).
    remove
        Random terms subtracted for ``layers["corrected"]``; default: every random term of the
        formula other than ``sample`` and ``peptide`` (e.g. ``batch``), none if there is none.
    progress
        Show progress bars.
    robust
        Huber M-estimation (msqrob2's default): outlying peptide values are down-weighted.

    Returns
    -------
    Samples × proteins AnnData: ``X`` is the protein abundance per sample (fixed effects plus the
    random effects of every term but ``peptide``, i.e. adjusted for peptide ionisation), NaN for
    samples where the protein was not observed; ``layers["corrected"]`` is ``X`` without the
    ``remove`` terms' BLUPs; ``var["n_peptides"]`` and every result :func:`omixed.tl.fit` writes.
    Single-peptide proteins are fit without the peptide term (noted in ``var[f"{key}_notes"]``);
    coefficients not estimable for a protein are NaN.

    Examples
    --------
    >>> import omixed
    >>> peptides = omixed.datasets.example_peptides()
    >>> proteins = omixed.tl.summarize_proteins(peptides, min_peptides=2, progress=False)
    >>> proteins.n_obs == peptides.n_obs
    True
    """
    if protein_key not in adata.var.columns:
        raise KeyError(
            f"var has no column {protein_key!r} "
            f"(available: {', '.join(map(str, adata.var.columns))})"
        )
    if not adata.var_names.is_unique or not adata.obs_names.is_unique:
        raise ValueError("sample and peptide names must be unique")
    _fitstore.check_key(key_added)
    formula = protein_formula(adata) if formula is None else formula
    groups = [part.group_name for part in lmm.parse_formula(formula).random]
    if "peptide" not in groups:
        raise ValueError(f"the formula needs a (1|peptide) term, got {formula!r}")
    removable = [g for g in groups if g not in _RESERVED]
    remove = (
        removable if remove is None else ([remove] if isinstance(remove, str) else list(remove))
    )
    unknown = [t for t in remove if t not in removable]
    if unknown:
        raise ValueError(
            f"cannot remove {unknown}: the random terms of {formula!r} besides sample and "
            f"peptide are {removable}"
        )

    obs = adata.obs.copy()
    obs.index = obs.index.astype(str)
    long = peptide_values(adata, protein_key, layer)
    n_peptides = long.groupby("protein", sort=False)["peptide"].nunique()
    keep = n_peptides.index[n_peptides >= min_peptides]
    if keep.empty:
        raise ValueError(f"no protein has at least {min_peptides} observed peptides")
    long = long[long["protein"].isin(keep)]
    res, positions = lmm.fit_grouped(
        long,
        obs,
        formula,
        feature="protein",
        unit="sample",
        local="peptide",
        value="y",
        reml=reml,
        n_jobs=n_jobs,
        progress=progress,
        robust=robust,
    )
    proteins = res.feature_names

    # Protein abundance per sample: fixed effects of the sample's design plus its random effects.
    local = res.spec.term("peptide").levels[0][0]  # any peptide position: only codes of the
    design = res.spec.evaluate(obs.assign(sample=obs.index, peptide=local))  # others are used
    beta = res.beta.to_numpy()
    needed = (design.X[:, None, :] != 0) & np.isnan(beta)[None, :, :]
    abundance = np.einsum("sp,fp->sf", design.X, np.nan_to_num(beta))
    abundance[needed.any(axis=2)] = np.nan
    contributions = {}
    for term in (t for t in design.terms if t.name != "peptide"):
        blup = res.blup[term.name].to_numpy()
        effect = np.full((term.codes.size, blup.shape[0]), np.nan)
        effect[term.codes >= 0] = blup[:, term.codes[term.codes >= 0]].T
        contributions[term.name] = effect
        # A protein never seen in a sample has no sample effect there: its abundance is NaN.
        abundance = abundance + (effect if term.name == "sample" else np.nan_to_num(effect))
    corrected = abundance - sum(np.nan_to_num(contributions[t]) for t in remove)

    out = ad.AnnData(abundance, obs=adata.obs.copy(), var=pd.DataFrame(index=proteins.astype(str)))
    out.layers["corrected"] = corrected
    out.var["n_peptides"] = n_peptides.loc[proteins].to_numpy()
    params = {
        "layer": "",
        "weights_layer": "",
        "robust": bool(robust),
        "protein_key": protein_key,
        "min_peptides": int(min_peptides),
        "n_proteins_below_min_peptides": int((n_peptides < min_peptides).sum()),
        "removed": list(remove),
        "source_layer": "" if layer is None else layer,
    }
    _fitstore.write(out, res, key=key_added, params=params)
    warn_failures(res, key_added)
    out.uns[f"{key_added}_peptides"] = positions.reset_index().astype({"position": int})
    return out
