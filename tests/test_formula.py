"""Reading lme4 formulas: shorthands expand as in lme4, malformed terms are refused by name."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import crossed_design, simulate

from omixed import lmm


def test_fixed_part_random_terms_and_response_label():
    f = lmm.parse_formula("strength ~ 1 + (1|batch) + (1 | batch:cask)")
    assert f.response == "strength"
    assert f.fixed == "1"
    assert [(p.expr, p.correlated, p.group) for p in f.random] == [
        ("1", True, ("batch",)),
        ("1", True, ("batch", "cask")),
    ]
    assert lmm.parse_formula("~ a*b + (1|g)").fixed == "a*b"
    assert lmm.parse_formula("~ a - 1 + (1|g)").fixed == "a - 1"


def test_nesting_expands_as_in_lme4():
    f = lmm.parse_formula("~ 1 + (1|a/b/c)")
    assert [p.group for p in f.random] == [("a",), ("a", "b"), ("a", "b", "c")]


@pytest.mark.parametrize(
    ("text", "expr"),
    [
        ("(x|g)", "1 + x"),
        ("(1 + x|g)", "1 + x"),
        ("(0 + x|g)", "0 + x"),
        ("(x - 1|g)", "0 + x"),
        ("(-1 + x|g)", "0 + x"),
        ("(log(x)|g)", "1 + log(x)"),
        ("((1|g))", "1"),
        ("( 1 | g )", "1"),
    ],
)
def test_left_of_the_bar_is_read_as_lme4_does(text, expr):
    (part,) = lmm.parse_formula(f"~ 1 + {text}").random
    assert part.expr == expr
    assert part.group == ("g",)


def test_power_inside_I_is_a_power():
    assert lmm.parse_formula("~ I(day^2) + (1|g)").fixed == "I(day**2)"
    assert lmm.parse_formula("~ I(day**2)").fixed == "I(day**2)"


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("~ x + (|batch)", r"'\(\|batch\)' has nothing left of the bar"),
        ("~ x + (1+1|batch)", "intercept 2 times"),
        ("~ x + ( 1 | ba tch)", "'ba tch' is not a column name"),
        ("log2(y) ~ x + (1|batch)", "left-hand side 'log2\\(y\\)' would be ignored"),
        ("~ x + (1|a||b)", "more than one bar"),
        ("~ x + (0|batch)", "neither an intercept nor a slope"),
        ("~ x - (1|batch)", "cannot be subtracted"),
        ("~ x + (1|batch", "unbalanced"),
        ("x + (1|batch)", "one '~'"),
        ("~ x ~ (1|batch)", "one '~'"),
        ("~ x + 1|batch", "parentheses"),
        ("~ x + (1|)", "grouping factor is missing"),
        ("~", "nothing right of '~'"),
    ],
)
def test_malformed_formulas_are_refused_quoting_the_term(formula, message):
    with pytest.raises(ValueError, match=message):
        lmm.parse_formula(formula)


def _sleep_like(seed=0):
    rng = np.random.default_rng(seed)
    data = pd.DataFrame({"subject": np.repeat([f"s{i}" for i in range(12)], 6)})
    data["day"] = np.tile(np.arange(6.0), 12)
    Y = 2 + 0.3 * data["day"].to_numpy()[:, None] ** 2 + rng.normal(size=(72, 4))
    Y += rng.normal(size=(12, 4)).repeat(6, axis=0)
    return Y, data


def test_R_power_gives_the_same_fit_as_the_squared_column():
    Y, data = _sleep_like()
    by_power = lmm.fit(Y, data, "~ day + I(day^2) + (1|subject)")
    explicit = lmm.fit(Y, data.assign(day2=data["day"] ** 2), "~ day + day2 + (1|subject)")
    np.testing.assert_allclose(by_power.criterion, explicit.criterion, rtol=1e-12)
    np.testing.assert_allclose(by_power.beta.to_numpy(), explicit.beta.to_numpy(), rtol=1e-10)


def test_nested_term_equals_its_expansion():
    design = crossed_design()
    design["rep"] = design.groupby("donor").cumcount().astype(str)
    Y = simulate(design, n_features=5)
    nested = lmm.fit(Y, design, "~ condition + (1|donor/rep)")
    expanded = lmm.fit(Y, design, "~ condition + (1|donor) + (1|donor:rep)")
    assert nested.spec.term_names == ("donor", "donor:rep")
    np.testing.assert_array_equal(nested.criterion, expanded.criterion)


def test_transformed_and_factor_slopes():
    rng = np.random.default_rng(3)
    data = pd.DataFrame(
        {"g": np.repeat(list("abcdefgh"), 6), "x": rng.uniform(1, 5, 48), "f": list("uv") * 24}
    )
    Y = rng.normal(size=(48, 3))
    logged = lmm.fit(Y, data, "~ log(x) + (0 + log(x)|g)")
    explicit = lmm.fit(Y, data.assign(lx=np.log(data["x"])), "~ lx + (0 + lx|g)")
    np.testing.assert_allclose(logged.criterion, explicit.criterion, rtol=1e-12)
    assert logged.spec.term_names == ("g.log(x)",)
    by_factor = lmm.fit(Y, data, "~ f + (0 + f|g)")
    assert by_factor.spec.term_names == ("g.f[u]", "g.f[v]")
    assert by_factor.spec.blocks == ((0, 1),)
    # (0 + f|g) with two levels is (0 + u|g) + (0 + v|g) correlated: the same model.
    dummies = data.assign(u=(data["f"] == "u") * 1.0, v=(data["f"] == "v") * 1.0)
    explicit = lmm.fit(Y, dummies, "~ f + (0 + u + v|g)")
    np.testing.assert_allclose(by_factor.criterion, explicit.criterion, rtol=1e-9)
