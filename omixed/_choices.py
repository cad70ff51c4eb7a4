"""Option values shared by the library, the command line and the workflow's configuration check.

Kept free of imports so that ``omixed --help`` can list them without loading the package.
"""

CORRECTION_METHODS = ("eb", "blup", "full")
# `omixed import` types: bundled example data, an h5ad, or a reader `omixed.io.read_<type>`.
INPUT_TYPES = ("example", "h5ad", "table", "maxquant", "diann", "long")
# `omixed normalize` steps: functions of `omixed.pp` of the same name.
NORMALIZERS = ("log_transform", "median_center", "quantile_normalize", "clr")
