"""Docstring snippets shared by the public functions, and :func:`doc_params` that fills them in.

As scanpy's ``_docs.py`` and ``_utils._doc_params``: a docstring names a snippet by a
``{placeholder}``, and ``@doc_params`` replaces it when the module is imported, so ``help()``,
the doctests and the rendered documentation see the full text.  Unlike ``str.format`` only the
names in :data:`DOCS` (and those given to the decorator) are replaced: other braces, such as
``uns[f"{key}_colors"]``, stay as they are.  A snippet spanning several lines takes the
indentation of the line its placeholder stands on; text after the placeholder follows the
snippet's last line.  Snippets may hold placeholders themselves, e.g. fields the decorator
fills per function: ``@doc_params(action="Normalize", result="normalized")``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TypeVar, overload

F = TypeVar("F", bound=Callable)

DOCS: dict[str, str] = {
    # preprocessing that transforms the data matrix in place or in a copy
    "layer_copy": """\
layer
    {action} ``adata.layers[layer]`` instead of ``adata.X``.
copy
    Return a {result} copy instead of modifying ``adata``.""",
    "returns_copy": "The {result} copy if ``copy=True``, else None.",
    # tools and plots that read a fit of omixed.tl.fit
    "fitted_adata": """\
adata
    AnnData fitted with :func:`omixed.tl.fit`.""",
    "fit_key": """\
key
    The ``key_added`` of that fit.""",
    "example_fit": """\
>>> import omixed
>>> adata = omixed.datasets.example()
>>> omixed.tl.fit(adata, "~ condition + (1|batch) + (1|donor)", progress=False)""",
    "example_corrected": """\
{example_fit}
>>> omixed.tl.correct(adata, remove=["batch"])""",
    # plots
    "show_save": """\
show
    ``True``: call :func:`matplotlib.pyplot.show` and return ``None``; ``False``: return the
    plot; ``None``: show when pyplot is in interactive mode (IPython/Jupyter), else return it.
save
    Write the figure to this path; the format follows the suffix (``.png``, ``.pdf``, ``.svg``).
    The file is replaced atomically, so an interrupted run never leaves a partial file.""",
    "ax": """\
ax
    Draw into this axes instead of a new figure.""",
    "returns_figure": """\
Returns
-------
The figure, unless it is shown.""",
}

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def fill(text: str, values: Mapping[str, str]) -> str:
    """``text`` with every ``{name}`` of ``values`` replaced (recursively), indented alike."""

    def replace(match: re.Match) -> str:
        name = match[1]
        if name not in values:
            return match[0]
        line = text[text.rfind("\n", 0, match.start()) + 1 : match.start()]
        indent = line[: len(line) - len(line.lstrip())]
        first, *rest = fill(values[name], values).split("\n")
        return "\n".join([first, *(indent + r if r else r for r in rest)])

    return _PLACEHOLDER.sub(replace, text)


@overload
def doc_params(func: F, /) -> F: ...
@overload
def doc_params(**fields: str) -> Callable[[F], F]: ...
def doc_params(func=None, /, **fields):
    """Fill the :data:`DOCS` placeholders and the ``fields`` in the decorated function's docstring.

    Use as ``@doc_params`` or, when snippets hold per-function fields, as
    ``@doc_params(name=value, ...)``.
    """

    def decorate(func: F) -> F:
        func.__doc__ = fill(func.__doc__, {**DOCS, **fields})
        return func

    return decorate if func is None else decorate(func)
