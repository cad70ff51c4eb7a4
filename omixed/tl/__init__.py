"""Tools: per-feature mixed models, batch removal, variance partition, proteins, meta-analysis."""

from ._contrast import test
from ._correct import correct
from ._fit import fit
from ._meta import meta
from ._proteins import protein_formula, summarize_proteins
from ._transform import transform
from ._varpart import variance_partition

__all__ = [
    "correct",
    "fit",
    "meta",
    "protein_formula",
    "summarize_proteins",
    "test",
    "transform",
    "variance_partition",
]
