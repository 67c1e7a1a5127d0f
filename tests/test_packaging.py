"""A non-editable wheel carries the device files and workload recipes, and finds them."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"pip wheel failed: {r.stderr[-2000:]}")
    (whl,) = out.glob("sparsesim-*.whl")
    return whl


def test_wheel_packages_devices_and_recipes(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for p in (REPO / "accelerators").glob("*.toml"):
        if p.stem != "host":
            assert f"sparsesim/_data/accelerators/{p.name}" in names
    for p in (REPO / "workloads").glob("*.toml"):
        assert f"sparsesim/_data/workloads/{p.name}" in names
    assert any(n.endswith("entry_points.txt") for n in names)


def test_unpacked_wheel_finds_its_data_outside_the_checkout(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = ("import sparsesim.hw.devices as d, sparsesim.tracing.workloads as w;"
            "print(len(d.builtin_devices()), len(w.list_recipes()), d.builtin_device_dirs()[0])")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    n_dev, n_rec, first_dir = r.stdout.split()
    assert int(n_dev) >= 8 and int(n_rec) >= 9
    assert first_dir.startswith(str(tmp_path / "site"))
