"""Tools: fit per-feature mixed models, remove batch effects, partition variance, meta-analysis."""

from ._correct import correct
from ._fit import fit
from ._meta import meta
from ._varpart import variance_partition

__all__ = ["correct", "fit", "meta", "variance_partition"]
