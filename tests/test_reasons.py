"""Structured reasons: families state causes as `Reason` codes, the report reads them, and
rewording the human `why` changes no verdict."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from sparsesim.cost.record import REASONS, Reason
from sparsesim.fidelity.gpu_validation import gemm_op, layer_for
from sparsesim.hw.devices import load_device
from sparsesim.report.analysis import layer_table, reason_tags
from sparsesim.run.estimate import compare_tables, cost_one
from sparsesim.run.results import reason_text, records
from sparsesim.sparsity.patterns import parse_pattern
from sparsesim.sparsity.shrink import shrink_layer_op

A100 = load_device("a100-sxm4-80gb")


def _cost(m, n, k, pattern, dtype="fp16", runtime="", kernel=""):
    op = gemm_op(m, n, k, dtype)
    layer = None if pattern == "dense" else layer_for("weight", n, k, parse_pattern(pattern), dtype)
    return cost_one(shrink_layer_op(op, layer), layer, A100, runtime=runtime, kernel=kernel)


def test_unknown_reason_code_is_refused():
    with pytest.raises(ValueError, match="Reason.code"):
        Reason("slow")


def test_costs_carry_reasons_as_data():
    pad = _cost(3, 4096, 4096, "2:4", runtime="eager", kernel="cutlass-24")  # torch pads M to a multiple of 8
    codes = {r.code: r.value for r in pad.reasons}
    assert "padding" in codes and codes["padding"] > 1
    assert "metadata" in codes and 0 < codes["metadata"] < 1
    assert "wave_fill" in codes
    fb = _cost(4096, 1000, 4096, "2:4")  # N not a multiple of the sparse kernel's 32
    assert fb.fallback and "fallback" in {r.code for r in fb.reasons}
    # derived from the fields, so a replace cannot leave them stale
    assert "fallback" not in {r.code for r in dataclasses.replace(fb, fallback=False).reasons}
    assert set(r.code for r in pad.reasons) <= set(REASONS)


def test_report_verdicts_read_reasons_not_prose():
    res = compare_tables("gemm:M=8,N=4096,K=4096,dtype=fp16", ["a100-sxm4-80gb"], ["dense", "unstructured:0.5"])
    t = layer_table(res.per_op)
    before = list(t["reasons"])
    assert any(before)
    reworded = res.per_op.assign(why="(reworded)")
    assert list(layer_table(reworded)["reasons"]) == before
    row = t.iloc[0]
    tags = reason_tags(row)
    assert tags and all(isinstance(tag, str) for tag, _ in tags)


def test_reasons_serialise_to_json_and_csv():
    res = compare_tables("gemm:M=8,N=4096,K=4096,dtype=fp16", ["a100-sxm4-80gb"], ["2:4"])
    rows = records(res.per_op)
    json.dumps(rows)
    cell = rows[0]["cost_reasons"]
    assert all(set(r) == {"code", "value"} for r in cell)
    text = reason_text(res.per_op["cost_reasons"].iloc[0])
    assert "=" in text or text == ""
    assert math.isnan(Reason("memory_bound").value)
