"""estimate / compare: table shapes, ratios against dense, caching, errors, and every built-in
workload x device x plan estimating without error."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses
import importlib
import json
import math

import pandas as pd
import pytest
from op_cases import fp16_linear

from sparsesim.core.errors import DeviceFileError, PlanError
from sparsesim.core.ir import Op, WeightInfo, Workload
from sparsesim.hw.devices import builtin_device_files, load_device
from sparsesim.run import results

est = importlib.import_module("sparsesim.run.estimate")  # the module: sparsesim.run.estimate is the function

DEVICES = sorted(builtin_device_files())  # at collection; tests needing the count re-read it
PLANS = est.DEFAULT_PLANS


def _norm(i: int, numel: int, name: str) -> Op:
    return Op(index=i, kind="norm", aten="aten.native_layer_norm", module=name, call_index=0, dtype="fp16",
              input_shapes=((numel,),), output_shape=(numel,), flops=5 * numel, bytes_moved=4 * numel)


def toy(layers: int = 4, m: int = 128, d: int = 512) -> Workload:
    ops: list[Op] = []
    for layer in range(layers):
        ops.append(fp16_linear(len(ops), m, d, d, f"blocks.{layer}.fc"))
        ops.append(_norm(len(ops), m * d, f"blocks.{layer}.norm"))
    # a head tied to the first layer's weight: one weight, two ops
    ops.append(fp16_linear(len(ops), m, d, d, "head", weight="blocks.0.fc.weight"))
    weights = {op.weight: WeightInfo(op.weight, op.weight_shape, "fp16", True) for op in ops if op.weight}
    return Workload("toy", tuple(ops), weights)


@pytest.fixture(scope="module")
def wl() -> Workload:
    return toy()


@pytest.fixture(scope="module")
def tables(wl: Workload) -> est.Tables:
    return est.compare_tables(wl, None, PLANS)


# ----------------------------------------------------------------------------- shapes

def test_estimate_one_row_per_op(wl: Workload) -> None:
    df = est.estimate(wl, DEVICES[0], "2:4")
    assert list(df.columns) == list(results.PER_OP_COLUMNS)
    assert list(df["op_index"]) == [op.index for op in wl.ops]
    assert set(df["plan"]) == {"2:4"} and set(df["device"]) == {load_device(DEVICES[0]).name}
    assert (df["latency_s"] > 0).all() and (df["energy_j"] > 0).all()
    weighted = df[df["weight"] != ""]
    assert (weighted["pattern"] == "2:4").all()
    assert (df.loc[df["weight"] == "", "pattern"] == "dense").all()
    # the latency split reassembles the latency
    rebuilt = df[["compute_s", "memory_s"]].max(axis=1) + df["overhead_s"]
    assert rebuilt.to_numpy() == pytest.approx(df["latency_s"].to_numpy(), rel=1e-9)


def test_compare_one_row_per_device_and_plan(tables: est.Tables) -> None:
    s = tables.summary
    assert list(s.columns) == list(results.SUMMARY_COLUMNS)
    assert len(s) == len(builtin_device_files()) * len(PLANS)
    names = [load_device(d).name for d in builtin_device_files()]
    assert sorted(set(s["device"])) == sorted(names)
    for _dev, rows in s.groupby("device", sort=False):
        assert list(rows["plan"]) == list(PLANS)
    dense = s[s["plan"] == "dense"]
    assert (dense["speedup_vs_dense"] == 1.0).all()
    assert (dense["energy_vs_dense"] == 1.0).all()
    assert s["speedup_vs_dense"].notna().all()


def test_summary_totals_agree_with_per_op(tables: est.Tables) -> None:
    per_op, s = tables
    for row in s.itertuples(index=False):
        ops = per_op[(per_op["device"] == row.device) & (per_op["plan"] == row.plan)]
        assert row.latency_s == pytest.approx(ops["latency_s"].sum())
        assert row.energy_j == pytest.approx(ops["energy_j"].sum())
        assert row.fallback_ops == int(ops["fallback"].sum())
        assert row.speedup_vs_dense == pytest.approx(
            per_op[(per_op["device"] == row.device) & (per_op["plan"] == "dense")]["latency_s"].sum()
            / row.latency_s)
        t = results.totals(ops)
        assert t["memory_bytes"] == row.memory_bytes
        # dominant bound: the bound holding the most latency
        assert row.bound == ops.groupby("bound")["latency_s"].sum().idxmax()
        assert row.why and row.why.rsplit(" [", 1)[0] in set(ops["why"])


def test_shared_weight_counted_once(wl: Workload) -> None:
    df = est.estimate(wl, DEVICES[0])
    per_weight = df[df["weight"] != ""].groupby("weight")["memory_bytes"].max()
    assert results.totals(df)["memory_bytes"] == per_weight.sum()
    assert results.totals(df)["memory_bytes"] < df["memory_bytes"].sum()  # the head reuses blocks.0


def test_dense_computed_even_when_not_asked(wl: Workload) -> None:
    s = est.compare(wl, DEVICES[:2], ["channel:0.5"])
    assert list(s["plan"]) == ["channel:0.5"] * 2
    assert s["speedup_vs_dense"].notna().all()
    # channel pruning by half shrinks the footprint of every pruned weight
    assert (s["memory_vs_dense"] < 1.0).all()


def test_devices_as_comma_string_and_objects(wl: Workload) -> None:
    a = est.compare(wl, ",".join(DEVICES[:2]), ["dense"])
    b = est.compare(wl, [load_device(d) for d in DEVICES[:2]], ["dense"])
    pd.testing.assert_frame_equal(a, b)


def test_fallback_rows_say_why(tables: est.Tables) -> None:
    per_op = tables.per_op
    fb = per_op[per_op["fallback"]]
    assert (fb["why"].str.len() > 0).all()
    assert (per_op["why"].str.len() > 0).all()


def test_provenance_columns(tables: est.Tables) -> None:
    per_op = tables.per_op
    for name in builtin_device_files():
        dev = load_device(name)
        rows = per_op[per_op["device"] == dev.name]
        assert set(rows["device_file"]) == {dev.path}
        assert set(rows["family"]) == {dev.family}
        assert (rows["model"].str.len() > 0).all()


def test_results_json_is_plain(tables: est.Tables) -> None:
    doc = {"rows": results.records(tables.summary), "speedup_vs_dense": results.speedup_map(tables.summary)}
    back = json.loads(json.dumps(doc, allow_nan=False))
    assert back["rows"][0].keys() >= {"latency_s", "energy_j", "memory_bytes", "speedup_vs_dense"}
    assert set(back["speedup_vs_dense"]) == set(tables.summary["device"])


def test_plan_object_and_sparse_workload_accepted(wl: Workload) -> None:
    from sparsesim.sparsity.plans import load_plan
    from sparsesim.sparsity.sparsify import sparsify

    by_string = est.estimate(wl, DEVICES[0], "2:4")
    by_plan = est.estimate(wl, DEVICES[0], load_plan("2:4"))
    sw = sparsify(wl, "2:4")
    by_sparse = est.estimate(sw, DEVICES[0])
    for df in (by_plan, by_sparse):
        assert df["latency_s"].tolist() == by_string["latency_s"].tolist()
        assert set(df["plan"]) == {"2:4"}


# ----------------------------------------------------------------------------- caching

def test_sparsify_once_per_workload_and_plan(wl: Workload) -> None:
    a = est.sparsify_cached(wl, "unstructured:0.9")
    assert est.sparsify_cached(wl, "unstructured:0.9") is a
    assert est.sparsify_cached(wl, "unstructured:0.8") is not a
    other = toy(layers=2)
    assert est.sparsify_cached(other, "unstructured:0.9").workload is other


def test_identical_ops_costed_once_give_identical_rows(wl: Workload) -> None:
    df = est.estimate(wl, DEVICES[0], "unstructured:0.9")
    fcs = df[df["module"].str.endswith(".fc")]
    assert fcs["latency_s"].nunique() == 1  # same shape, same analytic stats


def test_workload_spec_traced_once() -> None:
    est.clear_cache()
    a = est.resolve_workload("gemm:M=64,N=64,K=64,dtype=fp16")
    assert est.resolve_workload("gemm:M=64,N=64,K=64,dtype=fp16") is a


# ----------------------------------------------------------------------------- errors

def test_unknown_device_is_one_line_error(wl: Workload) -> None:
    with pytest.raises(DeviceFileError, match="unknown device 'tpu-v9'") as e:
        est.estimate(wl, "tpu-v9")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("plan", ["3:2", "unstructured:1.5", "blocky:0.5", "nonsense"])
def test_unknown_plan_is_plan_error(wl: Workload, plan: str) -> None:
    with pytest.raises(PlanError):
        est.compare(wl, DEVICES[:1], [plan])


# ----------------------------------------------------------------------------- published behaviour, end to end

def test_large_gemm_2to4_and_channel_on_datacenter_gpus() -> None:
    s = est.compare("gemm:M=4096,N=4096,K=4096,dtype=fp16", None, ["dense", "2:4", "channel:0.5"])
    gpus = s[s["device"].str.contains("A100|H100", case=False)]
    assert set(gpus["device"].str.contains("A100", case=False)) == {True, False}  # both present
    for row in gpus.itertuples(index=False):
        if row.plan == "2:4":
            assert 1.0 < row.speedup_vs_dense < 2.0, row
        if row.plan == "channel:0.5":
            assert 1.6 < row.speedup_vs_dense < 2.4, row


# ----------------------------------------------------------------------------- every workload x device x plan

# small values for the recipe params that set the size of a workload (the rest keep their defaults);
# recipes that can trace on the meta device do (analytic stats, no weights allocated)
SMALL = {"image": 64, "seq": 32, "layers": 2, "batch": 1, "device": "meta"}


def _small_spec(recipe: dict) -> str:
    params = [f"{k}={v}" for k, v in SMALL.items() if k in recipe["params"]]
    return recipe["name"] + (":" + ",".join(params) if params else "")


def _small_workload(recipe: dict) -> Workload:
    """The recipe at small params. Without its model the plans fall back to analytic stats, which
    keeps mask building for 25M real weights x 5 plans out of this test (masks from real weights
    are the plans' tests); every op still goes through every device's cost model."""
    wl = est.resolve_workload(_small_spec(recipe))
    return dataclasses.replace(wl, model=None)


def _recipes() -> list[dict]:
    from sparsesim.tracing.workloads import list_recipes

    return list_recipes()


@pytest.mark.parametrize("recipe", _recipes(), ids=lambda r: r["name"])
def test_every_workload_device_plan_estimates(recipe: dict) -> None:
    per_op, s = est.compare_tables(_small_workload(recipe), None, PLANS)
    assert len(s) == len(builtin_device_files()) * len(PLANS)
    for col in ("latency_s", "energy_j", "speedup_vs_dense"):
        assert s[col].map(math.isfinite).all(), (recipe["name"], col)
    assert (s["latency_s"] > 0).all()
    assert (per_op["latency_s"] >= 0).all() and per_op["latency_s"].map(math.isfinite).all()
    touched = s.loc[s["plan"] != "dense"]
    from sparsesim.sparsity.coupling import channel_sets

    if not channel_sets(_small_workload(recipe)):
        # no channel can be cut without breaking the dataflow (an LSTM's hidden units feed back
        # into every gate): a channel plan leaves the model as it is
        touched = touched[~touched["plan"].str.startswith("channel")]
    assert (touched["sparse_ops"] > 0).all()
