"""Vectorized linear mixed models for many features at once (knows nothing about AnnData).

The pieces follow MixedModels.jl: :mod:`._spec` turns a formula into the fixed-effects matrix and
random-effects terms, :mod:`._crossprod` forms every feature's cross-products from the sparse
design, :mod:`._objective` evaluates the profiled REML/ML criterion of θ for a stack of features
(:mod:`._dense` for correlated terms and several terms on one factor), :mod:`._starts` gives
moment-based starting values, :mod:`._optimize` minimizes the criterion for all features
together, and :func:`fit` ties them together over feature chunks.  :mod:`._inference` adds
Satterthwaite tests and limma's variance moderation on top of a fit.
"""

from ._fit import fit
from ._grouped import fit_grouped
from ._inference import (
    SqueezedVar,
    contrast_moments,
    contrast_moments_grouped,
    contrast_vector,
    satterthwaite,
    satterthwaite_grouped,
    squeeze_var,
    t_table,
    trigamma_inverse,
)
from ._result import LMMResult
from ._robust import fit_robust, fitted_values
from ._spec import ModelSpec, RandomTerm, build_spec, parse_formula

__all__ = [
    "LMMResult",
    "ModelSpec",
    "RandomTerm",
    "SqueezedVar",
    "build_spec",
    "contrast_moments",
    "contrast_moments_grouped",
    "contrast_vector",
    "fit",
    "fit_grouped",
    "fit_robust",
    "fitted_values",
    "parse_formula",
    "satterthwaite",
    "satterthwaite_grouped",
    "squeeze_var",
    "t_table",
    "trigamma_inverse",
]
