"""Fixtures several test files share (none is autouse: a file asks for what it needs)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch


def pytest_configure(config):
    """The tests never see (nor write) the user's own devices: the user config directory is a
    fresh temporary one (a calibrated `host` there would join every default comparison)."""
    os.environ["SPARSESIM_CONFIG_DIR"] = tempfile.mkdtemp(prefix="sparsesim-config-")
    # nor the on-disk cache of traces and tables: each test traces and costs afresh (test_diskcache
    # turns it on in a temporary directory)
    os.environ["SPARSESIM_NO_CACHE"] = "1"


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine OpenMP barriers cost more than they give."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def search_env(tmp_path_factory) -> dict[str, str]:
    """The environment of `sparsesim search` subprocesses: a private cache holding the digits CNN
    (trained once for the whole session), one OpenMP thread, and tests/ on the path (for the
    --evaluate helpers in search_helpers.py)."""
    cache = tmp_path_factory.mktemp("search-cache")
    tests = str(Path(__file__).resolve().parent)
    env = dict(os.environ, SPARSESIM_CACHE=str(cache), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", "from sparsesim.tracing.models import digits; digits.pretrained()"],
                   env=env, check=True, timeout=300)
    return env


@pytest.fixture
def cli(capsys) -> Callable[..., tuple[int, str, str]]:
    """Run the real `sparsesim` entry point: cli("trace", "resnet18") -> (exit code, stdout, stderr)."""
    from sparsesim.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err

    return run
