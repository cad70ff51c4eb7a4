"""Plots (matplotlib): variance partition, PCA before/after correction, single features, volcano.

Every function takes ``show`` and ``save`` and returns its figure or axes unless shown.
"""

from ._feature import feature
from ._pca import pca, pca_compare
from ._varpart import variance_partition
from ._volcano import volcano

__all__ = ["feature", "pca", "pca_compare", "variance_partition", "volcano"]
