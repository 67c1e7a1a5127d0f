"""The code stays lint- and type-clean: ruff over the package, tests and benchmarks, mypy over the
package (both configured in pyproject.toml, pinned in the `test` extra)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (it comes with the `test` extra)")
    return found


def test_ruff_is_clean():
    out = subprocess.run([_tool("ruff"), "check", "sparsesim", "tests", "benchmarks"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


@pytest.mark.slow
def test_mypy_is_clean(tmp_path):
    out = subprocess.run([_tool("mypy"), "--cache-dir", str(tmp_path / "mypy-cache")], cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
