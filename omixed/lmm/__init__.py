"""Vectorized linear mixed models for many features at once (knows nothing about AnnData).

The pieces follow MixedModels.jl: :mod:`._spec` turns a formula into the fixed-effects matrix and
random-effects terms, :mod:`._objective` evaluates the profiled REML/ML criterion of θ for a stack
of features, :mod:`._optimize` minimizes it for all features together, and :func:`fit` ties them
together over feature chunks.
"""

from ._fit import fit
from ._grouped import fit_grouped
from ._result import LMMResult
from ._spec import ModelSpec, RandomTerm, build_spec, parse_formula

__all__ = [
    "LMMResult",
    "ModelSpec",
    "RandomTerm",
    "build_spec",
    "fit",
    "fit_grouped",
    "parse_formula",
]
