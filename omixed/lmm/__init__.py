"""Vectorized linear mixed models for many features at once (knows nothing about AnnData).

The pieces follow MixedModels.jl: :mod:`._spec` turns a formula into the fixed-effects matrix and
random-effects terms, :mod:`._design` plans the elimination order and the sparse maps of
:mod:`._crossprod`, which forms every feature's cross-products from the factor codes (compiled
loops in :mod:`._kernels`); :mod:`._elimination` is the one interface to the criterion of θ,
implemented by :mod:`._objective` (a scalar term eliminated in closed form) and :mod:`._dense`
(several or correlated terms, level by level); :mod:`._starts` gives moment-based starting
values, :mod:`._optimize` minimizes the criterion for all features together, and :func:`fit`
ties them together over feature chunks.  :mod:`._inference` adds Satterthwaite tests and
limma's variance moderation on top of a fit.
"""

from ._contrasts import contrast_vector, estimable
from ._correction import (
    CORRECTION_METHODS,
    Removal,
    check_removal,
    nested_warning,
    removed_contribution,
)
from ._fit import fit
from ._formula import Formula, parse_formula
from ._grouped import fit_grouped
from ._hurdle import detection_test, fisher_combined
from ._inference import (
    contrast_moments,
    contrast_moments_grouped,
    satterthwaite,
    satterthwaite_grouped,
    t_table,
)
from ._moderation import SqueezedVar, squeeze_var, trigamma_inverse
from ._result import LMMResult
from ._robust import fit_robust, fitted_values
from ._spec import FixedSpec, ModelSpec, RandomTerm, Specification, TermSpec, build_spec

__all__ = [
    "CORRECTION_METHODS",
    "FixedSpec",
    "Formula",
    "LMMResult",
    "ModelSpec",
    "RandomTerm",
    "Removal",
    "Specification",
    "SqueezedVar",
    "TermSpec",
    "build_spec",
    "check_removal",
    "contrast_moments",
    "contrast_moments_grouped",
    "contrast_vector",
    "detection_test",
    "estimable",
    "fisher_combined",
    "fit",
    "fit_grouped",
    "fit_robust",
    "fitted_values",
    "nested_warning",
    "parse_formula",
    "removed_contribution",
    "satterthwaite",
    "satterthwaite_grouped",
    "squeeze_var",
    "t_table",
    "trigamma_inverse",
]
