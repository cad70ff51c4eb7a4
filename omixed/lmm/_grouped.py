"""Features whose rows differ in shape: one factor's levels are local to each feature.

In bottom-up proteomics a protein is observed through its own peptides: the rows of one protein
are its sample × peptide observations and ``(1|peptide)`` has different levels (and a different
number of them) for every protein.  Proteins are bucketed by their number of local levels; within
a bucket every protein shares one design (samples × local positions ``0 .. P-1``, missing rows
as NaN), so each bucket is a single vectorized :func:`~omixed.lmm.fit` (the buckets' chunks
share one pool of workers).  A protein with fewer levels than its bucket's ``P`` is padded with
unobserved levels, which is exact (they have no rows, so they add nothing to the criterion);
buckets are merged where one larger vectorized call costs less than separate calls (see
:func:`_buckets`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from ._fit import plan_fit, run_plans
from ._result import LMMResult
from ._robust import fit_robust
from ._spec import build_spec, parse_formula

__all__ = ["fit_grouped"]

# Cost model of one fit() call, in units of "one feature with one random-effect column": a fixed
# overhead (formula, spec, result tables, optimizer loop) and a per-feature cost growing with the
# square of the padded number of local levels (plus the other columns, roughly).
_CALL_OVERHEAD = 30_000.0
_OTHER_COLUMNS = 8.0


def _buckets(sizes: np.ndarray, counts: np.ndarray) -> list[int]:
    """Upper sizes of contiguous groups of the sorted distinct ``sizes`` minimizing the cost model.

    Dynamic programming over the sorted sizes: ``best[j]`` is the cheapest way to fit all
    features with at most ``sizes[j]`` levels, the last group padded to ``sizes[j]``.
    """
    best = np.zeros(sizes.size + 1)
    cut = np.zeros(sizes.size, dtype=int)
    total = np.concatenate([[0], np.cumsum(counts)])
    for j in range(sizes.size):
        cost = (
            best[: j + 1]
            + _CALL_OVERHEAD
            + (total[j + 1] - total[: j + 1]) * (sizes[j] + _OTHER_COLUMNS) ** 2
        )
        cut[j] = int(np.argmin(cost))
        best[j + 1] = cost[cut[j]]
    uppers, j = [], sizes.size - 1
    while j >= 0:
        uppers.append(int(sizes[j]))
        j = cut[j] - 1
    return uppers[::-1]


def fit_grouped(
    values: pd.DataFrame,
    design: pd.DataFrame,
    formula: str,
    *,
    feature: str = "feature",
    unit: str = "sample",
    local: str = "peptide",
    value: str = "y",
    reml: bool = True,
    n_jobs: int = 1,
    progress: bool | None = False,
    robust: bool = False,
) -> tuple[LMMResult, pd.DataFrame]:
    """Fit ``formula`` per feature on long-format data whose ``local`` factor is feature-specific.

    Parameters
    ----------
    values
        Long table, one row per observation: columns ``feature``, ``unit``, ``local``, ``value``.
    design
        One row per unit (index = unit names) with the unit-level columns of the formula.
    formula
        lme4 formula that may use ``(1|<local>)`` and ``(1|<unit>)`` and design columns.  Its
        fixed effects are evaluated once on ``design`` (unit-level columns, or ``unit``).
    feature, unit, local, value
        Column names in ``values``.
    robust
        Huber M-estimation per bucket (:func:`~omixed.lmm.fit_robust`).

    Returns
    -------
    The result (features in order of first appearance) and a table mapping every
    ``(feature, local level)`` to its position, so local BLUP columns ``"0", "1", …`` can be
    read back as level names.
    """
    missing = [c for c in (feature, unit, local, value) if c not in values.columns]
    if missing:
        raise ValueError(f"columns {missing} not in the long table ({list(values.columns)})")
    blocks, positions = bucket_problems(
        values, design, feature=feature, unit=unit, local=local, value=value
    )
    # The fixed effects are unit-level: learned once on the units, so stateful transforms such
    # as center() or poly() are the same for every bucket.
    units = design.set_axis(design.index.astype(str)).assign(**{unit: lambda d: d.index})
    fixed = build_spec(units, f"~ {parse_formula(formula).fixed}").specification.fixed
    X_units = fixed.matrix(units)

    def on_rows(data: pd.DataFrame) -> tuple:
        # A bucket's rows are the units, each repeated once per local position.
        return fixed, np.repeat(X_units, len(data) // len(units), axis=0)

    if robust:
        options = {"reml": reml, "n_jobs": n_jobs, "progress": progress}
        results = [
            fit_robust(Y, data, formula, feature_names=members, fixed=on_rows(data), **options)[0]
            for members, Y, data in blocks
        ]
    else:
        plans = [
            plan_fit(
                Y,
                data,
                formula,
                reml=reml,
                n_jobs=n_jobs,
                feature_names=members,
                fixed=on_rows(data),
            )
            for members, Y, data in blocks
        ]
        results = run_plans(plans, n_jobs=n_jobs, progress=progress)
    features = positions.index.levels[0]  # in order of first appearance
    return LMMResult.concat(results, order=features), positions


def bucket_problems(
    values: pd.DataFrame,
    design: pd.DataFrame,
    *,
    feature: str,
    unit: str,
    local: str,
    value: str,
) -> tuple[Iterator[tuple[pd.Index, np.ndarray, pd.DataFrame]], pd.DataFrame]:
    """Bucket features by their number of local levels: one (members, Y, data) problem each.

    Returns a generator of the problems (rows = units × local positions ``0 .. P-1``, missing
    rows NaN, so padding is exact) and the table of every feature's local positions, indexed by
    ``(feature, local)`` in order of first appearance.  Raises if a (feature, unit, local) cell
    repeats or a unit is not in the design.
    """
    design = design.copy()
    design.index = design.index.astype(str)
    units = design.index
    f_code, features = pd.factorize(values[feature], sort=False)
    l_code, locals_ = pd.factorize(values[local], sort=False)
    u_code, unit_names = pd.factorize(values[unit], sort=False)
    unit_names = unit_names.astype(str)
    known = units.get_indexer(unit_names)
    if (known < 0).any():
        unknown = sorted(unit_names[known < 0])
        raise ValueError(f"{len(unknown)} {unit}(s) missing from the design, e.g. {unknown[:5]}")
    u_code = np.where(u_code < 0, -1, known[u_code])
    for name, code in ((feature, f_code), (local, l_code), (unit, u_code)):
        if (code < 0).any():
            raise ValueError(f"column {name!r} has missing values")
    # Each (feature, local) pair once, in order of first appearance; its position is its rank
    # among its feature's pairs.
    pair, _ = pd.factorize(f_code.astype(np.int64) * (l_code.max() + 1) + l_code)
    # factorize numbers pairs in order of first appearance: a pair is new where it exceeds all
    # earlier ones.
    seen = np.maximum.accumulate(pair)
    first_row = np.flatnonzero(np.concatenate([[True], pair[1:] > seen[:-1]]))
    pair_feature = f_code[first_row]
    n_local = np.bincount(pair_feature, minlength=features.size)
    starts = np.concatenate([[0], np.cumsum(n_local)[:-1]])
    rank = np.empty(first_row.size, dtype=np.int64)
    rank[np.argsort(pair_feature, kind="stable")] = np.arange(first_row.size) - np.repeat(
        starts, n_local
    )
    position = rank[pair]
    cell = pair.astype(np.int64) * units.size + u_code
    if np.bincount(cell).max(initial=0) > 1:
        dup = values[pd.Series(cell).duplicated(keep=False).to_numpy()].head(3)
        raise ValueError(f"duplicated ({feature}, {unit}, {local}) rows, e.g.\n{dup}")
    index = pd.MultiIndex(
        levels=[features, locals_],
        codes=[f_code[first_row], l_code[first_row]],
        names=[feature, local],
        verify_integrity=False,
    )
    positions = pd.DataFrame({"position": position[first_row]}, index=index)
    distinct, counts = np.unique(n_local, return_counts=True)
    y = values[value].to_numpy(dtype=np.float64)

    def problems():
        lower = 0
        for size in _buckets(distinct, counts):
            chosen = (n_local > lower) & (n_local <= size)
            lower = size
            members = pd.Index(features[chosen], name=None)
            column = np.full(features.size, -1)
            column[chosen] = np.arange(chosen.sum())
            rows = chosen[f_code]
            Y = np.full((units.size * size, members.size), np.nan)
            Y[u_code[rows] * size + position[rows], column[f_code[rows]]] = y[rows]
            data = design.iloc[np.repeat(np.arange(units.size), size)].reset_index(drop=True)
            data[unit] = np.repeat(units, size)
            positions = np.arange(size).astype(str)
            data[local] = pd.Categorical(np.tile(positions, units.size), categories=positions)
            yield members, Y, data

    return problems(), positions
