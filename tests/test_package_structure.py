"""Public namespaces follow one convention (as scanpy's tests/test_package_structure.py checks)."""

from __future__ import annotations

import inspect
import re

import pytest

import omixed
from omixed._docs import DOCS, doc_params

NAMESPACES = ["pp", "tl", "pl", "get", "io", "datasets"]
# Functions whose first argument is not an AnnData: readers take a path, meta takes estimates,
# datasets take nothing.
NOT_ADATA_FIRST = {f"io.{name}" for name in omixed.io.__all__ if name.startswith("read")}
NOT_ADATA_FIRST.add("tl.meta")


def _public():
    for ns in NAMESPACES:
        module = getattr(omixed, ns)
        assert hasattr(module, "__all__"), f"omixed.{ns} has no __all__"
        for name in module.__all__:
            yield f"{ns}.{name}", getattr(module, name)


PUBLIC = pytest.mark.parametrize(
    ("name", "func"), list(_public()), ids=lambda x: x if isinstance(x, str) else ""
)


@PUBLIC
def test_public_functions_follow_the_convention(name, func):
    assert func.__doc__, f"{name} has no docstring"
    for section in ("Parameters", "Returns", "Examples"):
        if section == "Parameters" and not inspect.signature(func).parameters:
            continue
        assert section in func.__doc__, f"{name} docstring lacks {section}"
    params = list(inspect.signature(func).parameters.values())
    if name.startswith("datasets."):
        assert all(p.kind is p.KEYWORD_ONLY for p in params)
        return
    if name not in NOT_ADATA_FIRST:
        assert params[0].name == "adata", f"{name}: first parameter is {params[0].name}"
    positional = [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    two = {"tl.fit", "tl.transform", "pl.feature", "io.join_sample_sheet", "tl.meta"}
    allowed = 2 if name in two else 1
    assert len(positional) <= allowed, f"{name}: options must be keyword-only ({positional})"
    copy = next((p for p in params if p.name == "copy"), None)
    if copy is not None:
        assert copy.default is False


def _placeholders(text: str) -> set[str]:
    return set(re.findall(r"\{(\w+)\}", text))


@PUBLIC
def test_docstring_snippets_are_filled(name, func):
    # the snippets' names and the per-function fields they hold (``{result}``, ...)
    snippets = set(DOCS).union(*map(_placeholders, DOCS.values()))
    assert not _placeholders(func.__doc__) & snippets, f"{name}: @doc_params missing or incomplete"


def test_doc_params_indents_snippets_and_leaves_other_braces():
    @doc_params(result="scaled")
    def func():
        """Summary of ``uns[f"{key}_x"]``.

        Parameters
        ----------
        {fitted_adata}

        Returns
        -------
        {returns_copy} More text.
        """

    assert (
        func.__doc__
        == """Summary of ``uns[f"{key}_x"]``.

        Parameters
        ----------
        adata
            AnnData fitted with :func:`omixed.tl.fit`.

        Returns
        -------
        The scaled copy if ``copy=True``, else None. More text.
        """
    )
