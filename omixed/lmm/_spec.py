"""Model specification: formula → fixed-effects matrix X and random-effects terms.

This module turns an lme4-style formula such as ``y ~ condition + (1|batch) + (1|batch:cask)`` and a
``pandas.DataFrame`` holding its columns into a :class:`ModelSpec`: the dense fixed-effects matrix
(built by :mod:`formulaic`, treatment coding, so names read ``condition[T.treated]``) and one
:class:`RandomTerm` per ``(expr|group)`` with its grouping factor's integer codes and levels.
It knows nothing about responses, features or optimization.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from formulaic import model_matrix

__all__ = ["ModelSpec", "RandomTerm", "build_spec", "parse_formula"]

_RANDOM_RE = re.compile(r"^\s*(?P<expr>[^|]*?)\s*(?P<bars>\|\|?)\s*(?P<group>.+?)\s*$")


@dataclass(frozen=True)
class RandomTerm:
    """One scalar random-effects term: a random intercept ``(1|g)`` or slope ``(0 + x|g)``.

    Attributes
    ----------
    name
        ``"batch"`` or ``"batch:cask"`` for an intercept, ``"Subject.Days"`` for a slope; the
        term's column name in variance tables.
    group
        The data columns whose interaction defines the grouping factor.
    expr
        The covariate of a random slope, ``"1"`` for a random intercept.
    codes
        Integer level of every data row (``0 .. n_levels - 1``).
    levels
        Level labels; for interactions the labels are joined with ``":"`` as in lme4.
    values
        The slope's covariate per row (``None`` for an intercept).
    """

    name: str
    group: tuple[str, ...]
    expr: str
    codes: np.ndarray
    levels: tuple[str, ...]
    values: np.ndarray | None = None

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    @property
    def is_intercept(self) -> bool:
        return self.values is None

    def row_values(self) -> np.ndarray:
        """What one unit of a level's effect adds to each row (1, or the slope's covariate)."""
        return np.ones(self.codes.size) if self.values is None else self.values

    def indicator(self) -> np.ndarray:
        """The term's model matrix Z_g (rows × levels): 0/1, or the covariate for a slope."""
        z = np.zeros((self.codes.size, self.n_levels))
        z[np.arange(self.codes.size), self.codes] = self.row_values()
        return z


@dataclass(frozen=True)
class ModelSpec:
    """Fixed-effects matrix and random-effects terms of a formula evaluated on a data frame."""

    formula: str
    fixed_formula: str
    X: np.ndarray
    fixed_names: tuple[str, ...]
    terms: tuple[RandomTerm, ...]
    warnings: tuple[str, ...] = field(default=())
    blocks: tuple[tuple[int, ...], ...] = field(default=())  # correlated terms, e.g. (x|g)

    @property
    def n_rows(self) -> int:
        return self.X.shape[0]

    @property
    def term_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.terms)


