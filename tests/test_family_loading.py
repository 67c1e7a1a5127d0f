"""Families are imported when a device of theirs is loaded, not all at once: a process costing
an FPGA array does not import the GPU's kernel tables; a Device unpickled in a process that has
not loaded its family yet still costs; an unknown family's message lists every built-in one."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from sparsesim.core.errors import DeviceFileError
from sparsesim.cost.families import FAMILY_MODULES
from sparsesim.hw.devices import load_device, parse_device_doc


def _fresh(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_loading_a_device_imports_its_family_only():
    code = "\n".join((
        "import sys",
        "from sparsesim.hw.devices import load_device",
        "load_device('alveo-u250')",
        f"print(sorted(f for f, m in {FAMILY_MODULES!r}.items() if m in sys.modules))",
    ))
    assert _fresh(code) == "['fpga']"


def test_unpickled_device_costs_in_a_fresh_process(tmp_path):
    dev = load_device("a100-sxm4-80gb")
    path = tmp_path / "dev.pickle"
    path.write_bytes(pickle.dumps(dev))
    code = "\n".join((
        "import pickle, sys",
        "from sparsesim.cost import estimate_op",
        "from sparsesim.tracing.workloads import load_workload",
        f"dev = pickle.loads(open({str(path)!r}, 'rb').read())",
        "print('sparsesim.cost.families.gpu' in sys.modules)",
        "op = load_workload('gemm:M=256,N=256,K=256,dtype=fp16').ops[0]",
        "print(estimate_op(op, None, dev).latency_s > 0)",
    ))
    assert _fresh(code).splitlines() == ["False", "True"]


def test_unknown_family_names_every_builtin_family():
    with pytest.raises(DeviceFileError) as e:
        parse_device_doc({"name": "x", "family": "tpu", "description": "a what-if"}, "x.toml")
    for family in FAMILY_MODULES:
        assert family in str(e.value).split("known: ")[1]
