"""Option values shared by the library, the command line and the workflow's configuration check.

Kept free of imports so that ``omixed --help`` can list them without loading the package.
"""

CORRECTION_METHODS = ("eb", "blup", "full")
