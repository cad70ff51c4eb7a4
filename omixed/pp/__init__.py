"""Preprocessing: transformations, normalizations and feature filters.

Data are samples × features with NaN for missing values.

Each function records its step and parameters in ``adata.uns["omixed_pp"]``.
"""

from ._filter import filter_features
from ._normalize import clr, log_transform, median_center, quantile_normalize

__all__ = ["clr", "filter_features", "log_transform", "median_center", "quantile_normalize"]
