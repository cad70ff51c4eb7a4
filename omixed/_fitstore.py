"""The one place a fitted model is written into an AnnData and read back.

A fit under ``key`` (``"lmm"`` by default) is stored as

``var[f"{key}_criterion"]``, ``_converged``, ``_n_obs``, ``_n_iter``, ``_reason``, ``_notes``
    per-feature results;
``varm[f"{key}_beta"]``, ``_se``, ``_variance``, ``_theta``, ``_blup_<term>``
    per-feature tables;
``uns[key]``
    the model: its :class:`~omixed.lmm.Specification` as JSON (``"specification"``), plus a
    readable summary (formula, terms and levels, fixed effects, failures), the layers it used
    and a ``fit_id`` fingerprint of model and results.

:func:`read` rebuilds the :class:`~omixed.lmm.LMMResult` from exactly these entries (checking
that they still belong together), so every consumer — ``tl.correct``, ``tl.test``,
``tl.variance_partition``, ``tl.transform``, the plots and the command line — works from the
stored model and evaluates its specification on the data by name.  Results derived from a fit
(corrected layers, variance fractions, tests) are registered under it with :func:`register`;
writing a new fit under the same key removes them, so nothing computed from an old model can
pass for a result of the new one.  :func:`save` / :func:`load` put a fit alone in an h5ad file
(a format that cannot run code), which is how workflow jobs hand fits to each other.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from . import lmm
from ._choices import check_key

if TYPE_CHECKING:
    import os

    from anndata import AnnData

_VAR = ("criterion", "converged", "n_obs", "n_iter", "reason", "notes")
_VARM = ("beta", "se", "variance", "theta")


def info(adata: AnnData, key: str) -> dict:
    """The ``uns`` record of the fit under ``key``, with a clear error when there is none."""
    record = adata.uns.get(key)
    if not isinstance(record, dict) or "specification" not in record:
        fits = [k for k, v in adata.uns.items() if isinstance(v, dict) and "specification" in v]
        raise KeyError(
            f"no fit stored under uns[{key!r}]; run omixed.tl.fit(adata, ..., key_added={key!r})"
            + (f" (fits stored: {fits})" if fits else "")
        )
    return record


def clear(adata: AnnData, key: str) -> None:
    """Remove the fit under ``key`` and everything registered as derived from it."""
    record = adata.uns.get(key)
    derived = json.loads(record.get("derived", "{}")) if isinstance(record, dict) else {}
    prefix = f"{key}_"
    for name in [c for c in adata.var.columns if str(c).startswith(prefix)]:
        del adata.var[name]
    for store, names in (
        (adata.varm, [*derived.get("varm", []), *[k for k in adata.varm if k.startswith(prefix)]]),
        (adata.layers, [*derived.get("layers", []), f"{key}_huber"]),
        (adata.uns, [*derived.get("uns", []), key]),
    ):
        for name in dict.fromkeys(names):
            if name in store:
                del store[name]


def register(adata: AnnData, key: str, *, layers=(), varm=(), uns=()) -> None:
    """Record results derived from the fit under ``key``, so a refit removes them."""
    record = info(adata, key)
    derived = json.loads(record.get("derived", "{}"))
    for kind, names in (("layers", layers), ("varm", varm), ("uns", uns)):
        derived[kind] = list(dict.fromkeys([*derived.get(kind, []), *names]))
    record["derived"] = json.dumps(derived)


def write(
    adata: AnnData,
    result: lmm.LMMResult,
    *,
    key: str,
    params: dict | None = None,
) -> None:
    """Store ``result`` (features = ``adata``'s variables) under ``key``, replacing any fit there.

    ``params`` are recorded in ``uns[key]`` as given (e.g. the layer the fit used).
    """
    from . import __version__

    check_key(key)
    if not result.feature_names.astype(str).equals(adata.var_names.astype(str)):
        raise ValueError("the result's features are not adata's variables (same names, order)")
    clear(adata, key)
    spec = result.spec
    for name in _VAR:
        values = getattr(result, name)
        adata.var[f"{key}_{name}"] = (
            values.astype(str).to_numpy() if name in ("reason", "notes") else values.to_numpy()
        )
    for name in _VARM:
        adata.varm[f"{key}_{name}"] = getattr(result, name).set_axis(adata.var_names)
    for term, table in result.blup.items():
        adata.varm[f"{key}_blup_{term}"] = table.set_axis(adata.var_names)
    failures = result.reason[result.reason != ""].value_counts()
    adata.uns[key] = {
        **(params or {}),
        "formula": spec.formula,
        "reml": bool(result.reml),
        "terms": {
            t.name: {"levels": list(t.labels), "group": list(t.group), "covariate": t.covariate}
            for t in spec.terms
        },
        "fixed_effects": list(spec.fixed_names),
        "nested_in": {k: list(v) for k, v in spec.nested_in.items()},
        "omixed_version": __version__,
        "n_features": int(result.n_features),
        "n_converged": int(result.converged.sum()),
        "n_failed": int((~result.converged).sum()),
        "failures": {str(k): int(v) for k, v in failures.items()},
        "specification": spec.to_json(),
        "fit_id": _fit_id(result),
        "derived": "{}",
    }


def _fit_id(result: lmm.LMMResult) -> str:
    """A fingerprint of the model and its results (the same fit gives the same id)."""
    digest = hashlib.sha256(result.spec.to_json().encode())
    digest.update("\0".join(map(str, result.feature_names)).encode())
    for values in (result.criterion, result.theta, result.beta):
        digest.update(np.ascontiguousarray(values.to_numpy(dtype=np.float64)).tobytes())
    return digest.hexdigest()[:32]


def read(adata: AnnData, key: str = "lmm") -> lmm.LMMResult:
    """The fit stored under ``key`` as an :class:`~omixed.lmm.LMMResult` (see :func:`write`)."""
    record = info(adata, key)
    spec = lmm.Specification.from_json(str(record["specification"]))
    index = adata.var_names
    tables = {}
    expected = {
        "beta": list(spec.fixed_names),
        "se": list(spec.fixed_names),
        "theta": [*spec.term_names, *spec.extra_names],
        "variance": [*spec.term_names, *spec.covariance_names, "Residual"],
    }
    for name in _VARM:
        tables[name] = _table(adata, f"{key}_{name}", expected[name], key)
    blup = {t.name: _table(adata, f"{key}_blup_{t.name}", list(t.labels), key) for t in spec.terms}
    per_feature = {}
    for name in _VAR:
        column = f"{key}_{name}"
        if column not in adata.var.columns:
            raise ValueError(f"the fit under {key!r} is incomplete: var[{column!r}] is missing")
        per_feature[name] = pd.Series(adata.var[column].to_numpy(), index=index, name=name)
    per_feature["converged"] = per_feature["converged"].astype(bool)
    for name in ("reason", "notes"):
        per_feature[name] = per_feature[name].astype(object)
    return lmm.LMMResult(spec=spec, reml=bool(record["reml"]), blup=blup, **tables, **per_feature)


def _table(adata: AnnData, name: str, columns: list[str], key: str) -> pd.DataFrame:
    if name not in adata.varm:
        raise ValueError(f"the fit under {key!r} is incomplete: varm[{name!r}] is missing")
    table = adata.varm[name]
    if not isinstance(table, pd.DataFrame) or [str(c) for c in table.columns] != columns:
        found = list(table.columns) if isinstance(table, pd.DataFrame) else type(table).__name__
        raise ValueError(
            f"varm[{name!r}] no longer matches the fit under {key!r}: columns {found}, expected "
            f"{columns}; refit"
        )
    return table.set_axis(adata.var_names).astype(np.float64)


def save(result: lmm.LMMResult, path: str | os.PathLike, *, params: dict | None = None) -> None:
    """Write ``result`` alone (no data) to an h5ad file, atomically; :func:`load` reads it."""
    import anndata as ad

    from ._utils import atomic_path

    holder = ad.AnnData(var=pd.DataFrame(index=result.feature_names.astype(str)))
    write(holder, result, key="lmm", params=params)
    with atomic_path(path) as tmp:
        holder.write_h5ad(tmp)


def load(path: str | os.PathLike) -> tuple[lmm.LMMResult, dict]:
    """The fit in a file :func:`save` wrote, and its ``uns`` record."""
    import anndata as ad

    try:
        holder = ad.read_h5ad(path)
        return read(holder, "lmm"), dict(holder.uns["lmm"])
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"{path} is not a fit file written by omixed: {err}") from err
