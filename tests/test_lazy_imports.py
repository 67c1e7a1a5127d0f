"""Heavy modules named lazily (`core.lazy.lazy_module`, `tracing.opnames`): nothing is imported
until first used, and then everything behaves as with a plain import. That costing a topology
file never imports torch is tested in test_topology."""

from __future__ import annotations

import subprocess
import sys

import torch

from sparsesim.core.lazy import lazy_module
from sparsesim.tracing.flops import formula_for, is_metadata_op, mm_formula
from sparsesim.tracing.opnames import OpName, OpTable, aten


def test_lazy_module_imports_on_first_attribute_only():
    code = "\n".join((
        "import sys",
        "from sparsesim.core.lazy import lazy_module",
        "m = lazy_module('colorsys')",
        "print('colorsys' in sys.modules, repr(m))",
        "print(m.rgb_to_hsv(1.0, 0.0, 0.0), 'colorsys' in sys.modules, repr(m))",
        "print(lazy_module('colorsys') is sys.modules['colorsys'])",  # already loaded: the module itself
    ))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["False <lazy module 'colorsys' (not loaded yet)>",
                                "(0.0, 1.0, 1.0) True <lazy module 'colorsys' (loaded)>", "True"]


def test_lazy_module_first_used_on_two_threads_at_once(tmp_path):
    """A second thread using the proxy while the first is still importing the module waits for
    it (plans are sparsified on several threads, and numpy is first used there)."""
    (tmp_path / "slow_module.py").write_text("import time\ntime.sleep(0.5)\nVALUE = 42\n")
    code = "\n".join((
        "import sys, threading, time",
        f"sys.path.insert(0, {str(tmp_path)!r})",
        "from sparsesim.core.lazy import lazy_module",
        "m = lazy_module('slow_module')",
        "got = []",
        "def use():",
        "    try:",
        "        got.append(m.VALUE)",
        "    except AttributeError as e:",
        "        got.append(repr(e))",
        "first = threading.Thread(target=use)",
        "first.start()",
        "time.sleep(0.2)  # the first thread is inside the module's code now",
        "second = threading.Thread(target=use)",
        "second.start()",
        "first.join(); second.join()",
        "print(got)",
    ))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[42, 42]"


def test_lazy_module_forwards_to_the_module():
    t = lazy_module("torch.nn.functional")  # a submodule: imported (with its parents) on first use
    assert t.relu(torch.tensor([-1.0, 2.0])).tolist() == [0.0, 2.0]
    assert "relu" in dir(t)


def test_op_tables_resolve_names_to_torch_packets():
    assert aten.mm == OpName("aten", "mm") and aten.mm.resolve() is torch.ops.aten.mm
    table: OpTable[int] = OpTable()
    table.add((aten.mm, aten.bmm), 1)
    table.add((aten.mm,), 2)  # a later registration wins, as with a plain dict
    assert table.table() == {torch.ops.aten.mm: 2, torch.ops.aten.bmm: 1}
    assert formula_for(torch.ops.aten.mm.default) is mm_formula
    assert is_metadata_op(torch.ops.aten.empty.memory_format) and not is_metadata_op(torch.ops.aten.mm.default)

