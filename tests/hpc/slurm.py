"""Run the throwaway one-node SLURM cluster of ``slurm-cluster.sh`` around a block of tests.

It installs SLURM with apt-get (if missing) and starts daemons as root, so it runs only where
someone asked for it: ``tests/test_slurm.py`` uses it when ``OMIXED_SLURM_TEST_CLUSTER=1`` is set
(``.ci/run`` sets it), e.g.::

    with slurm_cluster() as env:
        subprocess.run(["snakemake", "--profile", "profiles/slurm"], env=env, check=True)

and passes ``env`` to every ``subprocess.run`` that calls ``snakemake``, ``sbatch`` or
``squeue``.  Starting takes about a second once SLURM is installed; the first start on a fresh
machine installs it with apt-get (tens of seconds).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

SCRIPT = Path(__file__).with_name("slurm-cluster.sh")
# Generous: the first start may run `apt-get update` and install SLURM.
START_TIMEOUT = 900
STOP_TIMEOUT = 120


def _run(action: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), action],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _slurm_conf(stdout: str) -> str:
    """Path from the ``export SLURM_CONF=...`` line that ``start`` prints."""
    prefix = "export SLURM_CONF="
    for line in stdout.splitlines():
        if line.startswith(prefix):
            return line.removeprefix(prefix)
    raise RuntimeError(f"slurm-cluster.sh start printed no SLURM_CONF line:\n{stdout}")


@contextlib.contextmanager
def slurm_cluster(state_dir: Path | None = None) -> Iterator[dict[str, str]]:
    """Start a one-node SLURM cluster, yield an environment for using it, then stop it.

    Parameters
    ----------
    state_dir
        Directory for the cluster's configuration, state and logs (``OMIXED_SLURM_DIR``);
        ``None`` uses the script's default, ``/tmp/omixed-slurm``.

    Yields
    ------
    dict
        A copy of ``os.environ`` with ``SLURM_CONF`` (and ``OMIXED_SLURM_DIR`` if given) set.
        The test fails, with the script's reason, when the cluster does not start (also when
        this machine cannot host one: the caller asked for it).  A cluster that was already
        running is left running afterwards.

    Examples
    --------
    >>> with slurm_cluster() as env:  # doctest: +SKIP
    ...     subprocess.run(["sbatch", "--wrap", "hostname"], env=env, check=True)
    """
    env = os.environ.copy()
    if state_dir is not None:
        env["OMIXED_SLURM_DIR"] = str(state_dir)
    was_running = _run("status", env, STOP_TIMEOUT).returncode == 0

    started = _run("start", env, START_TIMEOUT)
    if started.returncode != 0:
        pytest.fail(
            f"slurm-cluster.sh start failed ({started.returncode}):\n{started.stderr}",
            pytrace=False,
        )
    env["SLURM_CONF"] = _slurm_conf(started.stdout)
    try:
        yield env
    finally:
        if not was_running:
            stopped = _run("stop", env, STOP_TIMEOUT)
            if stopped.returncode != 0:
                raise RuntimeError(f"slurm-cluster.sh stop failed:\n{stopped.stderr}")
