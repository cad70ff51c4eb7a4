"""Features whose rows differ in shape: one factor's levels are local to each feature.

In bottom-up proteomics a protein is observed through its own peptides: the rows of one protein
are its sample × peptide observations and ``(1|peptide)`` has different levels (and a different
number of them) for every protein.  Proteins are bucketed by their number of local levels; within
a bucket every protein shares one design (samples × local positions ``0 .. P-1``, missing rows
as NaN), so each bucket is a single vectorized :func:`~omixed.lmm.fit` call.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._fit import fit
from ._result import LMMResult

__all__ = ["fit_grouped"]


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
) -> tuple[LMMResult, pd.DataFrame]:
    """Fit ``formula`` per feature on long-format data whose ``local`` factor is feature-specific.

    Parameters
    ----------
    values
        Long table, one row per observation: columns ``feature``, ``unit``, ``local``, ``value``.
    design
        One row per unit (index = unit names) with the unit-level columns of the formula.
    formula
        lme4 formula that may use ``(1|<local>)`` and ``(1|<unit>)`` and design columns.
    feature, unit, local, value
        Column names in ``values``.

    Returns
    -------
    The result (features in order of first appearance) and a table mapping every
    ``(feature, local level)`` to its position, so local BLUP columns ``"0", "1", …`` can be
    read back as level names.
    """
    missing = [c for c in (feature, unit, local, value) if c not in values.columns]
    if missing:
        raise ValueError(f"columns {missing} not in the long table ({list(values.columns)})")
    unknown = sorted(set(values[unit].astype(str)) - set(design.index.astype(str)))
    if unknown:
        raise ValueError(f"{len(unknown)} {unit}(s) missing from the design, e.g. {unknown[:5]}")
    if values.duplicated([feature, unit, local]).any():
        dup = values[values.duplicated([feature, unit, local], keep=False)].head(3)
        raise ValueError(f"duplicated ({feature}, {unit}, {local}) rows, e.g.\n{dup}")

    design = design.copy()
    design.index = design.index.astype(str)
    features = pd.Index(pd.unique(values[feature]))
    positions = (
        values[[feature, local]]
        .drop_duplicates()
        .assign(position=lambda d: d.groupby(feature, sort=False).cumcount())
    )
    long = values.merge(positions, on=[feature, local])
    n_local = positions.groupby(feature, sort=False)["position"].max() + 1
    units = design.index
    unit_pos = pd.Series(np.arange(len(units)), index=units)

    results = []
    for size in sorted(n_local.unique()):
        members = n_local.index[n_local == size]
        sub = long[long[feature].isin(members)]
        col = pd.Index(members).get_indexer(sub[feature])
        row = unit_pos.loc[sub[unit].astype(str)].to_numpy() * size + sub["position"].to_numpy()
        Y = np.full((len(units) * size, len(members)), np.nan)
        Y[row, col] = sub[value].to_numpy(dtype=np.float64)
        data = design.loc[np.repeat(units, size)].reset_index(drop=True)
        data[unit] = np.repeat(units, size)
        data[local] = pd.Categorical(np.tile(np.arange(size).astype(str), len(units)))
        results.append(
            fit(Y, data, formula, reml=reml, n_jobs=n_jobs, feature_names=members, progress=progress)
        )
    return LMMResult.concat(results, order=features), positions.set_index([feature, local])
