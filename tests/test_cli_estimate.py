"""`sparsesim estimate / compare / simulate`: --json documents parse and carry the totals; the text
tables say the same; bad input is one line on stderr and exit 2."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import math

import pytest

from sparsesim.hw.devices import builtin_device_files, load_device

SPEC = "gemm:M=256,N=512,K=512,dtype=fp16"
DEVICES = sorted(builtin_device_files())
PLANS = ("dense", "2:4", "unstructured:0.9", "block4x4:0.5", "channel:0.5")


def _json(cli, *argv: str) -> dict:
    rc, out, err = cli(*argv, "--json")
    assert rc == 0, err
    return json.loads(out)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


@pytest.mark.parametrize("plan", ["dense", "2:4", "unstructured:0.9"])
def test_estimate_json(cli, plan: str) -> None:
    doc = _json(cli, "estimate", SPEC, "--device", DEVICES[0], "--plan", plan)
    t = doc["totals"]
    for key in ("latency_s", "energy_j", "memory_bytes"):
        assert _finite(t[key]) and t[key] >= 0, key
    assert t["latency_s"] > 0
    assert _finite(doc["speedup_vs_dense"])
    if plan == "dense":
        assert doc["speedup_vs_dense"] == 1.0
    assert doc["plan"] == plan and doc["device"] == load_device(DEVICES[0]).name
    assert doc["device_file"].endswith(".toml") and doc["family"]
    assert len(doc["ops"]) >= 1
    op = doc["ops"][0]
    assert {"latency_s", "bound", "why", "kernel", "fallback", "pattern"} <= set(op)
    assert sum(o["latency_s"] for o in doc["ops"]) == pytest.approx(t["latency_s"])


def test_estimate_text_shows_ops_bound_and_why(cli) -> None:
    rc, out, err = cli("estimate", SPEC, "--device", DEVICES[0], "--plan", "2:4")
    assert rc == 0, err
    doc = _json(cli, "estimate", SPEC, "--device", DEVICES[0], "--plan", "2:4")
    assert doc["device"] in out and "2:4" in out
    for word in ("latency", "bound", "why", "total latency", "total energy", "weight memory"):
        assert word in out
    assert doc["ops"][0]["bound"] in out


def test_compare_json_all_devices_and_plans(cli) -> None:
    doc = _json(cli, "compare", SPEC)
    names = sorted(load_device(d).name for d in builtin_device_files())
    assert sorted(doc["devices"]) == names
    assert doc["plans"] == list(PLANS)
    assert len(doc["rows"]) == len(names) * len(PLANS)
    for row in doc["rows"]:
        for key in ("latency_s", "energy_j", "memory_bytes", "speedup_vs_dense"):
            assert _finite(row[key]), (row["device"], row["plan"], key)
        assert row["why"]
        assert doc["speedup_vs_dense"][row["device"]][row["plan"]] == row["speedup_vs_dense"]
    assert all(doc["speedup_vs_dense"][d]["dense"] == 1.0 for d in names)


def test_compare_subset_and_text(cli) -> None:
    devs = ",".join(DEVICES[:2])
    doc = _json(cli, "compare", SPEC, "--devices", devs, "--plans", "2:4,channel:0.5")
    assert len(doc["devices"]) == 2 and doc["plans"] == ["2:4", "channel:0.5"]
    assert {p for d in doc["speedup_vs_dense"].values() for p in d} == {"2:4", "channel:0.5"}
    rc, out, err = cli("compare", SPEC, "--devices", devs, "--plans", "2:4,channel:0.5")
    assert rc == 0, err
    for dev in doc["devices"]:
        assert dev in out
    assert "speedup" in out and "channel:0.5" in out


def test_simulate_json_with_serving(cli) -> None:
    doc = _json(cli, "simulate", SPEC, "--device", DEVICES[0], "--qps", "100", "--requests", "500")
    for key in ("latency_s", "energy_j", "memory_bytes"):
        assert _finite(doc["totals"][key])
    v = doc["serving"]
    assert v["requests"] == 500 and v["qps"] == 100
    assert v["p99_s"] >= v["p50_s"] >= v["service_s"] == doc["latency_s"]
    off = _json(cli, "simulate", SPEC, "--device", DEVICES[0], "--no-overlap")
    assert off["overlap"] is False and off["serving"] is None
    assert off["latency_s"] == pytest.approx(off["serial_latency_s"], rel=1e-12)
    assert doc["latency_s"] <= off["latency_s"] * (1 + 1e-12)


def test_simulate_text(cli) -> None:
    rc, out, err = cli("simulate", SPEC, "--device", DEVICES[0], "--qps", "50", "--requests", "200")
    assert rc == 0, err
    assert "one inference" in out and "p50" in out and "p99" in out and "saturation" in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (("estimate", SPEC, "--device", "no-such-device"), "unknown device 'no-such-device'"),
        (("estimate", SPEC, "--device", DEVICES[0], "--plan", "5:4"), "5:4"),
        (("compare", SPEC, "--devices", "nope"), "unknown device 'nope'"),
        (("compare", SPEC, "--plans", "dense,blocky:0.3"), "blocky"),
        (("simulate", SPEC, "--device", DEVICES[0], "--qps", "-1"), "--qps"),
        (("estimate", "no-such-recipe", "--device", DEVICES[0]), "no-such-recipe"),
    ],
)
def test_bad_input_is_one_line_exit_2(cli, argv, needle) -> None:
    rc, out, err = cli(*argv)
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1 and needle in err
