"""`sparsesim workloads` and `sparsesim trace` through the real CLI entry point."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

# one torch thread for the whole file (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_workloads_text_and_json(cli):
    rc, out, _ = cli("workloads")
    assert rc == 0 and "resnet50" in out and "llama2-7b" in out and "kv=0" in out
    rc, out, _ = cli("workloads", "--json")
    doc = json.loads(out)
    names = {r["name"] for r in doc["recipes"]}
    assert {"resnet18", "bert-base", "llama2-70b"} <= names
    bert = next(r for r in doc["recipes"] if r["name"] == "bert-base")
    assert bert["params"]["seq"] == 128 and bert["description"]


def test_trace_text_table(cli):
    rc, out, _ = cli("trace", "resnet18:image=32")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["#", "kind", "module", "call", "dtype", "shapes"]
    assert any(" conv " in line and "conv1.weight" in line for line in lines)
    assert "unknown ops 0" in out
    assert "in 21 weight ops" in out


def test_trace_json_matches_workload(cli):
    rc, out, _ = cli("trace", "gemm:M=64,N=32,K=16,dtype=fp16", "--json")
    assert rc == 0
    doc = json.loads(out)
    (row,) = doc["ops"]
    assert row["kind"] == "linear" and row["weight"] == "gemm.weight"
    assert row["gemm"] == {"m": 64, "n": 32, "k": 16, "batch": 1, "groups": 1}
    assert row["flops"] == 2 * 64 * 32 * 16
    assert row["pattern"] == "dense" and row["format_bytes"] == 32 * 16 * 2
    t = doc["totals"]
    assert t["weight_bytes_dense"] == t["weight_bytes_stored"] == 1024 and t["unknown_ops"] == 0


def test_trace_with_plan_2to4(cli):
    pytest.importorskip("sparsesim.sparsity.plans")
    rc, out, _ = cli("trace", "llama-tiny:seq=8", "--plan", "2:4", "--json")
    assert rc == 0
    doc = json.loads(out)
    rows = [r for r in doc["ops"] if r["weight"]]
    assert len(rows) == 15
    for r in rows:
        assert r["pattern"] == "2:4" and r["density"] == 0.5
        assert r["format_bytes"] < r["dense_bytes"]
        # N:M compressed: half the values plus metadata
        assert r["value_bytes"] == r["dense_bytes"] // 2 and r["metadata_bytes"] > 0
    assert doc["totals"]["weight_bytes_stored"] < doc["totals"]["weight_bytes_dense"]
    rc, out, _ = cli("trace", "llama-tiny:seq=8", "--plan", "2:4", "--weights-only")
    assert rc == 0 and out.count(" 2:4 ") == 15


def test_trace_bert_base_plan_2to4_every_linear(cli):
    pytest.importorskip("sparsesim.sparsity.plans")
    rc, out, _ = cli("trace", "bert-base:seq=16", "--plan", "2:4", "--json")
    assert rc == 0
    rows = [r for r in json.loads(out)["ops"] if r["kind"] == "linear"]
    assert len(rows) == 73
    assert all(r["pattern"] == "2:4" and r["format"] == "nm" and r["format_bytes"] < r["dense_bytes"] for r in rows)


def test_trace_bad_workload_exits_2_with_one_line(cli):
    rc, out, err = cli("trace", "no-such-model")
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "no-such-model" in err
    rc, _, err = cli("trace", "bert-base:seq=abc")
    assert rc == 2 and "seq='abc'" in err
