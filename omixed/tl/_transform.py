"""``tl.transform``: correct new samples with a saved fit, without refitting."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import _fitstore
from .._utils import get_matrix, set_matrix
from ..lmm._correction import per_sample

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
    ``None``, or the modified copy when ``copy=True``.  Stores the reference's fit under ``key``
    (as :func:`omixed.tl.fit` would, for the features of ``adata``: the model the correction
    used), and writes ``layers[layer_added]``, ``varm[f"{key}_new_blup_{term}"]`` for each term
    with new levels (features × new levels) and ``uns[f"{key}_transform"]`` (new levels per
    term).

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
    model = _fitstore.read(reference, key)
    record = _fitstore.info(reference, key)
    remove = [remove] if isinstance(remove, str) else list(remove)
    unknown = [t for t in remove if t not in model.spec.term_names]
    if unknown:
        raise ValueError(
            f"cannot remove {unknown}: random terms of the fit are {list(model.spec.term_names)}"
        )
    twice = sorted({t for t in remove if remove.count(t) > 1})
    if twice:
        raise ValueError(f"remove lists {twice} more than once; each term is removed once")
    if any(not t.is_intercept for t in model.spec.terms):
        raise ValueError("transform supports random intercepts only (the fit has random slopes)")
    missing = adata.var_names.difference(reference.var_names)
    if len(missing):
        raise ValueError(
            f"{len(missing)} feature(s) are not in the reference fit, e.g. {list(missing[:5])}"
        )
    if layer_added == layer:
        raise ValueError(f"layer_added={layer_added!r} is the layer being corrected")
    model = model.subset(adata.var_names)
    design = model.spec.evaluate(adata.obs, new_levels=True)  # fixed levels must be known
    Y = get_matrix(adata, layer)
    beta = np.nan_to_num(model.beta.to_numpy())
    resid = Y - design.X @ beta.T

    effects, new_levels, Zs, new_vars = {}, {}, [], []
    for term in design.terms:
        known = per_sample(model.blup[term.name].to_numpy(), term.codes)
        effects[term.name] = known
        resid -= known
        labels = _row_labels(adata.obs, term.group)
        new = sorted(set(labels[term.codes < 0].tolist()))
        new_levels[term.name] = new
        if new:
            Z = (labels[:, None] == np.array(new)[None, :]).astype(np.float64)
            Zs.append((term.name, new, Z))
            new_vars.append(np.nan_to_num(model.variance[term.name].to_numpy()))

    # Features the reference could not fit get no new BLUPs (their values stay uncorrected).
    resid[:, ~model.converged.to_numpy(dtype=bool)] = np.nan
    solved = _new_level_blups(resid, Zs, new_vars, model.variance["Residual"].to_numpy())
    params = {k: record[k] for k in ("layer", "weights_layer", "robust") if k in record}
    _fitstore.write(adata, model, key=key, params=params)
    values = Y.copy()
    added = []
    for term, contrib in effects.items():
        if term in solved:
            blups, Z = solved[term]
            contrib = contrib + Z @ np.nan_to_num(blups).T
            name = f"{key}_new_blup_{term}"
            adata.varm[name] = pd.DataFrame(blups, index=adata.var_names, columns=new_levels[term])
            added.append(name)
        if term in remove:
            values -= contrib
    set_matrix(adata, values, layer_added)
    adata.uns[f"{key}_transform"] = {
        "formula": model.spec.formula,
        "removed": remove,
        "new_levels": new_levels,
        "layer": "" if layer is None else layer,
        "layer_added": layer_added,
    }
    _fitstore.register(adata, key, layers=[layer_added], varm=added, uns=[f"{key}_transform"])
    return adata if copy else None


def _row_labels(obs: pd.DataFrame, group: tuple[str, ...]) -> np.ndarray:
    """Each row's level of a grouping factor as text (interactions joined by ':')."""
    return obs[list(group)].astype(str).agg(":".join, axis=1).to_numpy().astype(str)


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
