"""Fit one mixed model to many features: cross-products, optimization and estimates per chunk."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from joblib import Parallel, delayed, effective_n_jobs
from scipy import sparse
from threadpoolctl import threadpool_limits

from ._crossprod import Cross
from ._design import Design, plan_design
from ._result import LMMResult
from ._spec import FixedSpec, ModelSpec, aliased_mask, build_spec
from ._spectral import spectral_fit

__all__ = ["fit", "plan_fit", "run_plans"]

_DEFAULT_CHUNK_BYTES = 32 * 2**20
_MAX_CHUNK = 8192
# Below this many rest columns the per-feature matrices are small and BLAS threads only add
# overhead (OpenBLAS threads small products badly on a loaded machine); above it, a worker's
# share of the cores speeds up the few large factorizations.
_THREADED_DIM = 512
# Squared residual norm, relative to the column's own, treated as exact 0: a fixed-effect column
# aliased with earlier ones, values fit exactly by the fixed effects (prepare) or almost exactly
# by the random effects (the fit).
_EXACT = 1e-9


def _check_response(Y: np.ndarray, n_rows: int, nonfinite: str) -> np.ndarray:
    Y = np.asarray(Y)
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2:
        raise ValueError(f"Y must be a 2-D (rows × features) array, got {Y.ndim} dimensions")
    if not np.issubdtype(Y.dtype, np.number) or np.issubdtype(Y.dtype, np.complexfloating):
        raise ValueError(f"Y must be numeric, got dtype {Y.dtype}")
    Y = Y.astype(np.float64, copy=False)
    if Y.shape[0] != n_rows:
        raise ValueError(
            f"Y has {Y.shape[0]} rows but the data has {n_rows}; rows of Y are the data's rows "
            "(transpose a features × samples matrix)"
        )
    if nonfinite not in ("raise", "missing"):
        raise ValueError(f"nonfinite must be 'raise' or 'missing', got {nonfinite!r}")
    inf = np.isinf(Y)
    if inf.any() and nonfinite == "missing":
        warnings.warn(
            f"{int(inf.sum())} infinite value(s) in {int(inf.any(axis=0).sum())} feature(s) "
            "treated as missing",
            UserWarning,
            stacklevel=3,
        )
        return np.where(inf, np.nan, Y)
    if inf.any():
        rows, cols = np.nonzero(inf)
        where = ", ".join(
            f"(row {r}, feature {c})" for r, c in zip(rows[:5], cols[:5], strict=True)
        )
        raise ValueError(
            f"Y has {int(inf.sum())} infinite value(s), e.g. at {where}; use NaN for missing "
            "values or pass nonfinite='missing'"
        )
    return Y


def fit(
    Y: np.ndarray,
    data: pd.DataFrame,
    formula: str,
    *,
    reml: bool = True,
    n_jobs: int = 1,
    chunk_size: int | None = None,
    feature_names: list[str] | pd.Index | None = None,
    progress: bool | None = False,
    nonfinite: str = "raise",
    drop_aliased: bool = False,
    weights: np.ndarray | None = None,
    fixed: FixedSpec | tuple[FixedSpec, np.ndarray] | None = None,
) -> LMMResult:
    """Fit ``formula`` to every column of ``Y`` by REML (default) or ML.

    Each feature is fit on its observed (non-NaN) rows only.  Features are processed in chunks,
    each chunk as one batch of numpy arrays; ``n_jobs`` chunks run in parallel.  Results do not
    depend on ``n_jobs`` or ``chunk_size``.

    Parameters
    ----------
    Y
        ``(n_rows, n_features)`` responses; NaN marks a missing value.  Besides a numpy array,
        anything that slices like one (an h5py dataset, the ``X`` of an AnnData opened with
        ``backed="r"``) is read one chunk at a time, so only a few chunks are ever in memory.
    data
        ``n_rows`` rows holding the formula's columns.
    formula
        lme4-style formula, e.g. ``"y ~ condition + (1|batch) + (1|donor)"``; the left-hand side
        may be omitted.  Random terms: intercepts ``(1|g)``, crossed or nested ``(1|a:b)``,
        correlated slopes ``(x|g)`` and uncorrelated ones ``(x||g)`` or ``(0 + x|g)``.
    reml
        REML if true, else maximum likelihood.
    n_jobs
        Parallel worker processes over feature chunks (joblib).
    chunk_size
        Features per chunk; by default chosen to keep each chunk's arrays near 32 MiB.
    feature_names
        Names used as the index of the result tables.
    progress
        Show a progress bar over chunks (``None``: only for more than 10 chunks).
    nonfinite
        ``"raise"`` (default): ±inf in ``Y`` is an error naming where; ``"missing"``: treat
        them as missing values, with a warning.
    drop_aliased
        Drop fixed-effect columns that are linear combinations of earlier ones (with a
        warning) instead of raising.
    weights
        Precision weights, the shape of ``Y``: observation ``i`` has residual variance
        ``σ²/w_i`` (as lme4's ``weights``; e.g. voom weights for log-CPM).  They must be
        positive and finite where ``Y`` is observed.  ``variance["Residual"]`` is then σ², the
        variance of a unit-weight observation; the criterion includes ``−Σ log w_i``.
    fixed
        Fixed effects already learned (e.g. once on the units of a grouped fit, see
        :func:`~omixed.lmm.fit_grouped`): their encoding is applied to ``data`` instead of
        being learned from it.

    Returns
    -------
    :class:`~omixed.lmm.LMMResult` with criterion, variance components, fixed effects, standard
    errors, BLUPs, convergence flags and reasons.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from omixed import lmm
    >>> rng = np.random.default_rng(0)
    >>> data = pd.DataFrame({"batch": np.repeat(list("abcd"), 6), "cond": np.tile(["x", "y"], 12)})
    >>> Y = rng.normal(size=(24, 50)) + rng.normal(size=(4, 50)).repeat(6, axis=0)
    >>> res = lmm.fit(Y, data, "~ cond + (1|batch)")
    >>> res.variance.columns.tolist()
    ['batch', 'Residual']
    """
    plan = plan_fit(
        Y,
        data,
        formula,
        reml=reml,
        n_jobs=n_jobs,
        chunk_size=chunk_size,
        feature_names=feature_names,
        nonfinite=nonfinite,
        drop_aliased=drop_aliased,
        weights=weights,
        fixed=fixed,
    )
    return run_plans([plan], n_jobs=n_jobs, progress=progress)[0]


@dataclass
class _Plan:
    """One fit's work: its spec and design, and one task per chunk of features."""

    spec: ModelSpec
    design: Design
    feature_names: pd.Index
    reml: bool
    tasks: Iterator
    n_tasks: int

    def result(self, parts: list[dict[str, np.ndarray]]) -> LMMResult:
        merged = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]} if parts else {}
        return LMMResult.from_arrays(
            self.spec.specification, self.design.order, merged, self.feature_names, self.reml
        )


