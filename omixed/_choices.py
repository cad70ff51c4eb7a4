"""Option values shared by the library, the command line and the workflow's configuration check.

Kept free of heavy imports so that ``omixed --help`` can list them without loading the package.
"""

import re

CORRECTION_METHODS = ("eb", "blup", "full")
# `omixed import` types: bundled example data, an h5ad, `auto` (omixed.io.read recognises the
# tool from the file) or a reader `omixed.io.read_<type>`.
READERS = (
    "table",
    "long",
    "maxquant",
    "diann",
    "fragpipe",
    "spectronaut",
    "alphadia",
    "sage",
    "peaks",
    "alphapept",
    "proteome_discoverer",
    "msstats",
)
INPUT_TYPES = ("example", "example_peptides", "h5ad", "auto", *READERS)
# `omixed normalize` steps: functions of `omixed.pp` of the same name.
NORMALIZERS = ("log_transform", "median_center", "quantile_normalize", "clr")

# Keys under which results are stored (``key_added``): they must round-trip through h5ad.
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_key(key: str) -> str:
    """A key that round-trips through h5ad: letters, digits, ``_ . -`` (no ``/``)."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(
            f"key {key!r} cannot be stored: use letters, digits, '_', '.' or '-' (no '/' or "
            "spaces), starting with a letter or digit"
        )
    return key
