"""Costing in bulk (each distinct op, sparsity, device and runtime costed once; fusion groups
computed once per workload and runtime) gives exactly the numbers of costing every op alone."""

from __future__ import annotations

import pytest

from sparsesim.core import threads as core_threads
from sparsesim.cost import estimate_op
from sparsesim.run import estimate as est
from sparsesim.run import results
from sparsesim.runtime import apply_runtime, fuse

DEVICES = "a100-sxm4-80gb,h100-sxm5,xeon-sapphire-rapids,s4-antoum,zcu102"
PLANS = ["dense", "2:4", "unstructured:0.9", "block4x4:0.5", "channel:0.5"]


@pytest.mark.parametrize("spec", ["llama-tiny:device=meta", "resnet18:image=64",
                                  "gemm:M=256,N=512,K=512,dtype=fp16"])
def test_bulk_costs_equal_costing_each_op_alone(spec, one_thread):
    est.clear_cache()
    devs = est.resolve_devices(DEVICES)
    prepared = est.prepare(spec, PLANS)
    table = est.cost_table(prepared, devs)
    reference = []
    for sw in prepared.sparse.values():
        ctx = est.run_context(sw)
        for dev in devs:
            rt_name, rt = dev.runtime(ctx.runtime)
            ops = list(sw.ops)  # a fresh list: no grouping or cost is shared with the bulk path
            groups = fuse(ops, elementwise=rt.fuse_elementwise, epilogue=rt.fuse_epilogue,
                          attention=rt.fuse_attention)
            for op, fu in zip(ops, groups):
                reference.append(apply_runtime(estimate_op(op, sw.sparsity_of(op), dev, ctx), fu, rt, name=rt_name))
    assert results.n_rows(table) == len(reference)
    assert list(table["latency_s"]) == [c.latency_s for c in reference]
    assert list(table["energy_j"]) == [c.energy_j for c in reference]
    assert list(table["bound"]) == [c.bound for c in reference]
    # and the same again on a second call, now served from the shared groups
    again = est.cost_table(prepared, devs)
    assert list(again["latency_s"]) == list(table["latency_s"])


def test_plans_sparsified_side_by_side_equal_one_at_a_time(monkeypatch):
    """`prepare` builds the plans' masks on several threads: the same layers, patterns and
    stats as sparsifying each plan alone, in the plans' order, and torch's thread count
    restored afterwards."""
    import torch

    from sparsesim.sparsity.sparsify import sparsify

    est.clear_cache()
    monkeypatch.setattr(core_threads, "usable_cores", lambda: 3)
    threads = torch.get_num_threads()
    prepared = est.prepare("resnet18:image=64", PLANS)
    assert torch.get_num_threads() == threads
    assert list(prepared.sparse) == PLANS
    wl = prepared.workload
    for label, sw in prepared.sparse.items():
        alone = sparsify(wl, label)
        assert sw.layers == alone.layers, label
        assert [op.flops for op in sw.ops] == [op.flops for op in alone.ops]


def test_a_bad_plan_among_side_by_side_plans_is_its_own_error(monkeypatch):
    from sparsesim.core.errors import SparsesimError

    est.clear_cache()
    monkeypatch.setattr(core_threads, "usable_cores", lambda: 2)
    with pytest.raises(SparsesimError, match="nonsense"):
        est.prepare("resnet18:image=64", ["2:4", "nonsense:0.5", "unstructured:0.9"])