def plan_fit(
    Y: np.ndarray,
    data: pd.DataFrame,
    formula: str,
    *,
    reml: bool = True,
    n_jobs: int = 1,
    chunk_size: int | None = None,
    feature_names: list[str] | pd.Index | None = None,
    nonfinite: str = "raise",
    drop_aliased: bool = False,
    weights: np.ndarray | None = None,
    fixed: FixedSpec | tuple[FixedSpec, np.ndarray] | None = None,
) -> _Plan:
    """Check the inputs of :func:`fit` (same arguments) and split its work into chunk tasks,
    not yet run (see :func:`run_plans`).
    """
    for name, value in (("reml", reml), ("drop_aliased", drop_aliased)):
        if not isinstance(value, bool | np.bool_):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    spec = build_spec(data, formula, drop_aliased=drop_aliased, fixed=fixed)
    in_memory = isinstance(Y, np.ndarray | list | tuple) or not hasattr(Y, "shape")
    if in_memory:
        Y = _check_response(Y, spec.n_rows, nonfinite)
    else:
        # Out of core (an h5py dataset, a backed AnnData's X): checked and fit chunk by chunk.
        if weights is not None:
            raise ValueError("weights are not supported for out-of-core Y; load Y into memory")
        if len(Y.shape) != 2 or Y.shape[0] != spec.n_rows:
            raise ValueError(f"Y has shape {tuple(Y.shape)}; expected ({spec.n_rows}, features)")
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim == 1:
            weights = weights[:, None]
        if weights.shape != Y.shape:
            raise ValueError(f"weights have shape {weights.shape}, Y has {Y.shape}")
        bad = np.isfinite(Y) & ~(np.isfinite(weights) & (weights > 0))
        if bad.any():
            rows, cols = np.nonzero(bad)
            raise ValueError(
                f"{int(bad.sum())} observed value(s) have a weight that is not positive and "
                f"finite, e.g. at (row {rows[0]}, feature {cols[0]})"
            )
    design = plan_design(spec)
    m = Y.shape[1]
    if feature_names is None:
        feature_names = pd.RangeIndex(m)
    feature_names = pd.Index(feature_names)
    if len(feature_names) != m:
        raise ValueError(f"{len(feature_names)} feature names for {m} features")
    per_feature = design.bytes_per_feature(spec.n_rows)
    _check_memory(design, per_feature)
    if chunk_size is None:
        # As many features as fit the chunk budget (at least one), in balanced chunks, at
        # least one per worker (results do not depend on the chunking).
        chunk_size = int(max(1, min(_MAX_CHUNK, _DEFAULT_CHUNK_BYTES // per_feature)))
        workers = effective_n_jobs(n_jobs)
        n_chunks = max(-(-m // chunk_size), min(workers, -(-m // 64)))
        chunk_size = max(1, -(-m // max(n_chunks, 1)))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    bounds = [*range(0, m, chunk_size), m]
    chunks = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
    if not in_memory:  # a first pass, so bad values stop the run before any fitting
        for a, b in chunks:
            try:
                _check_response(_dense(Y[:, a:b]), spec.n_rows, "raise")
            except ValueError as exc:
                if nonfinite == "raise" or "infinite" not in str(exc):
                    raise ValueError(f"in features {a}..{b - 1} (counted from 0): {exc}") from exc

    def block(a: int, b: int) -> np.ndarray:
        if in_memory:
            return Y[:, a:b]
        return _check_response(_dense(Y[:, a:b]), spec.n_rows, nonfinite)

    threads = _blas_threads(design, n_jobs, len(chunks))

    def task(a: int, b: int):
        Yb = block(a, b)
        wb = None if weights is None else weights[:, a:b]
        singletons = singleton_terms(Yb, spec, design.order)
        return delayed(_fit_chunk)(Yb, design, reml, wb, singletons, threads)

    # A generator, so an out-of-core Y is read one chunk at a time as the workers ask.
    tasks = (task(a, b) for a, b in chunks)
    return _Plan(spec, design, feature_names, reml, tasks, len(chunks))


def run_plans(plans: list[_Plan], *, n_jobs: int, progress: bool | None) -> list[LMMResult]:
    """Run the tasks of several fits in one pool of ``n_jobs`` workers; a result per plan.

    One pool for all (e.g. the shape buckets of :func:`~omixed.lmm.fit_grouped`) keeps the
    workers busy across fits instead of waiting for the slowest chunk of each.
    """
    total = sum(plan.n_tasks for plan in plans)
    pieces = Parallel(n_jobs=n_jobs, return_as="generator")(
        itertools.chain.from_iterable(plan.tasks for plan in plans)
    )
    if progress or (progress is None and total > 10):
        from tqdm.auto import tqdm

        pieces = tqdm(pieces, total=total, desc="fitting", unit="chunk")
    parts = list(pieces)
    results, start = [], 0
    for plan in plans:
        results.append(plan.result(parts[start : start + plan.n_tasks]))
        start += plan.n_tasks
    return results


def _dense(block) -> np.ndarray:
    """A block of an out-of-core Y as a dense array (a backed sparse matrix densified)."""
    return block.toarray() if sparse.issparse(block) else np.asarray(block)


def _blas_threads(design: Design, n_jobs: int, n_tasks: int) -> int:
    """BLAS threads per worker: ``n_jobs`` are the cores given, shared by the busy workers.

    Never more threads than that (on a shared machine BLAS threads beyond the cores a fit may
    use spin against other processes: InstEval took 6-12 s with two threads on two loaded cores
    against 1.3-2.4 s with one), and one thread for the small per-feature matrices of most
    designs, where threads only add overhead.
    """
    if design.rest_dim < _THREADED_DIM:
        return 1
    cores = effective_n_jobs(n_jobs)
    return max(1, cores // max(1, min(cores, n_tasks)))


def _available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _check_memory(design: Design, per_feature: int) -> None:
    """Refuse, before any fitting, a model whose single feature would not fit in memory."""
    needed = design.workspace_bytes() + per_feature
    available = _available_memory()
    if available is None or needed <= available:
        return
    b = design.cross_products.b  # the terms on the factor eliminated first
    first, rest = design.term_names[:b], list(design.term_names[b:])
    raise MemoryError(
        f"fitting this model needs about {needed / 2**30:.1f} GiB per feature but "
        f"{available / 2**30:.1f} GiB are available: after eliminating {', '.join(first)}, "
        f"the terms {rest} and the fixed effects form a dense block of {design.rest_dim - 1} "
        "columns; fewer levels in those terms would shrink it"
    )


def _joined(notes: dict[int, list[str]], m: int) -> np.ndarray:
    """Per-feature notes as one string each ("" for none)."""
    out = np.full(m, "", dtype=object)
    for f, items in notes.items():
        out[f] = "; ".join(items)
    return out


@dataclass(frozen=True)
class Prepared:
    """A chunk's standardized responses and cross-products, with non-estimable columns dropped.

    ``Ys = (y − center) / scale`` per feature (center 0 without an intercept); ``cross`` is built
    from ``Ys``; ``dropped`` fixed-effect columns are decoupled in it (zero row/column, unit
    diagonal), which is exactly fitting without them; ``fits_exactly`` marks responses in the
    span of the fixed effects.
    """

    W: np.ndarray
    n_obs: np.ndarray
    spread: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    Ys: np.ndarray
    cross: Cross
    dropped: np.ndarray
    fits_exactly: np.ndarray
    p_eff: np.ndarray


def prepare(Yt: np.ndarray, design: Design, weights: np.ndarray | None = None) -> Prepared:
    """Standardize features × rows ``Yt`` and build their cross-products (see :class:`Prepared`).

    ``weights`` (features × rows, > 0 where observed) are precision weights: observation ``i``
    has residual variance ``σ²/w_i``; ``W`` then holds them (0 where missing).

    Every per-feature reduction runs along the contiguous last axis, so its summation order
    (and the result, bitwise) does not depend on how many features share a chunk.
    """
    p = design.layout.p
    m = Yt.shape[0]
    W = np.isfinite(Yt).astype(np.float64)
    n_obs = W.sum(axis=1)
    Y0 = np.where(W > 0, Yt, 0.0)
    safe_n = np.maximum(n_obs, 1.0)
    # In units of each feature's largest |value|, so that squares neither overflow (values
    # near 1e300) nor underflow (near 1e-200): the fit is equivariant over float64's range.
    # Summed in the design's row order, as the cross-products are (sample order changes
    # nothing).
    peak = np.abs(Y0).max(axis=1, initial=0.0)
    peak = np.where(peak > 0, peak, 1.0)
    order = design.cross_products.row_order
    # Contiguous rows: numpy sums a strided row in another order (chunk-dependent results).
    in_order = np.ascontiguousarray(Y0[:, order])
    mean = (in_order / peak[:, None]).sum(axis=1) / safe_n * peak
    deviation = np.ascontiguousarray(W[:, order]) * (in_order - mean[:, None]) / peak[:, None]
    spread = np.sqrt((deviation**2).sum(axis=1) / safe_n) * peak
    center = mean if design.intercept is not None else np.zeros(m)
    scale = np.where(np.isfinite(spread) & (spread > 0), spread, 1.0)
    Ys = np.where(W > 0, (Yt - center[:, None]) / scale[:, None], 0.0)
    if weights is not None:
        W = np.where(W > 0, weights, 0.0)
    cross = design.cross_products(Ys, W)
    # Fixed effects not estimable from a feature's rows are dropped (as lme4 does).
    rest, qr = cross.rest, design.rest_dim - p - 1
    aliased = aliased_mask(rest[:, qr:, qr:], _EXACT)
    dropped = aliased[:, :p]
    f, c = np.nonzero(dropped)
    rest[f, qr + c, :] = 0.0
    rest[f, :, qr + c] = 0.0
    rest[f, qr + c, qr + c] = 1.0
    for feature, column in zip(f, c, strict=True):
        cross.rows[feature, cross.structure.row_col == qr + column] = 0.0
    p_eff = p - dropped.sum(axis=1)
    return Prepared(W, n_obs, spread, center, scale, Ys, cross, dropped, aliased[:, p], p_eff)


def singleton_terms(Y: np.ndarray, spec: ModelSpec, order: np.ndarray) -> np.ndarray:
    """Per feature, the random intercepts with one observation at each observed level.

    Such a term's variance cannot be told from the residual's: the likelihood depends on
    their sum only, so the split is arbitrary (lme4 refuses the model).  Features × terms in
    elimination ``order``; a term seen at fewer than two levels is left to the fit's own rule.
    """
    observed = np.isfinite(np.asarray(Y, dtype=np.float64)).astype(np.float64)
    out = np.zeros((observed.shape[1], len(order)), dtype=bool)
    for j, t in enumerate(order):
        term = spec.terms[t]
        if not term.is_intercept:
            continue
        per_level = term.indicator().T @ observed  # levels × features: observations per level
        out[:, j] = ((per_level > 0).sum(axis=0) >= 2) & (per_level.max(axis=0, initial=0) <= 1)
    return out


_FLAT = 1e-10  # relative criterion change below which a variance is not identified


def _prefer_boundary(objective, opt) -> None:
    """Set each θ_j to 0 where that leaves the criterion unchanged (within ``_FLAT``).

    Where a feature's data do not identify a variance (the criterion is flat along θ_j, e.g.
    a term whose levels carry the same information as the residual), the optimizer stops
    wherever it started; the boundary is the one answer that does not depend on the start or
    on the order of the rows.
    """
    for j in range(opt.theta.shape[1]):
        inside = np.flatnonzero(opt.theta[:, j] > 0)
        if not inside.size:
            continue
        trial = opt.theta[inside]
        trial[:, j] = 0.0
        f_j, _, _ = objective(trial, inside, 0)
        fmin = opt.fmin[inside]
        flat = f_j <= fmin + _FLAT * (1.0 + np.abs(fmin))
        opt.theta[inside[flat], j] = 0.0
        opt.fmin[inside[flat]] = np.minimum(f_j[flat], fmin[flat])


def _levels_seen(cross: Cross, design: Design) -> np.ndarray:
    """``(m, terms)``: how many levels of each term a feature observes (elimination order)."""
    sizes = design.layout.sizes
    if not sizes:
        return np.zeros((cross.n_features, 0), dtype=int)
    st = cross.structure
    first = np.diagonal(cross.first, axis1=2, axis2=3) > 0  # (m, L, b)
    seen = [first[:, :, a].sum(axis=1) for a in range(st.b)]
    diagonal = np.diagonal(cross.rest, axis1=1, axis2=2) > 0
    start = 0
    for size in sizes[st.b :]:
        seen.append(diagonal[:, start : start + size].sum(axis=1))
        start += size
    return np.stack(seen, axis=1)


def _fit_chunk(
    Y: np.ndarray,
    design: Design,
    reml: bool,
    weights: np.ndarray | None = None,
    singletons: np.ndarray | None = None,
    threads: int = 1,
) -> dict[str, np.ndarray]:
    with threadpool_limits(limits=threads, user_api="blas"):
        return _fit_features(Y, design, reml, weights, singletons)


def _fit_features(
    Y: np.ndarray,
    design: Design,
    reml: bool,
    weights: np.ndarray | None,
    singletons: np.ndarray | None,
) -> dict[str, np.ndarray]:
    layout, elim = design.layout, design.elimination
    m = Y.shape[1]
    q, p = layout.q, layout.p
    Wt = None if weights is None else np.ascontiguousarray(weights.T)
    prep = prepare(np.ascontiguousarray(Y.T), design, Wt)
    cross, n_obs, spread, scale, Ys = prep.cross, prep.n_obs, prep.spread, prep.scale, prep.Ys
    dropped, fits_exactly, p_eff = prep.dropped, prep.fits_exactly, prep.p_eff
    center = prep.center
    reason = np.full(m, "", dtype=object)
    notes: dict[int, list[str]] = {}  # only the features that have some
    for f, c in zip(*np.nonzero(dropped), strict=True):
        notes.setdefault(f, []).append(
            f"{design.fixed_names[c]} not estimable from the observed rows (dropped)"
        )

    # A term seen at fewer than two levels in this feature has no estimable variance.
    fixed = _levels_seen(cross, design) < 2
    for f, j in zip(*np.nonzero(fixed), strict=True):
        notes.setdefault(f, []).append(
            f"{design.term_names[j]} has < 2 observed levels: variance fixed at 0"
        )
    if singletons is not None:
        for f, j in zip(*np.nonzero(singletons & ~fixed), strict=True):
            notes.setdefault(f, []).append(
                f"{design.term_names[j]} has one observation per observed level, so its "
                "variance cannot be told from the residual's: fixed at 0"
            )
        fixed = fixed | singletons

    reason[n_obs - p_eff < 1] = "fewer observations than fixed effects + 1"
    reason[fits_exactly & (n_obs - p_eff >= 1)] = "values are fit exactly by the fixed effects"
    reason[(spread == 0) & (n_obs > 1)] = "constant values"
    reason[n_obs == 0] = "all values missing"
    ok = reason == ""

    rows = np.flatnonzero(ok)
    cross_ok, n_ok, p_ok = cross.take(rows), n_obs[rows], p_eff[rows].astype(np.float64)
    k = design.n_theta
    if design.correlated:  # a block's correlations go with its components' variances
        extra = np.zeros((m, k - layout.n_theta), dtype=bool)
        for i, name in enumerate(design.extra_names):
            a, c = (design.term_names.index(n) for n in name.split("~"))
            extra[:, i] = fixed[:, a] | fixed[:, c]
        fixed = np.concatenate([fixed, extra], axis=1)
    theta = np.full((m, k), np.nan)
    crit = np.full(m, np.nan)
    converged = np.zeros(m, dtype=bool)
    n_iter = np.zeros(m, dtype=np.int64)

    # One random term and complete data: the exact 1-D shortcut (see _spectral).
    shortcut = np.zeros(rows.size, dtype=bool)
    if k == 1 and design.spectral is not None and weights is None:
        shortcut = (n_ok == Y.shape[0]) & (p_ok == p) & ~fixed[rows, 0]
    if shortcut.any():
        sel = rows[shortcut]
        theta[sel], crit[sel], converged[sel] = spectral_fit(Ys[sel], design.spectral, reml)
        reason[sel[~converged[sel]]] = "no convergence of the one-dimensional search"

    general = np.flatnonzero(~shortcut)
    red = None
    if general.size:
        n_g, p_g, sub_rows = n_ok[general], p_ok[general], rows[general]
        cross_g = cross_ok.take(general)
        red = elim.reduce(cross_g, weighted=weights is not None)

        def objective(th, sub, order):
            return elim.criterion(th, red.take(sub), n_g[sub], p_g[sub], reml=reml, order=order)

        if k:
            opt = elim.minimize(objective, elim.starts(cross_g, red, n_g), fixed[sub_rows])
            # θ = 0 (no random effects) is a stationary point the descent may not reach from
            # inside; never return a fit worse than it.
            f0, _, _ = objective(np.zeros_like(opt.theta), np.arange(general.size), 0)
            boundary = f0 < opt.fmin
            opt.theta[boundary], opt.fmin[boundary] = 0.0, f0[boundary]
            opt.converged[boundary], opt.message[boundary] = True, ""
            if not design.correlated:
                _prefer_boundary(objective, opt)
            theta[sub_rows], crit[sub_rows] = opt.theta, opt.fmin
            converged[sub_rows], n_iter[sub_rows] = opt.converged, opt.n_iter
            reason[sub_rows] = np.where(opt.message == "", reason[sub_rows], opt.message)
        else:
            theta[sub_rows] = np.zeros((general.size, 0))
            crit[sub_rows], _, _ = objective(theta[sub_rows], np.arange(general.size), 0)
            converged[sub_rows] = True
    # The criterion can keep falling as θ → ∞ (σ² → 0): the random effects interpolate the
    # few observations.  There is no finite optimum; say so rather than "no convergence".
    degenerate = ok & ~converged & (np.nan_to_num(theta).max(axis=1, initial=0.0) > 100.0)
    reason[degenerate] = (
        "residual variance tends to 0 (random effects fit the observations exactly)"
    )

    rel_var = np.full((m, layout.n_theta), np.nan)
    rel_cov = np.full((m, len(design.covariances)), np.nan)
    est = elim.estimates(
        theta[rows], cross_ok, n_ok, p_ok, reml, red if general.size == rows.size else None
    )
    rel_var[rows], rel_cov[rows] = elim.relative_covariances(theta[rows])
    beta = np.full((m, p), np.nan)
    se = np.full((m, p), np.nan)
    blup = np.full((m, q), np.nan)
    sigma2 = np.full(m, np.nan)
    beta[rows], se[rows], blup[rows], sigma2[rows] = est
    dof = (n_obs - p_eff) if reml else n_obs
    # As with the fixed effects alone (prepare), a penalized residual sum of squares below
    # 1e-9 of the response's is beyond what the cross-products resolve: the criterion there
    # is rounding noise, and θ̂ (σ̂ → 0) with it.
    with np.errstate(invalid="ignore"):
        tiny = sigma2 * dof < _EXACT * cross.rest[:, -1, -1]
    nearly_exact = ok & converged & tiny
    converged[nearly_exact] = False
    reason[nearly_exact] = (
        "residual variance below 1e-9 of the values' (random effects fit them almost exactly)"
    )
    no_se = ok & converged & np.any(np.isnan(se) & ~dropped, axis=1)
    converged[no_se] = False
    reason[no_se] = "standard errors not computable (numerically singular fit)"
    beta[dropped] = se[dropped] = np.nan
    blup[_level_counts(cross, design) == 0] = np.nan

    # Back to the data's scale: y = center + scale * ys.
    if design.intercept is not None:
        beta[:, design.intercept] += np.where(ok, center, np.nan) / scale
    beta *= scale[:, None]
    se *= scale[:, None]
    blup *= scale[:, None]
    with np.errstate(over="ignore"):
        sigma2 *= scale**2
    crit = crit + dof * 2.0 * np.log(scale)
    huge = ok & converged & np.isinf(sigma2)
    converged[huge] = False
    reason[huge] = "variances exceed the range of float64 (values near 1e154 or larger): rescale"
    singular = ok & converged & ~(sigma2 >= 0)
    converged[singular] = False
    reason[singular] = "residual variance not positive (numerically singular fit)"
    if Wt is not None:  # Var(ε_i) = σ²/w_i: the likelihood gains Σ log w_i / 2
        crit = crit - np.where(prep.W > 0, np.log(np.where(prep.W > 0, prep.W, 1.0)), 0.0).sum(
            axis=1
        )

    with np.errstate(invalid="ignore", over="ignore"):  # features set aside above
        variance, covariance = sigma2[:, None] * rel_var, sigma2[:, None] * rel_cov
    return {
        "criterion": crit,
        "theta": theta,
        "beta": beta,
        "se": se,
        "blup": blup,
        "sigma2": sigma2,
        "variance": variance,
        "covariance": covariance,
        "converged": converged & ok,
        "reason": reason,
        "notes": _joined(notes, m),
        "n_obs": n_obs.astype(np.int64),
        "n_iter": n_iter,
        "dropped": dropped,
    }


def _level_counts(cross: Cross, design: Design) -> np.ndarray:
    """``(m, q)``: every random-effect column's diagonal cross-product (0: level not observed).

    In the elimination order of the BLUP columns: term 1's components, each over its levels,
    then the other terms.
    """
    first = np.diagonal(cross.first, axis1=2, axis2=3)  # (m, L, b)
    qr = design.layout.q - first.shape[1] * first.shape[2]
    rest = np.diagonal(cross.rest, axis1=1, axis2=2)[:, :qr]
    return np.concatenate([first.transpose(0, 2, 1).reshape(first.shape[0], -1), rest], axis=1)
