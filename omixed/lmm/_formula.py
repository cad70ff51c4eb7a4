"""Reading an lme4 formula: its response label, fixed part and random-effects terms.

This is text only (no data): :func:`parse_formula` checks the formula's shape and says what is
wrong in the user's own terms, expands lme4's shorthands (nesting ``(1|a/b)`` is
``(1|a) + (1|a:b)``; ``^`` inside ``I()`` is a power, as in R) and hands the fixed part to
formulaic and each random term's left side to :mod:`._spec`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Formula", "RandomPart", "parse_formula"]

_NAME = r"(?:[A-Za-z_.][A-Za-z0-9_.]*|`[^`]+`)"
_NAME_RE = re.compile(rf"^{_NAME}$")


@dataclass(frozen=True)
class RandomPart:
    """One random-effects term ``(expr | group)`` of a formula, after nesting is expanded.

    Attributes
    ----------
    expr
        The left of the bar as formulaic reads it (``"1"``, ``"0 + x"``, ``"1 + log(x)"``).
    correlated
        ``True`` for ``|`` (components correlated), ``False`` for ``||``.
    group
        The grouping columns; several mean their interaction (``a:b``).
    """

    expr: str
    correlated: bool
    group: tuple[str, ...]

    @property
    def intercept_only(self) -> bool:
        return self.expr == "1"

    @property
    def group_name(self) -> str:
        return ":".join(self.group)


@dataclass(frozen=True)
class Formula:
    """A parsed lme4 formula: ``response ~ fixed + random terms``."""

    text: str
    response: str | None
    fixed: str
    random: tuple[RandomPart, ...]


def _split_top_level(text: str, formula: str) -> list[tuple[str, str]]:
    """Split on ``+`` and ``-`` outside parentheses: ``(sign, part)`` pairs, parts stripped."""
    parts, depth, start, sign = [], 0, 0, "+"
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced parentheses in formula {formula!r}")
        elif ch in "+-" and depth == 0:
            parts.append((sign, text[start:i].strip()))
            sign, start = ch, i + 1
    if depth != 0:
        raise ValueError(f"unbalanced parentheses in formula {formula!r}")
    parts.append((sign, text[start:].strip()))
    return parts


def _unwrap(part: str) -> str:
    """``((1|g))`` → ``1|g``: strip parentheses that enclose the whole part."""
    while part.startswith("(") and part.endswith(")") and _closing(part, 0) == len(part) - 1:
        part = part[1:-1].strip()
    return part


def _closing(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return -1


def _powers_in_I(text: str) -> str:
    """R's ``I(x^2)`` is a power; in Python (formulaic evaluates ``I()``) ``^`` is XOR."""
    out, i = [], 0
    for match in re.finditer(r"(?<![\w.])I\(", text):
        if match.start() < i:
            continue
        end = _closing(text, match.end() - 1)
        out.append(text[i : match.end()])
        out.append(text[match.end() : end].replace("**", "^").replace("^", "**"))
        i = end
    out.append(text[i:])
    return "".join(out)


def _group(text: str, term: str) -> list[tuple[str, ...]]:
    """The grouping factors of ``(…|text)``: ``a/b`` nests, giving ``a`` and ``a:b``."""
    nested = [p.strip() for p in text.split("/")]
    groups, prefix = [], ()
    for piece in nested:
        columns = tuple(c.strip() for c in piece.split(":"))
        for column in columns:
            if not column:
                raise ValueError(f"random-effects term {term!r}: a grouping factor is missing")
            if not _NAME_RE.match(column):
                raise ValueError(
                    f"random-effects term {term!r}: {column!r} is not a column name (names have "
                    "no spaces or operators; quote one that has with backticks, `my column`)"
                )
        prefix = prefix + tuple(c.strip("`") for c in columns)
        groups.append(prefix)
    return groups


def _expr(text: str, term: str) -> str:
    """The left of the bar, checked: an intercept at most once, something to estimate."""
    if not text.strip():
        raise ValueError(
            f"random-effects term {term!r} has nothing left of the bar; write (1|g) for a random "
            "intercept"
        )
    parts = _split_top_level(text, term)
    if len(parts) > 1 and parts[0] == ("+", ""):  # a leading sign: (-1 + x|g)
        parts = parts[1:]
    intercepts = [(s, p) for s, p in parts if p in {"0", "1"}]
    if any(not p for _, p in parts):
        raise ValueError(f"random-effects term {term!r}: an empty part next to '+' or '-'")
    if len(intercepts) > 1:
        raise ValueError(
            f"random-effects term {term!r} gives the intercept {len(intercepts)} times; give it "
            "once (1 + x) or remove it (0 + x)"
        )
    slopes = [p for _, p in parts if p not in {"0", "1"}]
    for sign, part in parts:
        if sign == "-" and part not in {"0", "1"}:
            raise ValueError(f"random-effects term {term!r}: only the intercept can be removed")
    has_intercept = not intercepts or intercepts[0] in {("+", "1")}
    if not has_intercept and not slopes:
        raise ValueError(f"random-effects term {term!r} has neither an intercept nor a slope")
    if not slopes:
        return "1"
    return " + ".join(["1" if has_intercept else "0", *slopes])


def parse_formula(formula: str) -> Formula:
    """Split an lme4 formula into its response label, fixed part and random terms.

    A left-hand side may only be a plain name (a label for the response, e.g. ``y``): the
    responses are the data matrix, so a transformation there would be ignored and is refused.

    Examples
    --------
    >>> f = parse_formula("y ~ condition + (1|batch/cask) + (0 + Days|Subject)")
    >>> f.fixed, [(p.expr, p.group) for p in f.random]
    ('condition', [('1', ('batch',)), ('1', ('batch', 'cask')), ('0 + Days', ('Subject',))])
    """
    if not isinstance(formula, str) or formula.count("~") != 1:
        raise ValueError(f"formula must be a string with one '~', got {formula!r}")
    lhs, rhs = (s.strip() for s in formula.split("~"))
    if lhs and not _NAME_RE.match(lhs):
        raise ValueError(
            f"formula {formula!r}: the left-hand side {lhs!r} would be ignored — the responses "
            "are the data matrix; transform the data first (e.g. omixed.pp.log_transform) and "
            "write the formula as '~ …'"
        )
    if not rhs:
        raise ValueError(f"formula {formula!r} has nothing right of '~'; use '~ 1' for none")
    rhs = _powers_in_I(rhs)
    fixed, random = [], []
    for sign, raw in _split_top_level(rhs, formula):
        part = _unwrap(raw)
        if "|" not in part:
            if not raw:
                raise ValueError(f"formula {formula!r}: an empty term next to '+' or '-'")
            fixed.append(raw if sign == "+" else f"- {raw}")
            continue
        term = f"({part})"
        if sign == "-":
            raise ValueError(f"formula {formula!r}: a random-effects term cannot be subtracted")
        if not (raw.startswith("(") and raw.endswith(")")):
            raise ValueError(f"random-effects term {raw!r} must be written in parentheses")
        bars = "||" if "||" in part else "|"
        if part.count("|") != len(bars):
            raise ValueError(f"random-effects term {term!r} has more than one bar")
        left, right = part.split(bars)
        expr = _expr(left, term)
        for group in _group(right, term):
            random.append(RandomPart(expr, bars == "|", group))
    fixed_text = " + ".join(fixed).replace("+ -", "-") if fixed else "1"
    if fixed_text.startswith("- "):
        fixed_text = "1 " + fixed_text
    return Formula(formula, lhs or None, fixed_text, tuple(random))