def _split_top_level(rhs: str) -> list[str]:
    """Split the right-hand side on ``+`` that are not inside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(rhs):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced parentheses in formula right-hand side {rhs!r}")
        elif ch == "+" and depth == 0:
            parts.append(rhs[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"unbalanced parentheses in formula right-hand side {rhs!r}")
    parts.append(rhs[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_formula(formula: str) -> tuple[str, list[tuple[str, str, str]]]:
    """Split an lme4 formula into its fixed part and its random terms.

    Returns
    -------
    The fixed-effects formula (right-hand side only, formulaic syntax) and a list of
    ``(expr, bars, group)`` tuples, one per parenthesised random term.

    Examples
    --------
    >>> parse_formula("y ~ condition + (1|batch) + (1|batch:cask)")
    ('condition', [('1', '|', 'batch'), ('1', '|', 'batch:cask')])
    """
    if not isinstance(formula, str) or "~" not in formula:
        raise ValueError(f"formula must be a string with '~', got {formula!r}")
    rhs = formula.split("~", 1)[1]
    fixed, random = [], []
    for part in _split_top_level(rhs):
        if part.startswith("(") and part.endswith(")") and "|" in part:
            m = _RANDOM_RE.match(part[1:-1])
            if m is None or not m["group"]:
                raise ValueError(f"cannot parse random-effects term {part!r}")
            random.append((m["expr"] or "1", m["bars"], m["group"].replace(" ", "")))
        elif "|" in part:
            raise ValueError(f"random-effects term {part!r} must be written in parentheses")
        else:
            fixed.append(part)
    return (" + ".join(fixed) if fixed else "1"), random


def _grouping_factor(data: pd.DataFrame, group: str) -> tuple[tuple[str, ...], np.ndarray, tuple]:
    cols = tuple(group.split(":"))
    for col in cols:
        if col not in data.columns:
            raise ValueError(
                f"grouping factor {col!r} (in '(…|{group})') is not a column of the data; "
                f"available columns: {', '.join(map(str, data.columns))}"
            )
        if data[col].isna().any():
            raise ValueError(
                f"grouping column {col!r} has {int(data[col].isna().sum())} missing values"
            )
    if len(cols) == 1 and isinstance(data[cols[0]].dtype, pd.CategoricalDtype):
        # The observed categories, in the categories' order.
        cat = data[cols[0]].cat
        present = np.unique(cat.codes)
        renumber = np.full(len(cat.categories), -1, dtype=np.intp)
        renumber[present] = np.arange(present.size)
        order = tuple(str(c) for c in cat.categories[present])
        return cols, renumber[cat.codes.to_numpy()], order
    labels = data[cols[0]].astype(str).to_numpy()
    for col in cols[1:]:
        labels = labels + ":" + data[col].astype(str).to_numpy()
    codes, order = pd.factorize(labels, sort=True)
    return cols, codes.astype(np.intp), tuple(order)


def _random_covariates(expr: str) -> tuple[bool, list[str]]:
    """Whether the left of the bar has an intercept, and its slope covariates (lme4 rules)."""
    parts = [p.strip() for p in expr.replace("-", "+-").split("+") if p.strip()]
    intercept = not any(p in {"0", "-1"} for p in parts)
    slopes = [p for p in parts if p not in {"0", "1", "-1"}]
    for p in slopes:
        if not re.fullmatch(r"[A-Za-z_.][A-Za-z0-9_.]*", p):
            raise ValueError(f"random slope {p!r}: only plain numeric columns are supported")
    if not intercept and not slopes:
        raise ValueError(f"random-effects term ({expr}|…) has neither an intercept nor a slope")
    return intercept, slopes


def _covariate(data: pd.DataFrame, x: str, group: str) -> np.ndarray:
    if x not in data.columns:
        raise ValueError(
            f"random slope {x!r} (in '({x}|{group})') is not a column of the data; "
            f"available columns: {', '.join(map(str, data.columns))}"
        )
    if not pd.api.types.is_numeric_dtype(data[x]) or data[x].isna().any():
        raise ValueError(f"random slope {x!r} must be a numeric column without missing values")
    return data[x].to_numpy(dtype=np.float64)


def build_spec(
    data: pd.DataFrame,
    formula: str,
    *,
    drop_aliased: bool = False,
    fixed: tuple[np.ndarray, tuple[str, ...]] | None = None,
) -> ModelSpec:
    """Evaluate ``formula`` on ``data``: the fixed-effects matrix and the random-effects terms.

    ``fixed`` is the fixed-effects matrix and its column names when already evaluated
    (:func:`fixed_matrix`, e.g. once for many designs that repeat the same rows).

    Raises
    ------
    ValueError
        If a column is missing, the fixed design has missing values or is rank deficient
        (the aliased columns are named).
    """
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"data must be a pandas.DataFrame, got {type(data).__name__}")
    fixed_formula, random = parse_formula(formula)
    notes: list[str] = []

    terms, blocks = [], []
    for expr, bars, group in random:
        intercept, slopes = _random_covariates(expr)
        cols, codes, levels = _grouping_factor(data, group)
        for col in cols:
            if pd.api.types.is_float_dtype(data[col]):
                notes.append(f"numeric column {col!r} is used as a grouping factor")
                warnings.warn(
                    f"numeric column {col!r} is used as a grouping factor ({len(levels)} levels); "
                    "each distinct value is a level",
                    UserWarning,
                    stacklevel=3,
                )
        new = [RandomTerm(group, cols, "1", codes, levels)] if intercept else []
        new += [
            RandomTerm(f"{group}.{x}", cols, x, codes, levels, _covariate(data, x, group))
            for x in slopes
        ]
        for term in new:
            if any(t.name == term.name for t in terms):
                raise ValueError(f"random term {term.name!r} appears twice in the formula")
            terms.append(term)
        if bars == "|" and len(new) > 1:  # (x|g): the components are correlated
            blocks.append(tuple(range(len(terms) - len(new), len(terms))))

    if fixed is None:
        X, names = fixed_matrix(data, fixed_formula)
    else:
        X, names = np.asarray(fixed[0], dtype=np.float64), tuple(fixed[1])
        if X.ndim != 2 or X.shape != (len(data), len(names)):
            raise ValueError(
                f"fixed has a {X.shape} matrix and {len(names)} names; expected "
                f"({len(data)}, {len(names)}), one row per row of data"
            )
    if X.shape[0] != len(data):
        raise ValueError("the fixed-effects matrix lost rows (missing values in the design?)")
    if X.shape[1] == 0:
        raise ValueError("the model has no fixed effects; keep at least an intercept")
    aliased = aliased_columns(X)
    if aliased and not drop_aliased:
        raise ValueError(
            "the fixed-effects design is rank deficient: column(s) "
            f"{[names[i] for i in aliased]} are linear combinations of earlier columns "
            "(e.g. a covariate confounded with another); remove them from the formula or "
            "pass drop_aliased=True"
        )
    if aliased:
        dropped = [names[i] for i in aliased]
        message = f"fixed-effects column(s) {dropped} are aliased with earlier columns: dropped"
        warnings.warn(message, UserWarning, stacklevel=3)
        notes.append(message)
        keep = [i for i in range(len(names)) if i not in aliased]
        X, names = X[:, keep], tuple(names[i] for i in keep)
    return ModelSpec(formula, fixed_formula, X, names, tuple(terms), tuple(notes), tuple(blocks))


def fixed_matrix(data: pd.DataFrame, fixed_formula: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """The fixed-effects matrix of ``fixed_formula`` (no random terms) on ``data``, by formulaic."""
    try:
        mm = model_matrix(fixed_formula, data, na_action="raise")
    except Exception as exc:  # formulaic raises several types; re-raise as one, naming the columns
        missing = [
            tok
            for tok in re.findall(r"[A-Za-z_.][A-Za-z0-9_.]*", fixed_formula)
            if tok not in data.columns and tok not in {"C", "I", "np", "log", "exp", "Q"}
        ]
        if missing:
            raise ValueError(
                f"fixed-effects term(s) {missing} not found in the data; available columns: "
                f"{', '.join(map(str, data.columns))}"
            ) from exc
        raise ValueError(
            f"cannot build the fixed-effects matrix for {fixed_formula!r}: {exc}"
        ) from exc
    return np.asarray(mm, dtype=np.float64), tuple(str(c) for c in mm.columns)


def aliased_columns(X: np.ndarray, rtol: float = 1e-9) -> list[int]:
    """Columns of X that are (numerically) linear combinations of earlier columns."""
    gram = X.T @ X
    return [int(i) for i in np.flatnonzero(aliased_mask(gram[None], rtol)[0])]


def aliased_mask(gram: np.ndarray, rtol: float = 1e-9) -> np.ndarray:
    """Aliased columns of a stack of Gram matrices ``(m, p, p)``, found in column order.

    A batched Cholesky that, like lme4's column dropping, keeps earlier columns and marks a
    column aliased when its squared residual norm after projecting out the kept earlier columns
    is below ``rtol`` times its own squared norm.
    """
    m, p, _ = gram.shape
    L = np.zeros_like(gram)
    aliased = np.zeros((m, p), dtype=bool)
    for k in range(p):
        pivot = gram[:, k, k] - np.einsum("mj,mj->m", L[:, k, :k], L[:, k, :k])
        bad = pivot <= rtol * np.maximum(gram[:, k, k], np.finfo(float).tiny)
        aliased[:, k] = bad
        root = np.sqrt(np.where(bad, 1.0, pivot))
        below = gram[:, k + 1 :, k] - np.einsum("mij,mj->mi", L[:, k + 1 :, :k], L[:, k, :k])
        L[:, k, k] = np.where(bad, 0.0, root)
        L[:, k + 1 :, k] = np.where(bad[:, None], 0.0, below / root[:, None])
    return aliased
