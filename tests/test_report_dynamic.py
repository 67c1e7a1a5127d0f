"""The report's dynamic-sparsity section: expert load balance of MoE workloads and what
activation sparsity buys per device."""

from __future__ import annotations

import pytest

from sparsesim.report import build, dynamic
from sparsesim.report.markdown import _dynamic_md

MOE = "mixtral-tiny:seq=16,routing=zipf:1.5"


@pytest.fixture(scope="module")
def data() -> build.ReportData:
    devs = build.resolve_devices(["h100-sxm5", "alveo-u250"])
    return build.collect([MOE, "gemm:M=64,N=512,K=512,dtype=fp16"], devs, ["dense", "act:0.5"])


def test_expert_loads_come_from_the_routing(data):
    loads = dynamic.expert_load_table(data.per_op, MOE)
    assert len(loads) == 4  # gate_up and down of 2 layers
    assert (loads["experts"] == 8).all() and (loads["rows"] == 16 * 2).all()
    assert (loads["imbalance"] > 1.5).all()  # zipf:1.5 piles rows on the first experts
    times = dynamic.expert_time_table(data.per_op, MOE)
    assert set(times["device"]) == set(data.device_names)
    assert ((times["expert_share"] > 0) & (times["expert_share"] < 1)).all()
    assert (times["executed_over_useful"] > 1.0).all()  # padded to the busiest expert


def test_activation_table_says_who_skips(data):
    t = dynamic.activation_table(data.summary, data.per_op, "gemm:M=64,N=512,K=512,dtype=fp16")
    by_dev = dict(zip(t["device"], t["zeros"]))
    assert set(by_dev.values()) == {"skipped", "multiplied (dense kernels)"}
    fpga = t[t["zeros"] == "skipped"].iloc[0]
    assert "U250" in fpga.device.upper() and fpga.speedup_vs_dense > 1.0


def test_markdown_has_the_section_only_where_it_applies(data):
    assert "### Dynamic sparsity" in "\n".join(_dynamic_md(data, MOE))
    assert "Activation sparsity per device" in "\n".join(_dynamic_md(data, "gemm:M=64,N=512,K=512,dtype=fp16"))
    empty = build.collect(["gemm:M=8,N=64,K=64,dtype=fp16"], build.resolve_devices(["h100-sxm5"]), ["dense"])
    assert _dynamic_md(empty, "gemm:M=8,N=64,K=64,dtype=fp16") == []
