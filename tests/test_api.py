"""The package-level API the issues name: sparsesim.trace / estimate / compare / simulate."""

from __future__ import annotations

import torch
import torch.nn as nn

import sparsesim
import sparsesim.run.estimate
import sparsesim.run.simulate


def test_api_functions_are_functions_even_after_their_modules_are_imported():
    for name in ("trace", "estimate", "compare", "simulate", "load_workload", "load_device", "sparsify"):
        assert callable(getattr(sparsesim, name)), name


def test_trace_then_estimate_a_users_model_end_to_end():
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    wl = sparsesim.trace(model, torch.randn(32, 64), name="mlp")
    assert [op.weight for op in wl.weight_ops()] == ["0.weight", "2.weight"]
    per_op = sparsesim.estimate(wl, "s4-antoum", "unstructured:0.9")
    assert set(per_op["weight"]) - {""} == {"0.weight", "2.weight"}  # "" for weightless ops
    table = sparsesim.compare(wl, ["s4-antoum"], ["dense", "unstructured:0.9"])
    speedup = table.set_index("plan").loc["unstructured:0.9", "speedup_vs_dense"]
    assert speedup > 1.0  # a zero-skipping engine rewards unstructured sparsity


def test_stage_packages_are_attributes_of_the_package():
    import subprocess
    import sys

    code = "import sparsesim; print(sparsesim.train.train.__name__, sparsesim.search.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["train", "sparsesim.search"]
