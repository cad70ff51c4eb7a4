"""``tl.transform``: correct new samples with a saved fit, without refitting."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import lmm
from .._utils import get_matrix, set_matrix
from ._correct import per_sample
from ._fit import design_codes, fit_info

if TYPE_CHECKING:
    from anndata import AnnData


def transform(
    adata: AnnData,
    reference: AnnData,
    *,
    key: str = "lmm",
    remove: Sequence[str] = ("batch",),
    layer: str | None = None,
    layer_added: str = "corrected",
    copy: bool = False,
) -> AnnData | None:
    """Correct new samples with the fit stored in ``reference`` (no refit).

    Each feature keeps the reference's fixed effects β̂ and variance components.  Levels of a
    random term that the reference saw keep their stored BLUPs; levels that are new (a new batch,
    new donors) get their BLUPs in closed form from the new samples' residuals
    ``r = y − Xβ̂ − Σ(known levels' effects)``::

        b̂_new = G Z' V⁻¹ r,    V = σ² I + Σ_g σ²_g Z_g Z_g'   (new levels only, observed rows)

    with ``G`` the saved variance components: the BLUP the model would give these levels if its
    parameters were known.  Then the ``remove`` terms' effects are subtracted, as
    ``tl.correct(method="blup")`` does for the reference's own samples (known levels are exactly
    that).  The reference can be an AnnData read back from the h5ad ``tl.fit`` wrote.

    Parameters
    ----------
    adata
        New samples × the reference's features (matched by name; extra features are an error).
    reference
        AnnData fitted with :func:`omixed.tl.fit` (random intercepts only).
    key
        The ``key_added`` of that fit.
    remove
        Random terms whose effects are subtracted.
    layer
        Data to correct (default ``adata.X``; must be on the reference's scale).
    layer_added
        Layer receiving the corrected values.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``.  Writes ``layers[layer_added]``,
    ``varm[f"{key}_blup_{term}"]`` for each term (known and new levels) and
    ``uns[f"{key}_transform"]`` (new levels per term).

    Examples
    --------
    >>> import omixed
    >>> data = omixed.datasets.example()
    >>> reference = data[data.obs["batch"] != "B3"].copy()
    >>> omixed.tl.fit(reference, "~ condition + (1|batch) + (1|donor)", progress=False)
    >>> new = data[data.obs["batch"] == "B3"].copy()
    >>> omixed.tl.transform(new, reference, remove=["batch"])
    >>> new.uns["lmm_transform"]["new_levels"]["batch"]
    ['B3']
    """
    adata = adata.copy() if copy else adata
    info = fit_info(reference, key)
    remove = [remove] if isinstance(remove, str) else list(remove)
    unknown = [t for t in remove if t not in info["terms"]]
    if unknown:
        raise ValueError(
            f"cannot remove {unknown}: random terms of the fit are {list(info['terms'])}"
        )
    if any(t.get("covariate", "1") != "1" for t in info["terms"].values()):
        raise ValueError("transform supports random intercepts only (the fit has random slopes)")
    missing = adata.var_names.difference(reference.var_names)
    if len(missing):
        raise ValueError(
            f"{len(missing)} feature(s) are not in the reference fit, e.g. {list(missing[:5])}"
        )
    Y = get_matrix(adata, layer)
    ref = reference[:, adata.var_names]
    X = _fixed_matrix(adata.obs, reference.obs, info)
    beta = np.nan_to_num(ref.varm[f"{key}_beta"].to_numpy())
    variance = ref.varm[f"{key}_variance"]
    resid = Y - X @ beta.T

    effects, new_levels, Zs, new_vars = {}, {}, [], []
    for term, meta in info["terms"].items():
        labels = design_codes(adata.obs, list(meta["group"]))
        saved = ref.varm[f"{key}_blup_{term}"]
        codes = saved.columns.get_indexer(labels)  # -1: a level the reference never saw
        new = sorted({str(v) for v in labels[codes < 0]})
        new_levels[term] = new
        contrib = per_sample(saved.to_numpy(), codes)
        effects[term] = (saved, contrib)
        resid -= contrib
        if new:
            Z = (labels[:, None] == np.array(new)[None, :]).astype(np.float64)
            Zs.append((term, new, Z))
            new_vars.append(np.nan_to_num(variance[term].to_numpy()))

    # Features the reference could not fit get no new BLUPs (their values stay uncorrected).
    fitted = ref.var[f"{key}_converged"].to_numpy(dtype=bool)
    resid[:, ~fitted] = np.nan
    solved = _new_level_blups(resid, Zs, new_vars, variance["Residual"].to_numpy())
    values = Y.copy()
    for term, (saved, contrib) in effects.items():
        table = saved
        if term in solved:
            blups, Z = solved[term]
            contrib = contrib + Z @ np.nan_to_num(blups).T
            fresh = pd.DataFrame(blups, index=saved.index, columns=new_levels[term])
            table = pd.concat([saved, fresh], axis=1)
        adata.varm[f"{key}_blup_{term}"] = table
        if term in remove:
            values -= contrib
    set_matrix(adata, values, layer_added)
    adata.uns[f"{key}_transform"] = {
        "formula": info["formula"],
        "removed": remove,
        "new_levels": new_levels,
        "layer": "" if layer is None else layer,
        "layer_added": layer_added,
    }
    return adata if copy else None


def _fixed_matrix(obs: pd.DataFrame, ref_obs: pd.DataFrame, info: dict) -> np.ndarray:
    """The new samples' fixed-effects rows, coded exactly as the reference's columns."""
    fixed_formula, _ = lmm.parse_formula(info["formula"])
    both = pd.concat([ref_obs, obs], axis=0, ignore_index=True)
    spec = lmm.build_spec(both, f"~ {fixed_formula}", drop_aliased=True)
    if list(spec.fixed_names) != list(info["fixed_effects"]):
        extra = sorted(set(spec.fixed_names) - set(info["fixed_effects"]))
        raise ValueError(
            f"the new samples' design has fixed effects the reference fit lacks: {extra} "
            "(a level of a fixed factor the reference never saw)"
        )
    return spec.X[len(ref_obs) :]


def _new_level_blups(
    resid: np.ndarray,
    Zs: list[tuple[str, list[str], np.ndarray]],
    variances: list[np.ndarray],
    sigma2: np.ndarray,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``G Z' V⁻¹ r`` per feature for the new levels of every term, all features at once.

    Missing values drop out exactly: their rows of V become the identity and their residual 0.
    """
    if not Zs:
        return {}
    n, m = resid.shape
    observed = np.isfinite(resid).T  # features × samples
    r = np.where(observed, resid.T, 0.0)
    V = np.zeros((m, n, n))
    for (_, _, Z), var in zip(Zs, variances, strict=True):
        V += var[:, None, None] * (Z @ Z.T)[None]
    mask = observed[:, :, None] & observed[:, None, :]
    V = np.where(mask, V, 0.0)
    idx = np.arange(n)
    V[:, idx, idx] += np.where(observed, np.nan_to_num(sigma2)[:, None], 1.0)
    w = np.linalg.solve(V, r[:, :, None])[:, :, 0]  # V⁻¹ r
    out = {}
    for (term, _, Z), var in zip(Zs, variances, strict=True):
        blups = var[:, None] * np.einsum("nl,mn->ml", Z, w)
        seen = np.einsum("nl,mn->ml", Z, observed.astype(np.float64)) > 0
        out[term] = (np.where(seen, blups, np.nan), Z)
    return out
