"""Model specification: what a formula means on a data set, learned once and applied by name.

:func:`build_spec` reads an lme4 formula (:mod:`._formula`) on a ``pandas.DataFrame`` and learns
a :class:`Specification`: the fixed effects' encoding (formulaic's state: each factor's levels
and contrasts, stateful transforms such as ``center`` or ``poly``), their column names (treatment
coding: ``condition[T.treated]``), and every random term with the levels of its grouping factor.
The specification holds no data and round-trips through JSON (:meth:`Specification.to_json`),
so a fitted model can be stored and applied later.  :meth:`Specification.evaluate` builds the
:class:`ModelSpec` of a data frame from it — the fixed-effects matrix and each random term's
level codes — matching levels and factors *by name*: reordered categories mean the same,
levels the model never saw are refused (or marked ``-1`` where the caller handles new levels).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
from formulaic import ModelSpec as FormulaicSpec
from formulaic import model_matrix
from formulaic.transforms.contrasts import DataMismatchWarning
from scipy import sparse

from . import _codec
from ._formula import Formula, RandomPart, parse_formula

__all__ = [
    "FixedSpec",
    "ModelSpec",
    "RandomTerm",
    "Specification",
    "TermSpec",
    "build_spec",
    "parse_formula",
]

_INTERCEPT = "Intercept"
_JOINERS = (":", "::", " × ", "|")  # the first that no level contains joins interaction labels


# ----------------------------------------------------------------------------------------------
# What is learned from the data (no data kept)


@dataclass(frozen=True)
class FixedSpec:
    """The fixed effects: formulaic's learned encoding and the resulting column names.

    ``columns`` are all columns formulaic builds, ``terms`` the formula term of each
    (``"Intercept"``, ``"condition"``, ``"condition:age"``); ``dropped`` the columns left out
    because they were aliased with earlier columns (``drop_aliased=True``).
    """

    formula: str
    columns: tuple[str, ...]
    dropped: tuple[str, ...]
    state: dict
    terms: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c for c in self.columns if c not in self.dropped)

    @cached_property
    def _formulaic(self) -> FormulaicSpec:
        return _formulaic(self.state)

    def matrix(self, data: pd.DataFrame) -> np.ndarray:
        """The fixed-effects matrix of ``data``, coded as learned (``names`` columns)."""
        values, columns = _apply_matrix(self._formulaic, data, "fixed effects")
        if columns != self.columns:
            raise ValueError(
                f"the fixed effects now have columns {list(columns)}; the model has "
                f"{list(self.columns)}"
            )
        keep = [i for i, c in enumerate(columns) if c not in self.dropped]
        return values[:, keep]

    @property
    def factors(self) -> dict[str, list]:
        """Categorical variables and their levels, as formulaic encodes them."""
        return {
            name: list(state["categories"])
            for name, (kind, state) in self.state["encoder_state"].items()
            if kind.value == "categorical" and "categories" in state
        }


@dataclass(frozen=True)
class TermSpec:
    """One scalar random-effects component, e.g. ``(1|batch)`` or the ``Days`` part of
    ``(Days|Subject)``, with the levels of its grouping factor.

    Attributes
    ----------
    name
        ``"batch"``, ``"batch:plate"`` for an interaction, ``"Subject.Days"`` for a slope.
    group
        The grouping columns.
    expr
        The left of the bar it comes from (``"1"`` for a plain intercept).
    covariate
        Its column of that side's model matrix (``"1"`` for an intercept).
    levels
        The levels, each a tuple of the grouping columns' values.
    labels
        The levels as text (interactions joined by ``":"``), the BLUP table's columns.
    """

    name: str
    group: tuple[str, ...]
    expr: str
    covariate: str
    levels: tuple[tuple, ...]
    labels: tuple[str, ...]

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    @property
    def is_intercept(self) -> bool:
        return self.covariate == "1"


@dataclass(frozen=True)
class Specification:
    """What a formula means on the data it was learned from; applies to other data by name.

    Attributes
    ----------
    formula
        The formula as given.
    response
        The left-hand side label (``None`` if the formula has none).
    fixed
        The fixed effects (:class:`FixedSpec`).
    terms
        The random terms (:class:`TermSpec`), formula order.
    blocks
        Indices of terms that form one correlated term ``(x|g)``.
    slopes
        Per random-term left side with covariates, formulaic's learned state.
    nested_in
        Per random term, the fixed factors whose levels each of its levels sits in.
    warnings
        What was noted when the specification was learned.
    """

    formula: str
    response: str | None
    fixed: FixedSpec
    terms: tuple[TermSpec, ...]
    blocks: tuple[tuple[int, ...], ...] = ()
    slopes: dict = field(default_factory=dict)
    nested_in: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def fixed_formula(self) -> str:
        return self.fixed.formula

    @property
    def fixed_names(self) -> tuple[str, ...]:
        return self.fixed.names

    @property
    def term_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.terms)

    def term(self, name: str) -> TermSpec:
        """The random term called ``name``."""
        for t in self.terms:
            if t.name == name:
                return t
        raise KeyError(f"no random term {name!r}; the model has {list(self.term_names)}")

    @property
    def extra_names(self) -> tuple[str, ...]:
        """Off-diagonal parameters of correlated terms, ``"a~c"`` (lme4's column order)."""
        names = []
        for block in self.blocks:
            members = [self.terms[i].name for i in block]
            names += [f"{a}~{c}" for i, c in enumerate(members) for a in members[i + 1 :]]
        return tuple(names)

    @property
    def covariance_names(self) -> tuple[str, ...]:
        names = []
        for block in self.blocks:
            members = [self.terms[i].name for i in block]
            names += [f"cov({a},{b})" for i, a in enumerate(members) for b in members[i + 1 :]]
        return tuple(names)

    def fixed_terms(self) -> dict[str, list[int]]:
        """Fixed-effect columns per formula term: ``{"condition": [1, 2], "age": [3]}``."""
        out: dict[str, list[int]] = {}
        kept = [
            t
            for c, t in zip(self.fixed.columns, self.fixed.terms, strict=True)
            if c not in self.fixed.dropped
        ]
        for i, term in enumerate(kept):
            out.setdefault(term, []).append(i)
        return out

    def evaluate(self, data: pd.DataFrame, *, new_levels: bool = False) -> ModelSpec:
        """The design of ``data`` under this specification, levels matched by name.

        Parameters
        ----------
        data
            Rows holding the formula's columns (other columns are ignored).
        new_levels
            Allow random-effect levels the specification does not have; their rows get code
            ``-1``.  Otherwise they are an error naming them.

        Raises
        ------
        ValueError
            A column is missing, a fixed factor has a level the model never saw, or (unless
            ``new_levels``) a grouping factor has one.
        """
        data = _normalized(data)
        return ModelSpec(self, self.fixed.matrix(data), self._random_design(data, new_levels))

    def _random_design(self, data: pd.DataFrame, new_levels: bool) -> tuple[RandomTerm, ...]:
        slopes = {
            expr: _slope_table(_apply_matrix(_formulaic(state), data, _slope_what(expr)))
            for expr, state in self.slopes.items()
        }
        terms = []
        for term in self.terms:
            codes = _level_codes(data, term)
            if not new_levels and (codes < 0).any():
                unseen = _labels_of_rows(data, term.group, codes < 0)
                more = f" and {len(unseen) - 5} more" if len(unseen) > 5 else ""
                raise ValueError(
                    f"{':'.join(term.group)!r} has level(s) the model never saw: {unseen[:5]}{more}"
                )
            values = None if term.is_intercept else slopes[term.expr][term.covariate]
            terms.append(
                RandomTerm(term.name, term.group, term.covariate, codes, term.labels, values)
            )
        return tuple(terms)

    def to_json(self) -> str:
        """The specification as tagged JSON (see :mod:`._codec`); :meth:`from_json` reads it."""
        return _codec.dumps(
            {
                "version": 1,
                "formula": self.formula,
                "response": self.response,
                "fixed": {
                    "formula": self.fixed.formula,
                    "columns": self.fixed.columns,
                    "dropped": self.fixed.dropped,
                    "state": self.fixed.state,
                    "terms": self.fixed.terms,
                },
                "terms": [
                    (t.name, t.group, t.expr, t.covariate, t.levels, t.labels) for t in self.terms
                ],
                "blocks": self.blocks,
                "slopes": self.slopes,
                "nested_in": self.nested_in,
                "warnings": self.warnings,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Specification:
        value = _codec.loads(text)
        if not isinstance(value, dict) or value.get("version") != 1:
            raise ValueError("not a model specification written by omixed")
        return cls(
            formula=value["formula"],
            response=value["response"],
            fixed=FixedSpec(**value["fixed"]),
            terms=tuple(TermSpec(*t) for t in value["terms"]),
            blocks=tuple(tuple(b) for b in value["blocks"]),
            slopes=value["slopes"],
            nested_in=value["nested_in"],
            warnings=tuple(value["warnings"]),
        )

    def same_model(self, other: Specification) -> bool:
        """Whether ``other`` is the same model learned on the same design."""
        return self.to_json() == other.to_json()

    def same_fixed_and_terms(self, other: Specification) -> bool:
        """Whether ``other`` is the same model with (possibly) other random-term levels, as the
        buckets of a grouped fit are (each has its own number of local levels)."""
        return (
            self.formula == other.formula
            and _codec.dumps(self.fixed.state) == _codec.dumps(other.fixed.state)
            and self.fixed.columns == other.fixed.columns
            and self.term_names == other.term_names
            and self.blocks == other.blocks
        )


# ----------------------------------------------------------------------------------------------
# The design of one data set


@dataclass(frozen=True)
class RandomTerm:
    """One scalar random-effects term evaluated on data: level codes and covariate per row.

    Attributes
    ----------
    name, group
        As in :class:`TermSpec`.
    expr
        The covariate (``"1"`` for an intercept).
    codes
        Level of every data row (``0 .. n_levels - 1``; ``-1`` for a level the model never saw,
        only with ``evaluate(..., new_levels=True)``).
    levels
        Level labels (the model's levels, also those absent from these rows).
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

    def indicator(self) -> sparse.csr_matrix:
        """The term's model matrix Z_g (rows × levels, sparse): 0/1, or the covariate."""
        rows = np.flatnonzero(self.codes >= 0)
        return sparse.csr_matrix(
            (self.row_values()[rows], (rows, self.codes[rows])),
            shape=(self.codes.size, self.n_levels),
        )


@dataclass(frozen=True)
class ModelSpec:
    """A :class:`Specification` evaluated on a data frame: ``X`` and the random terms' codes."""

    specification: Specification
    X: np.ndarray
    terms: tuple[RandomTerm, ...]

    @property
    def formula(self) -> str:
        return self.specification.formula

    @property
    def fixed_formula(self) -> str:
        return self.specification.fixed_formula

    @property
    def fixed_names(self) -> tuple[str, ...]:
        return self.specification.fixed_names

    @property
    def blocks(self) -> tuple[tuple[int, ...], ...]:
        return self.specification.blocks

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.specification.warnings

    @property
    def n_rows(self) -> int:
        return self.X.shape[0]

    @property
    def term_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.terms)


# ----------------------------------------------------------------------------------------------
# Learning a specification


def build_spec(
    data: pd.DataFrame,
    formula: str,
    *,
    drop_aliased: bool = False,
    fixed: FixedSpec | tuple[FixedSpec, np.ndarray] | None = None,
) -> ModelSpec:
    """Learn the :class:`Specification` of ``formula`` on ``data`` and evaluate it there.

    Parameters
    ----------
    data
        One row per observation with the formula's columns.
    formula
        lme4-style formula (see :func:`~omixed.lmm.fit`).
    drop_aliased
        Drop fixed-effect columns that are linear combinations of earlier ones (with a
        warning) instead of raising.
    fixed
        Fixed effects already learned (e.g. on the units of a grouped fit): their encoding is
        applied to ``data``, or, given with their matrix on ``data``'s rows, used as they are.

    Raises
    ------
    ValueError
        If the formula is malformed, a column is missing or unusable, the fixed design has
        missing values or is rank deficient (the aliased columns are named).
    """
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"data must be a pandas.DataFrame, got {type(data).__name__}")
    parsed = parse_formula(formula)
    data = _normalized(data, drop_unused=True)
    notes: list[str] = []
    if fixed is None:
        fixed, X = _learn_fixed(data, parsed, drop_aliased, notes)
    elif isinstance(fixed, tuple):  # learned, and already evaluated on these rows
        fixed, X = fixed
        if X.shape != (len(data), len(fixed.names)):
            raise ValueError(
                f"the given fixed-effects matrix is {X.shape}, the data {len(data)} rows"
            )
    else:
        X = fixed.matrix(data)
    terms, blocks, slopes = _learn_random(data, parsed, notes)
    provisional = Specification(formula, parsed.response, fixed, terms, blocks, slopes)
    design = provisional._random_design(data, new_levels=False)
    nested = _nested(data, fixed, design, notes)
    spec = Specification(
        formula, parsed.response, fixed, terms, blocks, slopes, nested, tuple(notes)
    )
    return ModelSpec(spec, X, design)


def _normalized(data: pd.DataFrame, *, drop_unused: bool = False) -> pd.DataFrame:
    """``data`` with text in pandas' string dtype as objects (formulaic reads them as factors).

    ``drop_unused`` also drops categories no row has: formulaic would make all-zero columns of
    them, which read as a confounded design.
    """
    changed = {}
    for column in data.columns:
        values = data[column]
        if isinstance(values.dtype, pd.StringDtype):
            changed[column] = values.astype(object).where(values.notna(), np.nan)
        elif (
            drop_unused
            and isinstance(values.dtype, pd.CategoricalDtype)
            and len(values.cat.categories) != values.nunique(dropna=True)
        ):
            changed[column] = values.cat.remove_unused_categories()
    return data.assign(**changed) if changed else data


def _formulaic(state: dict) -> FormulaicSpec:
    """formulaic's spec from its learned state (see :func:`_state`)."""
    return FormulaicSpec(
        formula=state["formula"],
        encoder_state=state["encoder_state"],
        transform_state=state["transform_state"],
        na_action="raise",
    )


def _state(formula: str, spec: FormulaicSpec) -> dict:
    # The formula as written: formulaic's own str() drops "0 +" (the intercept's removal).
    return {
        "formula": formula,
        "encoder_state": dict(spec.encoder_state),
        "transform_state": dict(spec.transform_state),
    }


@contextmanager
def _formulaic_errors(text: str, data: pd.DataFrame, what: str) -> Iterator[None]:
    """formulaic's failures as one ``ValueError`` in the user's terms."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataMismatchWarning)
        try:
            yield
        except DataMismatchWarning as exc:
            raise ValueError(
                f"the data have level(s) of a factor in the {what} that the model never saw: "
                f"{_mismatch(str(exc))}"
            ) from None
        except Exception as exc:  # formulaic raises assorted types from user expressions
            raise ValueError(_formulaic_message(text, data, what, exc)) from exc


def _finite(values: np.ndarray, columns: tuple[str, ...], what: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        j = int(np.flatnonzero(bad.any(axis=0))[0])
        raise ValueError(
            f"the {what} column {columns[j]!r} has {int(bad[:, j].sum())} infinite or undefined "
            "value(s) (e.g. inf in a covariate, or the log of 0); fix the data column"
        )


def _learn_matrix(
    formula: str, data: pd.DataFrame, what: str
) -> tuple[np.ndarray, tuple[str, ...], dict, tuple[str, ...]]:
    """Evaluate ``formula`` on ``data`` with formulaic: values, column names, learned state and
    the formula term of each column."""
    with _formulaic_errors(formula, data, what):
        mm = model_matrix(formula, data, na_action="raise")
    values, columns = np.asarray(mm, dtype=np.float64), tuple(str(c) for c in mm.columns)
    _finite(values, columns, what)
    terms = [""] * len(columns)
    for term, indices in mm.model_spec.term_indices.items():
        for i in indices:
            terms[i] = _INTERCEPT if str(term) == "1" else str(term)
    return values, columns, _state(formula, mm.model_spec), tuple(terms)


def _apply_matrix(
    spec: FormulaicSpec, data: pd.DataFrame, what: str
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Evaluate a learned formulaic spec on ``data``: values and column names."""
    with _formulaic_errors(str(spec.formula), data, what):
        mm = spec.get_model_matrix(data)
    values, columns = np.asarray(mm, dtype=np.float64), tuple(str(c) for c in mm.columns)
    _finite(values, columns, what)
    return values, columns


def _mismatch(message: str) -> str:
    start, end = message.find("{"), message.find("}")
    return message[start : end + 1] if 0 <= start < end else message


def _formulaic_message(text: str, data: pd.DataFrame, what: str, exc: Exception) -> str:
    known = {"C", "I", "np", "log", "log2", "log10", "exp", "sqrt", "Q", "center", "scale"}
    known |= {"poly", "bs", "cr", "cs", "lag", "hashed"}
    names = re.findall(r"[A-Za-z_.][A-Za-z0-9_.]*", re.sub(r"'[^']*'|\"[^\"]*\"", "", text))
    missing = [n for n in dict.fromkeys(names) if n not in data.columns and n not in known]
    missing = [n for n in missing if not n.startswith("contr.")]
    available = ", ".join(map(str, data.columns))
    if missing:
        return (
            f"term(s) {missing} of the {what} not found in the data; available columns: {available}"
        )
    return f"cannot build the {what} for {text!r}: {exc}"


def _learn_fixed(
    data: pd.DataFrame, parsed: Formula, drop_aliased: bool, notes: list[str]
) -> tuple[FixedSpec, np.ndarray]:
    X, columns, state, terms = _learn_matrix(parsed.fixed, data, "fixed effects")
    if X.shape[0] != len(data):
        raise ValueError("the fixed-effects matrix lost rows (missing values in the design?)")
    if X.shape[1] == 0:
        raise ValueError("the model has no fixed effects; keep at least an intercept")
    aliased = aliased_columns(X)
    dropped = tuple(columns[i] for i in aliased)
    if aliased and not drop_aliased:
        raise ValueError(
            f"the fixed-effects design is rank deficient: column(s) {list(dropped)} are linear "
            "combinations of earlier columns (e.g. a covariate confounded with another, or a "
            "level no sample has); remove them from the formula or pass drop_aliased=True"
        )
    if aliased:
        message = (
            f"fixed-effects column(s) {list(dropped)} are aliased with earlier columns: dropped"
        )
        warnings.warn(message, UserWarning, stacklevel=4)
        notes.append(message)
    keep = [i for i in range(len(columns)) if i not in aliased]
    return FixedSpec(parsed.fixed, columns, dropped, state, terms), X[:, keep]


def _slope_what(expr: str) -> str:
    return f"random-effects term ({expr}|…)"


def _slope_table(matrix: tuple[np.ndarray, tuple[str, ...]]) -> dict[str, np.ndarray]:
    """The left side of a random term: ``{column: values}``."""
    values, columns = matrix
    return {c: values[:, i] for i, c in enumerate(columns)}


def _learn_random(
    data: pd.DataFrame, parsed: Formula, notes: list[str]
) -> tuple[tuple[TermSpec, ...], tuple[tuple[int, ...], ...], dict]:
    terms: list[TermSpec] = []
    blocks: list[tuple[int, ...]] = []
    slopes: dict = {}
    for part in parsed.random:
        levels, labels = _learn_levels(data, part, notes)
        columns = ["1"]
        if not part.intercept_only:
            _, found, slopes[part.expr], _ = _learn_matrix(part.expr, data, _slope_what(part.expr))
            columns = ["1" if c == _INTERCEPT else c for c in found]
        new = [
            TermSpec(
                part.group_name if c == "1" else f"{part.group_name}.{c}",
                part.group,
                part.expr,
                c,
                levels,
                labels,
            )
            for c in columns
        ]
        for term in new:
            if any(t.name == term.name for t in terms):
                raise ValueError(f"random term {term.name!r} appears twice in the formula")
        if part.correlated and len(new) > 1:
            blocks.append(tuple(range(len(terms), len(terms) + len(new))))
        terms.extend(new)
    return tuple(terms), tuple(blocks), slopes


def _column_values(data: pd.DataFrame, column: str, where: str) -> pd.Series:
    if column not in data.columns:
        raise ValueError(
            f"grouping factor {column!r} (in '(…|{where})') is not a column of the data; "
            f"available columns: {', '.join(map(str, data.columns))}"
        )
    values = data[column]
    if values.isna().any():
        raise ValueError(
            f"grouping column {column!r} has {int(values.isna().sum())} missing value(s); give "
            "every row a level (or drop those rows)"
        )
    return values


def _python_values(values: pd.Series) -> np.ndarray:
    """The column's values as Python objects (categories as their values)."""
    return np.asarray(values.astype(object).map(_plain).to_numpy(), dtype=object)


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _learn_levels(
    data: pd.DataFrame, part: RandomPart, notes: list[str]
) -> tuple[tuple[tuple, ...], tuple[str, ...]]:
    """The levels of ``part``'s grouping factor in ``data`` (sorted) and their labels."""
    per_column = []
    for column in part.group:
        values = _column_values(data, column, part.group_name)
        if isinstance(values.dtype, pd.CategoricalDtype):
            present = pd.unique(values.cat.codes.to_numpy())
            order = [_plain(c) for c in values.cat.categories[np.sort(present)]]
        else:
            objects = _python_values(values)
            kinds = {type(v) for v in objects}
            numeric = all(issubclass(k, int | float | bool) for k in kinds)
            if not numeric and len(kinds) > 1:
                examples = sorted({repr(v) for v in objects}, key=str)[:4]
                raise ValueError(
                    f"grouping column {column!r} mixes value types "
                    f"({', '.join(sorted(k.__name__ for k in kinds))}; e.g. {', '.join(examples)}):"
                    " values such as 1 and '1' would be different levels that print the same; "
                    "make the column one type (e.g. .astype(str))"
                )
            order = sorted(set(objects.tolist()))
            if pd.api.types.is_float_dtype(values):
                message = (
                    f"numeric column {column!r} is used as a grouping factor ({len(order)} "
                    "levels); each distinct value is a level"
                )
                warnings.warn(message, UserWarning, stacklevel=5)
                notes.append(message)
        per_column.append(order)
    codes = np.column_stack(
        [
            pd.Index(order, dtype=object).get_indexer(_python_values(data[c]))
            for c, order in zip(part.group, per_column, strict=True)
        ]
    )
    present = np.unique(codes, axis=0)  # sorted lexicographically by the columns' orders
    levels = tuple(tuple(per_column[j][k] for j, k in enumerate(row)) for row in present)
    texts = [[str(v) for v in level] for level in levels]
    joiner = next(
        (j for j in _JOINERS if not any(j in t for level in texts for t in level)), _JOINERS[-1]
    )
    labels = tuple(joiner.join(level) for level in texts)
    if len(set(labels)) != len(labels):
        raise ValueError(f"levels of {part.group_name!r} cannot be told apart as text: rename them")
    return levels, labels


def _level_codes(data: pd.DataFrame, term: TermSpec) -> np.ndarray:
    """Each row's level of ``term`` (its index in ``term.levels``), ``-1`` if unknown."""
    columns = []
    for j, column in enumerate(term.group):
        values = _column_values(data, column, ":".join(term.group))
        order = list(dict.fromkeys(level[j] for level in term.levels))
        columns.append((pd.Index(order, dtype=object).get_indexer(_python_values(values)), order))
    if len(columns) == 1:
        codes, order = columns[0]
        position = {level[0]: i for i, level in enumerate(term.levels)}
        lookup = np.array([position[v] for v in order], dtype=np.intp)
        return np.where(codes >= 0, lookup[codes], -1).astype(np.intp)
    known = pd.MultiIndex.from_arrays(
        [
            pd.Index(order, dtype=object).get_indexer([level[j] for level in term.levels])
            for j, (_, order) in enumerate(columns)
        ]
    )
    rows = pd.MultiIndex.from_arrays([codes for codes, _ in columns])
    found = known.get_indexer(rows)
    unknown = np.any(np.column_stack([codes < 0 for codes, _ in columns]), axis=1)
    return np.where(unknown, -1, found).astype(np.intp)


def _labels_of_rows(data: pd.DataFrame, group: tuple[str, ...], rows: np.ndarray) -> list[str]:
    values = data.loc[rows, list(group)].astype(str)
    return sorted(set(values.agg(":".join, axis=1)))


def _nested(
    data: pd.DataFrame, fixed: FixedSpec, terms: tuple[RandomTerm, ...], notes: list[str]
) -> dict[str, list[str]]:
    """Per random term, the fixed factors each of its levels sits in (one factor level each).

    Donors nested in condition are a normal design; a *batch* nested in condition means batch
    and biology cannot be separated, and one level per factor level makes them identical.
    """
    nested: dict[str, list[str]] = {}
    factors = [f for f in fixed.factors if f in data.columns and data[f].nunique() >= 2]
    for term in terms:
        for factor in factors:
            per_level = pd.Series(data[factor].to_numpy()).groupby(term.codes).nunique()
            if not (per_level == 1).all():
                continue
            nested.setdefault(term.name, []).append(factor)
            if data[factor].nunique() == len(per_level):
                message = (
                    f"{term.name!r} is completely confounded with {factor!r} (one {term.name} "
                    f"level per {factor} level): the {term.name} variance and the {factor} "
                    "effect cannot be told apart; the fit attributes the between-level "
                    "differences to the fixed effect"
                )
                warnings.warn(message, UserWarning, stacklevel=4)
                notes.append(message)
    return nested


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
