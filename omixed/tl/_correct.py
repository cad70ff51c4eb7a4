"""``tl.correct``: remove the fitted contribution of chosen terms from the data."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from .. import lmm
from .._utils import get_matrix, set_matrix
from ._fit import design_codes, fit_info, fixed_term

if TYPE_CHECKING:
    from anndata import AnnData


def random_contribution(adata: AnnData, key: str, term: str) -> np.ndarray:
    """Samples × features contribution ``Z_g b_g`` of a random term (0 where a BLUP is NaN).

    A BLUP is NaN when the feature was not fit, or the sample's level was never observed in that
    feature (then the feature has no value in any sample of that level).
    """
    info = fit_info(adata, key)
    blup = adata.varm[f"{key}_blup_{term}"]
    labels = design_codes(adata.obs, list(info["terms"][term]["group"]))
    cols = blup.columns.get_indexer(labels)
    contrib = np.zeros((adata.n_obs, adata.n_vars))
    known = cols >= 0  # a sample whose level is absent from the fit gets no correction
    contrib[known] = np.nan_to_num(blup.to_numpy()[:, cols[known]].T)
    return contrib


def fixed_contribution(adata: AnnData, key: str, term: str) -> np.ndarray:
    """Samples × features contribution ``X_t β_t`` of the fixed term ``t`` (e.g. a covariate)."""
    info = fit_info(adata, key)
    spec = lmm.build_spec(adata.obs, info["formula"])
    cols = [i for i, c in enumerate(spec.fixed_names) if fixed_term(c) == term]
    beta = adata.varm[f"{key}_beta"].to_numpy()[:, cols]
    return spec.X[:, cols] @ np.nan_to_num(beta).T


def unshrunk_contribution(adata: AnnData, key: str, term: str, layer: str | None) -> np.ndarray:
    """Contribution of a random term estimated without shrinkage (GLS, other terms kept random).

    The term is refit as a fixed factor with sum-to-zero coding, so its effects are deviations
    from the mean level, while the remaining random terms stay random; this is limma's
    ``removeBatchEffect`` with crossed donors/samples handled by the mixed model.
    """
    info = fit_info(adata, key)
    fixed, random = lmm.parse_formula(info["formula"])
    others = "".join(f" + ({e}{bars}{g})" for e, bars, g in random if g != term)
    obs = adata.obs.copy()
    column = "_omixed_removed"
    obs[column] = design_codes(obs, list(info["terms"][term]["group"]))
    formula = f"~ {fixed} + C({column}, contr.sum){others}"
    res = lmm.fit(get_matrix(adata, layer), obs, formula, reml=info["reml"])
    cols = [i for i, name in enumerate(res.spec.fixed_names) if name.startswith(f"C({column}")]
    return res.spec.X[:, cols] @ np.nan_to_num(res.beta.to_numpy()[:, cols]).T


def correct(
    adata: AnnData,
    *,
    key: str = "lmm",
    remove: Sequence[str] = ("batch",),
    method: Literal["blup", "full"] = "blup",
    layer: str | None = None,
    layer_added: str = "corrected",
    copy: bool = False,
) -> AnnData | None:
    """Subtract the fitted contribution of ``remove`` terms from the data.

    For a random term, ``method`` chooses the estimate of each level's effect:

    ``"blup"`` (default)
        The BLUP (conditional mode): the best predictor of the batch effect under the model,
        closest to the batch-free truth, but shrunk toward zero, so a small part of each
        batch's shift stays (the less data per batch, the more).
    ``"full"``
        The unshrunk GLS estimate (the term refit as a sum-coded fixed factor, the other random
        terms kept random): batch means are removed completely, as limma's
        ``removeBatchEffect`` does, at the cost of also removing their sampling noise.

    For a fixed term (a nuisance covariate) the contribution is ``X_t β_t``.  Missing values
    stay missing.  Features that could not be fit are left unchanged.

    Parameters
    ----------
    adata
        AnnData fitted with :func:`omixed.tl.fit`.
    key
        The ``key_added`` of that fit.
    remove
        Terms to remove: random-term names (``"batch"``, ``"batch:cask"``) or fixed terms.
    method
        ``"blup"`` or ``"full"`` (see above).
    layer
        The data to correct; by default the layer the fit used.
    layer_added
        Layer that receives the corrected values.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``.  Writes ``layers[layer_added]`` and
    ``uns[f"{key}_correct"]`` (terms removed, source layer, features left unchanged).

    Examples
    --------
    >>> import omixed
    >>> adata = omixed.datasets.example()
    >>> omixed.tl.fit(adata, "~ condition + (1|batch) + (1|donor)", progress=False)
    >>> omixed.tl.correct(adata, remove=["batch"])
    >>> adata.layers["corrected"].shape == adata.shape
    True
    """
    adata = adata.copy() if copy else adata
    info = fit_info(adata, key)
    if isinstance(remove, str):
        remove = [remove]
    random_terms = list(info["terms"])
    fixed_terms = [t for t in info["fixed_terms"] if t != "Intercept"]
    unknown = [t for t in remove if t not in random_terms and t not in fixed_terms]
    if unknown:
        raise ValueError(
            f"cannot remove {unknown}: not in the fit {info['formula']!r} (random terms: "
            f"{random_terms}, fixed terms: {fixed_terms})"
        )
    for term in remove:
        factors = list(info.get("nested_in", {}).get(term, []))
        if factors:
            warnings.warn(
                f"{term!r} is nested in {factors}: its levels differ in {factors} too, so part of "
                f"that biology sits in the fixed effect estimated between {term} levels and "
                f"removing {term!r} cannot separate them",
                UserWarning,
                stacklevel=2,
            )
    if method not in ("blup", "full"):
        raise ValueError(f"method must be 'blup' or 'full', got {method!r}")
    if layer is None:
        layer = info["layer"] or None
    values = get_matrix(adata, layer)
    for term in remove:
        if term not in random_terms:
            values -= fixed_contribution(adata, key, term)
        elif method == "full":
            values -= unshrunk_contribution(adata, key, term, layer)
        else:
            values -= random_contribution(adata, key, term)
    set_matrix(adata, values, layer_added)
    unfit = ~adata.var[f"{key}_converged"].to_numpy(dtype=bool)
    adata.uns[f"{key}_correct"] = {
        "removed": list(remove),
        "method": method,
        "layer": "" if layer is None else layer,
        "layer_added": layer_added,
        "n_unchanged": int(unfit.sum()),
    }
    return adata if copy else None
