"""Implementation of the ``omixed`` command line (see :mod:`omixed.cli`)."""
