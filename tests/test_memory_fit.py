"""A run whose weights, inputs (KV cache) and activations exceed the device's memory is flagged in
every result: the per-op and summary tables, the CLI, and the report's verdict."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from sparsesim.hw.devices import builtin_device_files, load_device
from sparsesim.report import analysis
from sparsesim.report.inputs import SearchResult
from sparsesim.run.estimate import compare_tables
from sparsesim.run.fit import op_working_bytes
from sparsesim.tracing.workloads import load_workload

GEMM = "gemm:M=64,N=8192,K=8192,dtype=fp16"  # 134 MB of fp16 weights, 1 MB in, 1 MB out
CAPACITY_MB = 100


@pytest.fixture
def small_gpu(tmp_path):
    """An A100 with 100 MB of memory: dense GEMM weights do not fit, 2:4 ones do."""
    p = tmp_path / "small-gpu.toml"
    p.write_text('extends = "a100-sxm4-80gb"\nname = "small-gpu"\ndescription = "A100 with 100 MB"\n'
                 f'memory_capacity = {{ value = {CAPACITY_MB}, unit = "MB", source = "assumed: a test device" }}\n')
    return str(p)


def test_fit_is_computed_on_the_costing_path_for_every_row(small_gpu):
    t = compare_tables(GEMM, [small_gpu, "xeon-sapphire-rapids"], ["dense", "2:4"])
    s = t.summary.set_index(["device", "plan"])
    dense, sparse = s.loc[("small-gpu", "dense")], s.loc[("small-gpu", "2:4")]
    weights = 8192 * 8192 * 2
    assert not bool(dense["fits"]) and dense["fits"] is not None
    assert bool(sparse["fits"]) is True
    assert dense["memory_capacity_bytes"] == pytest.approx(CAPACITY_MB * 1e6)
    # weights + inputs + the GEMM's working set (input and output activations)
    assert dense["memory_need_bytes"] == pytest.approx(weights + 2 * 64 * 8192 * 2 + 64 * 8192 * 2, rel=1e-6)
    assert sparse["memory_need_bytes"] < dense["memory_need_bytes"]
    assert bool(s.loc[("xeon-sapphire-rapids", "dense"), "fits"]) is True  # 512 GB of DDR5
    assert s.loc[("xeon-sapphire-rapids", "dense"), "memory_capacity_bytes"] == pytest.approx(512e9)
    per_op = t.per_op[(t.per_op["device"] == "small-gpu") & (t.per_op["plan"] == "dense")]
    assert len(per_op) and not per_op["fits"].astype(bool).any()


def test_cli_flags_it_in_estimate_compare_and_simulate(cli, small_gpu):
    rc, text, _ = cli("estimate", GEMM, "--device", small_gpu)
    assert rc == 0 and "DOES NOT FIT: 137 MB > 100 MB" in text
    rc, text, _ = cli("estimate", GEMM, "--device", small_gpu, "--plan", "2:4")
    assert rc == 0 and "DOES NOT FIT" not in text and "of 100 MB" in text
    rc, out, _ = cli("compare", GEMM, "--devices", small_gpu, "--plans", "dense,2:4", "--json")
    rows = {r["plan"]: r for r in json.loads(out)["rows"]}
    assert rows["dense"]["fits"] is False and rows["2:4"]["fits"] is True
    rc, text, _ = cli("compare", GEMM, "--devices", small_gpu, "--plans", "dense,2:4")
    dense_line = next(line for line in text.splitlines() if line.strip().startswith("dense"))
    assert "DOES NOT FIT: 137 MB > 100 MB" in dense_line
    rc, out, _ = cli("simulate", GEMM, "--device", small_gpu, "--json")
    assert rc == 0 and json.loads(out)["fits"] is False


@pytest.mark.parametrize("base", sorted(builtin_device_files()))
def test_every_built_in_device_states_its_memory(base):
    """Every family's device files give memory_capacity with its source, so a fit is never unknown."""
    dev = load_device(base)
    assert dev.params.memory_capacity > 1e9
    assert dev.provenance["memory_capacity"].source


