"""What a newcomer meets first: --version, `python -m sparsesim`, a closed pipe, where reports and
calibrated devices go, how the user's own devices join comparisons, and the extras' messages."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparsesim.cli import main
from sparsesim.core.errors import SparsesimError
from sparsesim.core.extras import MissingExtraError, require
from sparsesim.hw.devices import builtin_device_files, load_device, user_device_files

REPO = Path(__file__).resolve().parent.parent


def test_version_and_python_dash_m(capsys):
    import sparsesim

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"sparsesim {sparsesim.__version__}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "sparsesim", "--version"], capture_output=True, text=True, env=env, check=False)
    assert r.returncode == 0 and r.stdout.strip() == f"sparsesim {sparsesim.__version__}", r.stderr


def test_a_closed_pipe_ends_quietly(monkeypatch, capsys):
    """`sparsesim devices | head -1`: the reader has gone; no BrokenPipeError traceback."""
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    closed = io.TextIOWrapper(os.fdopen(write_fd, "wb", buffering=0), write_through=True)
    monkeypatch.setattr(sys, "stdout", closed)
    rc = main(["devices"])
    monkeypatch.undo()
    assert rc == 141
    assert "Traceback" not in capsys.readouterr().err


def _report_args(**kw) -> argparse.Namespace:
    base = {"workloads": [], "out": None, "example": False}
    return argparse.Namespace(**{**base, **kw})


def test_report_writes_a_new_directory_by_default_and_the_example_only_when_asked(tmp_path, monkeypatch):
    from sparsesim.cli.report_cmd import output_dir

    monkeypatch.chdir(tmp_path)
    a = output_dir(_report_args(), "default")
    assert a.parent == Path("reports") and a.name.startswith("default-") and a != Path("reports/default")
    a.mkdir(parents=True)
    assert output_dir(_report_args(), "default") != a  # never the same directory twice
    assert output_dir(_report_args(out="mine"), "x") == Path("mine")
    assert output_dir(_report_args(example=True), "default") == REPO / "reports" / "default"
    with pytest.raises(SparsesimError, match="--example"):
        output_dir(_report_args(example=True, out="x"), "default")


def test_missing_extras_name_the_extra(monkeypatch):
    with pytest.raises(MissingExtraError, match=r"pip install 'sparsesim\[search\]'"):
        require("no_such_module_here", "search", "search --algorithm optuna")
    import importlib.util

    from sparsesim.tracing.models import digits

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(MissingExtraError, match=r"scikit-learn.*sparsesim\[search\]"):
        digits._digits_csv()


def _user_device(name: str) -> Path:
    from sparsesim.core.packaged import user_device_dir

    d = user_device_dir()
    d.mkdir(parents=True, exist_ok=True)
    src = builtin_device_files()["arm-cortex-a78"].read_text()
    p = d / f"{name}.toml"
    p.write_text(src.replace('name = "arm-cortex-a78"', f'name = "{name}"', 1))
    return p


def test_user_devices_are_found_by_name_and_announced_when_they_join(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSESIM_CONFIG_DIR", str(tmp_path / "config"))
    assert user_device_files() == {}
    p = _user_device("my-board")
    assert user_device_files() == {"my-board": p}
    assert load_device("my-board").path == str(p)
    rc, out, _ = cli("compare", "gemm:M=64,N=64,K=64", "--plans", "dense", "--json")
    doc = json.loads(out)
    assert rc == 0 and "my-board" in doc["devices"]
    assert doc["user_devices"] == [{"name": "my-board", "path": str(p)}]
    rc, text, _ = cli("compare", "gemm:M=64,N=64,K=64", "--plans", "dense")
    assert "including your own device(s) my-board" in text
    rc, out, _ = cli("compare", "gemm:M=64,N=64,K=64", "--plans", "dense", "--devices", "s4-antoum", "--json")
    assert json.loads(out)["user_devices"] == [] and json.loads(out)["devices"] == ["s4-antoum"]


def test_a_user_device_never_shadows_a_builtin(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSESIM_CONFIG_DIR", str(tmp_path / "config"))
    _user_device("a100-sxm4-80gb")
    assert "a100-sxm4-80gb" not in user_device_files()
    assert load_device("a100-sxm4-80gb").path == str(builtin_device_files()["a100-sxm4-80gb"])


def test_unknown_host_says_how_to_make_it(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSESIM_CONFIG_DIR", str(tmp_path / "config"))
    with pytest.raises(SparsesimError, match="sparsesim calibrate"):
        load_device("host")
