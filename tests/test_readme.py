"""Every code block of README.md runs as printed.

Each Python block runs on its own, in a fresh namespace (so it must import what it uses) and an
empty folder; it may warn only where the block says so (``EXPECTED_WARNINGS``).  The shell
blocks need a fresh clone, a cluster or the whole suite, so they run elsewhere: ``SHELL_BLOCKS``
says where, and a new one fails here until it is placed.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

README = Path(__file__).parents[1] / "README.md"
# The first line of each shell block, and what runs it.
SHELL_BLOCKS = {
    "# 1. the main job: install, run the workflow on the bundled example data, build its report": (
        ".ci/run: both Quick-start commands, extracted from this file, in a fresh clone and venv"
    ),
    'python -m pip install -e ".[hpc]" && snakemake --profile profiles/slurm': (
        "tests/test_slurm.py runs the workflow through profiles/slurm"
    ),
    'python -m pip install -e ".[dev]"': ".ci/run runs the lint line; the rest is the test suite",
}
# Heading of a block -> the one warning it announces in a "# warns:" comment.
EXPECTED_WARNINGS = {"New samples, no refit": "2 of 2000 features were not fit"}


def blocks(language: str) -> list[tuple[str, str]]:
    """(heading above it, code) of every fenced block of ``language`` in the README."""
    found, heading = [], "top"
    for match in re.finditer(
        r"^(#+ [^\n]*)$|^```(\w*)\n(.*?)^```$", README.read_text(), re.M | re.S
    ):
        if match[1]:
            heading = match[1].lstrip("# ")
        elif match[2] == language:
            found.append((heading, match[3]))
    return found


PYTHON = blocks("python")


def test_readme_has_the_expected_blocks() -> None:
    assert len(PYTHON) >= 9
    first_lines = [code.splitlines()[0] for _, code in blocks("bash")]
    assert sorted(first_lines) == sorted(SHELL_BLOCKS)


@pytest.mark.parametrize(("heading", "code"), PYTHON, ids=[h for h, _ in PYTHON])
def test_python_block_runs_as_printed(
    heading: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    plt.close("all")
    messages = [str(w.message) for w in caught]
    if heading in EXPECTED_WARNINGS:
        assert "# warns:" in code
        assert len(messages) == 1 and messages[0].startswith(EXPECTED_WARNINGS[heading])
    else:
        assert messages == []
