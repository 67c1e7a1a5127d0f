"""Whole-model simulation: overlap, streams, FPGA layer pipelines and serving under Poisson arrivals."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import itertools
import math

import numpy as np
import pytest
from op_cases import fp16_linear

from sparsesim.core.ir import Op, WeightInfo, Workload
from sparsesim.hw.devices import builtin_device_files, load_device
from sparsesim.run.estimate import estimate
from sparsesim.run.simulate import OpTimes, run_sequence, serve, simulate, simulate_frame

DEVICES = sorted(builtin_device_files())


def _elementwise(i: int, numel: int, name: str) -> Op:
    return Op(index=i, kind="elementwise", aten="aten.gelu", module=name, call_index=0, dtype="fp16",
              input_shapes=((numel,),), output_shape=(numel,), flops=numel, bytes_moved=4 * numel)


def toy_workload(m: int = 64, d: int = 512, layers: int = 6) -> Workload:
    """An MLP: alternating weight-heavy linears and activation-only elementwise ops, with a wide
    layer every third so compute- and memory-bound ops mix."""
    ops: list[Op] = []
    for layer in range(layers):
        n = 4 * d if layer % 3 == 0 else d
        ops.append(fp16_linear(len(ops), m if layer % 2 else 8 * m, n, d, f"mlp.{layer}"))
        ops.append(_elementwise(len(ops), m * n, f"act.{layer}"))
    weights = {op.weight: WeightInfo(op.weight, op.weight_shape, op.dtype, True) for op in ops if op.weight}
    return Workload("toy-mlp", tuple(ops), weights, {"batch": 1})


@pytest.fixture(scope="module")
def toy() -> Workload:
    return toy_workload()


# ----------------------------------------------------------------------------- one inference

@pytest.mark.parametrize("device", DEVICES)
def test_overlap_off_equals_sum_of_estimates(toy: Workload, device: str) -> None:
    per_op = estimate(toy, device)
    res = simulate_frame(per_op, overlap=False, stream=1)
    assert res.latency_s == pytest.approx(float(per_op["latency_s"].sum()), rel=1e-12, abs=0)
    assert res.serial_latency_s == pytest.approx(res.latency_s, rel=1e-12, abs=0)
    # each op starts where the previous one ended and lasts its estimate
    tl = res.timeline
    assert np.allclose(tl["end_s"] - tl["start_s"], per_op["latency_s"], rtol=1e-9, atol=0)
    assert np.allclose(tl["start_s"].to_numpy()[1:], tl["end_s"].to_numpy()[:-1], rtol=0, atol=1e-15)


@pytest.mark.parametrize("device", DEVICES)
def test_overlap_on_between_bounds(toy: Workload, device: str) -> None:
    per_op = estimate(toy, device)
    on = simulate_frame(per_op, overlap=True, stream=1)
    off = simulate_frame(per_op, overlap=False, stream=1)
    eps = 1e-12 * off.latency_s
    assert on.latency_s <= off.latency_s + eps
    assert on.latency_s >= max(on.sum_compute_s, on.sum_memory_s) - eps
    assert on.prefetched_s >= 0


def _times(compute, memory, weight, overhead=None) -> OpTimes:
    c, m, w = (np.asarray(x, dtype=float) for x in (compute, memory, weight))
    o = np.zeros_like(c) if overhead is None else np.asarray(overhead, dtype=float)
    return OpTimes(np.maximum(c, m) + o, c, m, o, w)


def test_weight_fetch_hides_behind_previous_compute() -> None:
    # op0 computes for 1 s with the memory channel idle; op1's 0.5 s weight fetch fits under it
    t = _times([1.0, 0.1], [0.0, 0.5], [0.0, 0.5])
    on = run_sequence(t, overlap=True)
    assert on.makespan_s == pytest.approx(1.1)
    assert on.prefetched_s == pytest.approx(0.5)
    assert run_sequence(t, overlap=False).makespan_s == pytest.approx(1.5)


def test_partial_prefetch_and_activation_traffic_not_prefetched() -> None:
    # op1 moves 0.8 s: 0.6 s weight (prefetchable) + 0.2 s activations (not); op0 leaves 0.3 s idle
    # memory after its own 0.2 s of traffic: 0.3 s of op1's weight is hidden, 0.5 s remains
    t = _times([0.5, 0.1], [0.2, 0.8], [0.0, 0.6])
    on = run_sequence(t, overlap=True)
    assert on.prefetched_s == pytest.approx(0.3)
    assert on.makespan_s == pytest.approx(0.5 + 0.5)


def test_overhead_is_not_hidden() -> None:
    t = _times([1.0, 1.0], [0.5, 0.5], [0.5, 0.5], overhead=[0.25, 0.25])
    on = run_sequence(t, overlap=True)
    # op1's weight fetch hides under op0, but each op still pays compute + overhead
    assert on.makespan_s == pytest.approx(2.5)


def test_stream_prefetches_across_inferences() -> None:
    t = _times([1.0, 0.1], [0.0, 0.5], [0.0, 0.5])
    one = run_sequence(t, overlap=True)
    four = run_sequence(t, overlap=True, repeats=4)
    assert four.makespan_s == pytest.approx(4 * one.makespan_s)
    # a memory-first op: its weight prefetches under the previous inference's last op
    t2 = _times([0.1, 1.0], [0.5, 0.0], [0.5, 0.0])
    one2, four2 = run_sequence(t2, overlap=True), run_sequence(t2, overlap=True, repeats=4)
    assert four2.makespan_s < 4 * one2.makespan_s - 1.0


def test_simulate_is_deterministic(toy: Workload) -> None:
    a = simulate(toy, DEVICES[0], qps=100.0, requests=300, seed=3).to_dict()
    b = simulate(toy, DEVICES[0], qps=100.0, requests=300, seed=3).to_dict()
    c = simulate(toy, DEVICES[0], qps=100.0, requests=300, seed=4).to_dict()
    assert a == b
    assert a["serving"] != c["serving"]


def test_stream_throughput_at_least_sequential(toy: Workload) -> None:
    res = simulate(toy, DEVICES[0], stream=3)
    assert res.stream_makespan_s <= 3 * res.latency_s * (1 + 1e-12)
    assert res.throughput_ips == pytest.approx(3 / res.stream_makespan_s)
    assert res.samples_per_s == pytest.approx(res.throughput_ips * res.batch)


@pytest.mark.parametrize("device", [d for d in DEVICES if load_device(d).family == "fpga"])
def test_fpga_layer_pipeline(toy: Workload, device: str) -> None:
    per_op = estimate(toy, device)
    res = simulate_frame(per_op, stream=6)
    p = res.pipeline
    assert res.family == "fpga" and p is not None
    assert p["stages"] == len(per_op)
    # balanced folding: every input needs the whole array's compute time, and the shared channel
    # must move every stage's weights once per input
    t = OpTimes.from_frame(per_op)
    assert p["interval_s"] >= max(t.compute_s.sum(), t.weight_s.sum()) * (1 - 1e-9)
    assert p["first_latency_s"] >= t.compute_s.sum()
    off = simulate_frame(per_op, stream=6, overlap=False).pipeline
    assert off["interval_s"] >= p["interval_s"] * (1 - 1e-12)


def test_no_pipeline_outside_fpga(toy: Workload) -> None:
    for device in DEVICES:
        res = simulate(toy, device, stream=1)
        assert (res.pipeline is not None) == (res.family == "fpga")


# ----------------------------------------------------------------------------- serving

SERVICE = 0.01  # s


def test_low_load_latency_is_service_time() -> None:
    s = serve(SERVICE, qps=0.5, requests=2000, seed=1)  # rho = 0.005
    assert s.p50_s == pytest.approx(SERVICE, rel=1e-9)
    assert s.p99_s < 1.5 * SERVICE
    assert s.utilization == pytest.approx(s.offered_load, rel=0.1)
    assert not s.saturated


def test_p99_grows_towards_saturation() -> None:
    p99 = [serve(SERVICE, qps=rho / SERVICE, requests=5000, seed=2).p99_s for rho in (0.3, 0.6, 0.9, 0.97)]
    assert all(a < b for a, b in itertools.pairwise(p99))
    assert p99[-1] > 5 * SERVICE


def test_throughput_saturates_at_one_over_service_time() -> None:
    s = serve(SERVICE, qps=3.0 / SERVICE, requests=5000, seed=3)
    assert s.saturated
    assert s.saturation_rps == pytest.approx(1 / SERVICE)
    assert s.throughput_rps == pytest.approx(1 / SERVICE, rel=0.01)
    assert s.utilization == pytest.approx(1.0, rel=0.01)
    below = serve(SERVICE, qps=0.5 / SERVICE, requests=5000, seed=3)
    assert below.throughput_rps == pytest.approx(0.5 / SERVICE, rel=0.05)


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_mean_wait_matches_pollaczek_khinchine(rho: float) -> None:
    s = serve(SERVICE, qps=rho / SERVICE, requests=40000, seed=5)
    expected = rho * SERVICE / (2 * (1 - rho))  # M/D/1
    assert s.predicted_mean_wait_s == pytest.approx(expected)
    assert s.mean_wait_s == pytest.approx(expected, rel=0.1)


def test_serving_uses_simulated_inference_latency(toy: Workload) -> None:
    res = simulate(toy, DEVICES[0], qps=10.0, requests=200)
    assert res.serving is not None
    assert res.serving.service_s == res.latency_s
    assert res.serving.saturation_rps == pytest.approx(1 / res.latency_s)
    assert math.isfinite(res.serving.p99_s)


@pytest.mark.parametrize("kwargs, needle", [
    ({"qps": float("nan")}, "--qps"), ({"qps": float("inf")}, "--qps"), ({"qps": -1.0}, "--qps"),
    ({"qps": 10.0, "requests": 0}, "--requests"), ({"stream": 0}, "--stream"),
])
def test_bad_serving_arguments_are_errors_before_tracing(kwargs, needle) -> None:
    from sparsesim.core.errors import SparsesimError

    # the workload spec names nothing: the arguments are checked first
    with pytest.raises(SparsesimError, match=needle):
        simulate("no-such-workload", DEVICES[0], **kwargs)
    with pytest.raises(ValueError, match="qps"):
        serve(SERVICE, qps=float("inf"))


def _affine(b: int) -> float:
    return SERVICE + 0.2 * SERVICE * b  # a fixed part amortised over the batch plus a per-request part


def test_batching_off_by_default_and_equal_to_m_d_1() -> None:
    plain = serve(SERVICE, qps=50.0, requests=3000, seed=7)
    one = serve(lambda b: SERVICE, qps=50.0, requests=3000, seed=7, max_batch=1)
    assert plain == one
    assert plain.max_batch == 1 and plain.mean_batch == 1.0


def test_batching_raises_saturation_throughput() -> None:
    full = 8 / _affine(8)  # full batches: 3.8x what an unbatched server can do (1 / _affine(1))
    s = serve(_affine, qps=2 * full, requests=5000, seed=8, max_batch=8)
    assert s.saturation_rps == pytest.approx(full) and s.saturated
    assert s.mean_batch > 7.5  # overloaded: batches fill up
    assert s.throughput_rps == pytest.approx(full, rel=0.03)
    mid = serve(_affine, qps=2.0 / _affine(1), requests=5000, seed=8, max_batch=8)  # rho 2 unbatched
    assert not mid.saturated and mid.throughput_rps == pytest.approx(2.0 / _affine(1), rel=0.05)
    assert math.isnan(s.predicted_mean_wait_s)
    low = serve(_affine, qps=0.5, requests=2000, seed=8, max_batch=8)
    assert low.mean_batch < 1.01 and low.p50_s == pytest.approx(_affine(1))


def test_simulate_batching_retraces_the_recipe_at_larger_batches() -> None:
    spec = "bert-base:seq=16,layers=1,device=meta"
    dev = DEVICES[0]
    res = simulate(spec, dev, qps=1e6, requests=400, max_batch=2, stream=1)
    two = simulate_frame(estimate("bert-base:seq=16,layers=1,device=meta,batch=2", dev), stream=1)
    assert res.serving.saturation_rps == pytest.approx(2 / two.latency_s)
    assert res.serving.service_s == res.latency_s
    with pytest.raises(Exception, match="batch"):
        simulate(toy_workload(), dev, qps=1.0, max_batch=2)


def test_bad_serving_arguments() -> None:
    with pytest.raises(ValueError, match="qps"):
        serve(SERVICE, qps=0.0)
    with pytest.raises(ValueError, match="requests"):
        serve(SERVICE, qps=1.0, requests=0)