@pytest.mark.parametrize("base", ["xeon-sapphire-rapids", "arm-cortex-a78", "zcu102", "alveo-u250", "s4-antoum"])
def test_a_model_too_big_for_a_small_cpu_fpga_or_s4_device_is_said_plainly(cli, tmp_path, base):
    """CPU, FPGA and S4 files give memory_capacity too: the same one-line flag as on a GPU."""
    p = tmp_path / "small.toml"
    p.write_text(f'extends = "{base}"\nname = "small-{base}"\ndescription = "{base} with 100 MB"\n'
                 f'memory_capacity = {{ value = {CAPACITY_MB}, unit = "MB", source = "assumed: a test device" }}\n')
    rc, text, _ = cli("estimate", GEMM, "--device", str(p))
    assert rc == 0 and "DOES NOT FIT: 137 MB > 100 MB" in text
    rc, text, _ = cli("estimate", GEMM, "--device", base)
    assert rc == 0 and "DOES NOT FIT" not in text
    rc, out, _ = cli("simulate", GEMM, "--device", str(p), "--json")
    assert rc == 0 and json.loads(out)["fits"] is False


def test_a_kv_cache_filled_by_the_forward_counts_as_input():
    wl = load_workload("llama-tiny:phase=decode,kv=16")
    layers, kv_heads, head_dim, fp16 = 2, 2, 64 // 4, 2  # the llama-tiny recipe runs in fp16
    cache = 2 * layers * 1 * kv_heads * (16 + 1) * head_dim * fp16
    ids_and_position = 8 + 8  # one int64 token id and one int64 cache position
    # plus the cache's own bookkeeping tensors (a few int64 per layer in transformers' StaticCache)
    assert cache + ids_and_position <= wl.input_bytes <= cache + ids_and_position + 8 * 4 * layers


def test_working_set_excludes_the_weight():
    wl = load_workload("gemm:M=8,N=32,K=16,dtype=fp32")
    (op,) = [o for o in wl.ops if o.weight]
    assert op_working_bytes(op) == 4 * (8 * 16 + 8 * 32)


def _verdict(small_gpu, searches=()):
    t = compare_tables(GEMM, [small_gpu], ["dense", "2:4", "channel:0.5"])
    s = t.summary.assign(best=False)
    (v,) = analysis.verdicts(s, t.per_op, ["small-gpu"], ["dense", "2:4", "channel:0.5"], searches)
    return v


def test_verdict_flags_unfit_runs_and_says_accuracy_is_not_assessed(small_gpu):
    v = _verdict(small_gpu)
    assert v["best_plan"] == "channel:0.5" and not v["accuracy_assessed"]
    assert "Accuracy is not assessed: channel:0.5 is ranked by modeled latency alone" in v["text"]
    assert "usually costs the most accuracy" in v["text"]
    assert v["does_not_fit"] and v["does_not_fit"][0]["plan"] == "dense"
    assert "Does not fit in device memory:" in v["text"] and "does not fit:" in v["text"]


def test_verdict_quotes_a_search_on_the_device(small_gpu):
    sr = SearchResult(source="runs/s", workload="digits", device="small-gpu", trials=pd.DataFrame(),
                      chosen={"accuracy": 0.9622, "speedup_vs_dense": 2.18, "uniform_plan": "channel:0.5",
                              "uniform_accuracy": 0.8444}, uniform=pd.DataFrame(), extra={"dense accuracy": 0.9889})
    v = _verdict(small_gpu, [sr])
    assert v["accuracy_assessed"] and "not assessed" not in v["text"]
    assert "a search on digits chose a plan at accuracy 0.9622 (dense 0.9889), 2.18x" in v["text"]
    assert "uniform channel:0.5 reached 0.8444" in v["text"]
