"""Contrasts of the fixed effects: reading them, and whether a feature's data can estimate them.

A contrast is a weight vector ``l`` over the fixed-effect columns; ``l'β`` is tested.  When a
feature's observed rows do not identify every column (a level with no values; the fit drops an
aliased column, as lme4 does), ``l'β`` means something only if ``l`` lies in the row space of
that feature's design: then its value does not depend on which column was dropped.  Otherwise
it is not estimable and reported as such, as limma and msqrob2 do.
"""

from __future__ import annotations

import ast
import re

import numpy as np

__all__ = ["contrast_vector", "estimable"]

_NULL = 1e-9  # eigenvalue (relative to the largest) below which a direction is aliased
_OUTSIDE = 1e-6  # relative part of a contrast outside the row space that makes it non-estimable


def contrast_vector(contrast, names: tuple[str, ...] | list[str]) -> tuple[np.ndarray, str]:
    """Weights over the fixed effects ``names`` and a readable label for a contrast.

    ``contrast`` is a coefficient name (``"condition[T.treated]"``), a ``{name: weight}`` dict, a
    numeric vector (one weight per coefficient) or a linear expression of coefficient names with
    numeric factors (``"condition[T.b] - condition[T.c]"``, ``"0.5*a + 0.5*b"``).  R-style names
    (``"conditiontreated"``, ``"(Intercept)"``) are accepted where they are unambiguous.

    Examples
    --------
    >>> contrast_vector("b[T.y] - b[T.z]", ["Intercept", "b[T.y]", "b[T.z]"])
    (array([ 0.,  1., -1.]), 'b[T.y] - b[T.z]')
    """
    names = [str(n) for n in names]
    lookup = _name_lookup(names)
    if isinstance(contrast, str):
        weights = _parse_expression(contrast, lookup, names)
    elif isinstance(contrast, dict):
        weights = np.zeros(len(names))
        for name, weight in contrast.items():
            if name not in lookup:
                raise KeyError(f"{name!r} is not a fixed effect; available: {names}")
            weights[lookup[name]] += float(weight)
    else:
        weights = np.asarray(contrast, dtype=np.float64).ravel()
        if weights.size != len(names):
            raise ValueError(
                f"contrast vector has {weights.size} weights for {len(names)} fixed effects {names}"
            )
    if not np.all(np.isfinite(weights)) or not np.any(weights):
        raise ValueError(f"contrast {contrast!r} has no (finite) nonzero weight")
    return weights, _label(weights, names)


def _name_lookup(names: list[str]) -> dict[str, int]:
    """Coefficient names and their unambiguous R-style aliases → column index."""
    lookup = {name: i for i, name in enumerate(names)}
    aliases: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        alias = "(Intercept)" if name == "Intercept" else re.sub(r"\[T\.(.*?)\]", r"\1", name)
        aliases.setdefault(alias, []).append(i)
    for alias, idx in aliases.items():
        if len(idx) == 1 and alias not in lookup:
            lookup[alias] = idx[0]
    return lookup


def _parse_expression(expr: str, lookup: dict[str, int], names: list[str]) -> np.ndarray:
    """A linear expression of coefficient names → weights (constant terms are an error)."""
    keys = sorted(lookup, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w.\[\]])(" + "|".join(map(re.escape, keys)) + r")(?![\w.\[\]])")
    found: list[int] = []

    def placeholder(match: re.Match) -> str:
        found.append(lookup[match.group(1)])
        return f"__c{len(found) - 1}__"

    source = pattern.sub(placeholder, expr)
    p = len(names)

    def evaluate(node: ast.AST) -> np.ndarray:
        # Each value is (weights over the p coefficients, constant) as one length p+1 vector.
        if isinstance(node, ast.Expression):
            return evaluate(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return np.r_[np.zeros(p), float(node.value)]
        if isinstance(node, ast.Name) and re.fullmatch(r"__c\d+__", node.id):
            return np.eye(p + 1)[found[int(node.id[3:-2])]]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            sign = -1.0 if isinstance(node.op, ast.USub) else 1.0
            return sign * evaluate(node.operand)
        if isinstance(node, ast.BinOp):
            left, right = evaluate(node.left), evaluate(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult) and not (left[:p].any() and right[:p].any()):
                return left * right[p] if not right[:p].any() else right * left[p]
            if isinstance(node.op, ast.Div) and not right[:p].any() and right[p] != 0:
                return left / right[p]
        raise ValueError(
            f"cannot read contrast {expr!r}: use coefficient names, numbers, + - * /; "
            f"coefficients: {names}"
        )

    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise ValueError(
            f"cannot read contrast {expr!r} (unknown name or syntax error); coefficients: {names}"
        ) from exc
    value = evaluate(tree)
    if value[p] != 0:
        raise ValueError(f"contrast {expr!r} has a constant term; a contrast is Σ w_j β_j")
    return value[:p]


def _label(weights: np.ndarray, names: list[str]) -> str:
    parts = []
    for w, name in zip(weights, names, strict=True):
        if w == 0:
            continue
        term = name if abs(w) == 1 else f"{abs(w):g}*{name}"
        parts.append((" - " if w < 0 else " + ") + term)
    label = "".join(parts)
    return label[3:] if label.startswith(" + ") else "-" + label[3:]


def estimable(weights: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """Whether contrast ``weights`` is estimable from each feature's rows.

    ``gram`` is ``(m, p, p)``: ``X'WX`` of each feature's observed rows (``W`` the observed
    rows' weights).  ``l`` is estimable exactly when it lies in the row space of ``X``, which is
    the column space of ``X'WX``.  The test is scaled by the columns' norms, so it does not
    depend on the units of a covariate; an all-zero column (a level no row has) takes no part.

    Examples
    --------
    >>> X = np.array([[1.0, 1, 0], [1, 1, 0], [1, 0, 1]])  # level a of (a, b, c) never observed
    >>> G = (X.T @ X)[None]
    >>> bool(estimable(np.array([0.0, 1, -1]), G)[0]), bool(estimable(np.array([0.0, 1, 0]), G)[0])
    (True, False)
    """
    weights = np.asarray(weights, dtype=np.float64)
    norms = np.sqrt(np.diagonal(gram, axis1=1, axis2=2))
    scale = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 1.0)
    scaled = gram * scale[:, :, None] * scale[:, None, :]
    vals, vecs = np.linalg.eigh(scaled)
    null = vals <= _NULL * np.maximum(vals.max(axis=1, keepdims=True), np.finfo(float).tiny)
    # l ∈ range(G) ⟺ Dl ∈ range(DGD) for the diagonal scaling D = diag(scale).
    target = weights[None, :] * scale
    outside = np.einsum("mji,mj->mi", vecs, target) * null
    size = np.linalg.norm(target, axis=1)
    return np.linalg.norm(outside, axis=1) <= _OUTSIDE * np.maximum(size, np.finfo(float).tiny)
