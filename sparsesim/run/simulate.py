"""Whole-model discrete-event simulation (simpy) on top of the per-op estimates.

Three questions, three simulations, all seeded and deterministic:

* **One inference** — the ops are simpy processes over the device's compute engine and memory
  channel. Each op's latency splits into compute, memory and overhead terms (`Cost.details`
  `compute_s`/`memory_s`/`overhead_s`; see `results.split_latency` for models that give none).
  With overlap on, the weight fetch of op i+1 runs on the memory channel while op i leaves it
  idle (double buffering: one op ahead); what is not fetched by the time op i+1 starts is fetched
  by op i+1 itself. An op lasts max(compute, its own memory traffic) + overhead. With overlap off
  every op holds both resources for its estimated latency, one after another, so the simulated
  latency equals the sum of the per-op estimates.
* **A stream of inputs** — the same, over `stream` back-to-back inferences (prefetch crosses the
  inference boundary): batch throughput. For the `fpga` family also a *layer pipeline*: every op
  is a pipeline stage and the inputs flow through the stages; see `_pipeline`.
* **Serving** — Poisson arrivals at `qps` into a FIFO queue in front of one device, no batching:
  an M/D/1 queue. A request's service time is the simulated latency of one inference (the
  single-inference simulation is not rerun per request; that is what keeps 10,000 requests fast).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import simpy

from sparsesim.core.errors import SparsesimError, WorkloadError
from sparsesim.core.ir import Workload
from sparsesim.hw.devices import Device
from sparsesim.run import results
from sparsesim.sparsity.records import SparseWorkload

DEFAULT_REQUESTS = 1000
DEFAULT_STREAM = 4
# serving percentiles reported
PERCENTILES = (50, 99)


@dataclass(frozen=True)
class OpTimes:
    """Per-op latency terms as arrays in op order (seconds).

    `weight_s` is the part of `memory_s` that fetches the op's own weight (prefetchable);
    the rest of `memory_s` is activation traffic the op must move while it runs.
    """

    latency_s: np.ndarray
    compute_s: np.ndarray
    memory_s: np.ndarray
    overhead_s: np.ndarray
    weight_s: np.ndarray

    @classmethod
    def from_frame(cls, per_op: pd.DataFrame) -> OpTimes:
        lat = per_op["latency_s"].to_numpy(dtype=float)
        c = per_op["compute_s"].to_numpy(dtype=float)
        m = per_op["memory_s"].to_numpy(dtype=float)
        o = per_op["overhead_s"].to_numpy(dtype=float)
        dram = per_op["bytes_dram"].to_numpy(dtype=float)
        wbytes = per_op["memory_bytes"].to_numpy(dtype=float)
        # the weight's share of the op's off-chip bytes: its footprint, at most all of them
        frac = np.divide(wbytes, dram, out=np.zeros_like(dram), where=dram > 0).clip(0.0, 1.0)
        return cls(lat, c, m, o, m * frac)

    def __len__(self) -> int:
        return len(self.latency_s)


@dataclass(frozen=True)
class SequenceRun:
    """One simulated run of ops one after another (optionally several inferences back to back)."""

    makespan_s: float
    start_s: np.ndarray
    end_s: np.ndarray
    prefetched_s: float  # weight-fetch time hidden behind earlier ops


@dataclass(frozen=True)
class ServingStats:
    qps: float
    requests: int
    service_s: float  # service time of one request served alone
    offered_load: float  # qps x service_s (rho)
    p50_s: float
    p99_s: float
    mean_latency_s: float
    mean_wait_s: float
    predicted_mean_wait_s: float  # Pollaczek-Khinchine for M/D/1 (inf at rho >= 1; nan when batching)
    throughput_rps: float
    utilization: float
    saturation_rps: float  # max_batch / service time of a full batch
    saturated: bool
    max_batch: int = 1
    mean_batch: float = 1.0


@dataclass(frozen=True)
class SimResult:
    """What `simulate` found. `to_dict` is the --json document (totals under latency_s,
    energy_j, memory_bytes; serving under `serving`)."""

    workload: str
    device: str
    family: str
    plan: str
    device_file: str
    overlap: bool
    seed: int
    runtime: str
    latency_s: float  # simulated latency of one inference
    serial_latency_s: float  # sum of per-op estimates
    sum_compute_s: float
    sum_memory_s: float
    sum_overhead_s: float
    prefetched_s: float
    energy_j: float
    memory_bytes: float
    batch: int
    stream_inputs: int
    stream_makespan_s: float
    throughput_ips: float  # inferences per second over the stream
    samples_per_s: float  # throughput_ips x batch
    pipeline: dict[str, float] | None = None
    serving: ServingStats | None = None
    timeline: pd.DataFrame = field(default=None, compare=False, repr=False)  # type: ignore[assignment]
    # device memory the run holds and whether it fits (see sparsesim.run.fit; None: unknown capacity)
    memory_need_bytes: float = 0.0
    memory_capacity_bytes: float | None = None
    fits: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("timeline", "serving")}
        d["serving"] = None if self.serving is None else asdict(self.serving)
        return _plain(d)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return results.jsonable(obj)


# ----------------------------------------------------------------------------- one inference

def run_sequence(t: OpTimes, *, overlap: bool = True, repeats: int = 1) -> SequenceRun:
    """Simulate the ops in order (`repeats` inferences back to back) with simpy processes."""
    env = simpy.Environment()
    compute = simpy.Resource(env, capacity=1)
    memory = simpy.Resource(env, capacity=1)
    n_ops = len(t)
    n = n_ops * repeats
    start = np.zeros(n)
    end = np.zeros(n)
    done = [env.event() for _ in range(n)]
    pf_proc: list[Any] = [None] * n
    pf_start = [math.nan] * n
    pf_done = [False] * n
    hidden = [0.0]

    def hold_memory(seconds: float):
        with memory.request() as req:
            yield req
            yield env.timeout(seconds)

    def prefetch(j: int):
        # fetch op j's weight into the spare buffer while the previous op runs
        w = float(t.weight_s[j % n_ops])
        try:
            with memory.request() as req:
                yield req
                pf_start[j] = env.now
                yield env.timeout(w)
                pf_done[j] = True
        except simpy.Interrupt:
            pass

    def run_op(j: int):
        i = j % n_ops
        if j > 0:
            yield done[j - 1]
        if not overlap:
            with compute.request() as creq, memory.request() as mreq:
                yield creq & mreq
                start[j] = env.now
                yield env.timeout(float(t.latency_s[i]))
        else:
            fetched = 0.0
            p = pf_proc[j]
            if p is not None:
                if pf_done[j]:
                    fetched = float(t.weight_s[i])
                else:
                    if not math.isnan(pf_start[j]):
                        fetched = min(env.now - pf_start[j], float(t.weight_s[i]))
                    if p.is_alive:
                        p.interrupt()
            hidden[0] += fetched
            own_memory = float(t.memory_s[i]) - fetched
            dur = max(float(t.compute_s[i]), own_memory) + float(t.overhead_s[i])
            with compute.request() as creq:
                yield creq
                start[j] = env.now
                env.process(hold_memory(own_memory))
                if j + 1 < n:
                    pf_proc[j + 1] = env.process(prefetch(j + 1))
                yield env.timeout(dur)
        end[j] = env.now
        done[j].succeed()

    for j in range(n):
        env.process(run_op(j))
    env.run()
    return SequenceRun(float(end[-1]) if n else 0.0, start, end, hidden[0])


# ----------------------------------------------------------------------------- FPGA layer pipeline

def _pipeline(t: OpTimes, inputs: int, *, overlap: bool = True) -> dict[str, float]:
    """A layer-pipelined (dataflow) FPGA design: every op is a stage, inputs flow through.

    The PE array is divided among the compute stages in proportion to their compute work (the
    balanced folding FINN/DNNBuilder-style designs choose, so every stage has the same initiation
    interval): a stage with a share c_j / C of the array takes C = sum of compute terms per input.
    Activations are forwarded on chip between stages (FIFOs deep enough never to stall), so a
    stage moves only its weights over the off-chip channel, which all stages share. A stage lasts
    max(C, its weight fetch) + overhead (their sum with overlap off).
    """
    env = simpy.Environment()
    memory = simpy.Resource(env, capacity=1)
    n = len(t)
    total_compute = float(t.compute_s.sum())
    boxes = [simpy.Store(env) for _ in range(n + 1)]
    exits: list[float] = []

    def hold_memory(seconds: float):
        with memory.request() as req:
            yield req
            yield env.timeout(seconds)

    def stage(j: int):
        c = total_compute if t.compute_s[j] > 0 else 0.0
        w, o = float(t.weight_s[j]), float(t.overhead_s[j])
        for _ in range(inputs):
            x = yield boxes[j].get()
            if overlap:
                yield env.timeout(c) & env.process(hold_memory(w))
            else:
                yield env.process(hold_memory(w))
                yield env.timeout(c)
            yield env.timeout(o)
            yield boxes[j + 1].put(x)

    def sink():
        for _ in range(inputs):
            yield boxes[n].get()
            exits.append(env.now)

    for j in range(n):
        env.process(stage(j))
    env.process(sink())
    for x in range(inputs):
        boxes[0].put(x)
    env.run()
    interval = (exits[-1] - exits[0]) / (inputs - 1) if inputs > 1 else exits[0]
    return {
        "stages": float(n),
        "inputs": float(inputs),
        "first_latency_s": exits[0],
        "makespan_s": exits[-1],
        "interval_s": interval,
        "throughput_ips": 1.0 / interval if interval > 0 else math.inf,
    }


# ----------------------------------------------------------------------------- serving

ServiceTime = float | Callable[[int], float]


def _constant(seconds: float) -> Callable[[int], float]:
    """A service time that does not depend on the batch size."""
    return lambda b: seconds


def serve(
    service_s: ServiceTime,
    qps: float,
    requests: int = DEFAULT_REQUESTS,
    *,
    seed: int = 0,
    max_batch: int = 1,
) -> ServingStats:
    """Poisson arrivals at `qps` into a FIFO queue in front of one server.

    Without batching (`max_batch` 1, the default) this is an M/D/1 queue with service time
    `service_s`. With batching, a free server takes every waiting request up to `max_batch` and
    serves them together in `service_s(b)` seconds (pass a callable of the batch size b).
    """
    if not (qps > 0 and math.isfinite(qps)):
        raise ValueError(f"qps must be a finite number > 0, got {qps}")
    if requests < 1:
        raise ValueError(f"requests must be >= 1, got {requests}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if max_batch > 1 and not callable(service_s):
        raise ValueError("batching needs the service time as a function of the batch size")
    svc: Callable[[int], float] = service_s if callable(service_s) else _constant(float(service_s))
    times = {b: float(svc(b)) for b in range(1, max_batch + 1)}
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / qps, size=requests))
    env = simpy.Environment()
    queue = simpy.Store(env)
    waits = np.zeros(requests)
    sojourn = np.zeros(requests)
    busy = [0.0, 0]  # busy seconds, batches served

    def source():
        for k in range(requests):
            delay = arrivals[k] - env.now
            if delay > 0:
                yield env.timeout(delay)
            queue.put(k)

    def server():
        served = 0
        while served < requests:
            batch = [(yield queue.get())]
            while queue.items and len(batch) < max_batch:
                batch.append((yield queue.get()))
            took = times[len(batch)]
            for k in batch:
                # the clock reaches an arrival by adding delays: clip the rounding below zero
                waits[k] = max(env.now - arrivals[k], 0.0)
                sojourn[k] = waits[k] + took
            yield env.timeout(took)
            busy[0] += took
            busy[1] += 1
            served += len(batch)

    env.process(source())
    env.process(server())
    env.run()
    makespan = env.now
    one = times[1]
    rho = qps * one
    sat = max_batch / times[max_batch] if times[max_batch] > 0 else math.inf
    if max_batch > 1:
        pk = math.nan
    else:
        pk = rho * one / (2.0 * (1.0 - rho)) if rho < 1 else math.inf
    p50, p99 = (float(v) for v in np.percentile(sojourn, PERCENTILES))
    return ServingStats(
        qps=float(qps),
        requests=int(requests),
        service_s=one,
        offered_load=float(rho),
        p50_s=p50,
        p99_s=p99,
        mean_latency_s=float(sojourn.mean()),
        mean_wait_s=float(waits.mean()),
        predicted_mean_wait_s=float(pk),
        throughput_rps=float(requests / makespan) if makespan > 0 else math.inf,
        utilization=float(busy[0] / makespan) if makespan > 0 else 0.0,
        saturation_rps=float(sat),
        saturated=bool(qps >= sat),
        max_batch=int(max_batch),
        mean_batch=float(requests / busy[1]) if busy[1] else 0.0,
    )


# ----------------------------------------------------------------------------- the API

def simulate_frame(
    per_op: pd.DataFrame,
    *,
    qps: float | None = None,
    requests: int = DEFAULT_REQUESTS,
    overlap: bool = True,
    seed: int = 0,
    stream: int = DEFAULT_STREAM,
    batch: int = 1,
    max_batch: int = 1,
    batch_latency: Callable[[int], float] | None = None,
) -> SimResult:
    """Simulate from a per-op table of one (workload, device, plan), as `estimate` returns it.

    Serving batches up to `max_batch` requests when it is above 1; `batch_latency(b)` then gives
    the latency of one inference of b requests together (b = 1 is this table's own simulation).
    """
    if per_op.empty:
        raise ValueError("nothing to simulate: the per-op table is empty")
    if stream < 1:
        raise ValueError(f"stream must be >= 1, got {stream}")
    if max_batch > 1 and batch_latency is None:
        raise ValueError("serving with max_batch > 1 needs batch_latency(b)")
    blocks = per_op.groupby(["workload", "device", "plan"], sort=False).ngroups
    if blocks != 1:
        raise ValueError(f"simulate one (workload, device, plan) at a time; the table holds {blocks}")
    t = OpTimes.from_frame(per_op)
    single = run_sequence(t, overlap=overlap)
    streamed = run_sequence(t, overlap=overlap, repeats=stream) if stream > 1 else single
    family = str(per_op["family"].iat[0])
    pipe = _pipeline(t, stream, overlap=overlap) if family == "fpga" else None
    tot = results.totals(per_op)
    timeline = pd.DataFrame({
        "op_index": per_op["op_index"].to_numpy(),
        "module": per_op["module"].to_numpy(),
        "start_s": single.start_s,
        "end_s": single.end_s,
        "estimate_s": t.latency_s,
    })
    ips = stream / streamed.makespan_s if streamed.makespan_s > 0 else math.inf
    return SimResult(
        workload=str(per_op["workload"].iat[0]),
        device=str(per_op["device"].iat[0]),
        family=family,
        plan=str(per_op["plan"].iat[0]),
        device_file=str(per_op["device_file"].iat[0]),
        overlap=overlap,
        seed=seed,
        runtime=str(per_op["runtime"].iat[0]) if "runtime" in per_op else "",
        latency_s=single.makespan_s,
        serial_latency_s=math.fsum(t.latency_s),
        sum_compute_s=math.fsum(t.compute_s),
        sum_memory_s=math.fsum(t.memory_s),
        sum_overhead_s=math.fsum(t.overhead_s),
        prefetched_s=single.prefetched_s,
        energy_j=tot["energy_j"],
        memory_bytes=tot["memory_bytes"],
        memory_need_bytes=tot["memory_need_bytes"],
        memory_capacity_bytes=tot["memory_capacity_bytes"],
        fits=tot["fits"],
        batch=batch,
        stream_inputs=stream,
        stream_makespan_s=streamed.makespan_s,
        throughput_ips=ips,
        samples_per_s=ips * batch,
        pipeline=pipe,
        serving=None if qps is None else serve(
            single.makespan_s if max_batch == 1 else (
                lambda b: single.makespan_s if b == 1 else batch_latency(b)),  # type: ignore[misc]
            qps, requests, seed=seed, max_batch=max_batch),
        timeline=timeline,
    )


def simulate(
    workload: str | Workload | SparseWorkload,
    device: str | Device,
    plan: Any = "dense",
    *,
    qps: float | None = None,
    requests: int = DEFAULT_REQUESTS,
    overlap: bool = True,
    seed: int = 0,
    stream: int = DEFAULT_STREAM,
    max_batch: int = 1,
    criterion: str = "magnitude",
    runtime: str = "",
    kernel: str = "",
    dtype: str = "",
) -> SimResult:
    """Simulate one inference, a stream of `stream` inferences, and (with `qps`) serving.

    Serving batches nothing by default. With `max_batch` > 1 the workload must be a recipe spec
    with a `batch` parameter: a batch of b requests is the recipe traced at b times its batch,
    estimated and simulated once per b (cached). `runtime`, `kernel` and `dtype` describe the
    deployment as in `run.estimate.compare_tables`.
    """
    from sparsesim.run.estimate import estimate, resolve_workload

    # checked before tracing, which may take seconds
    if qps is not None and not (qps > 0 and math.isfinite(qps)):
        raise SparsesimError(f"--qps {qps}: must be a finite number of requests/s > 0")
    for flag, value in (("--requests", requests), ("--stream", stream), ("--max-batch", max_batch)):
        if value < 1:
            raise SparsesimError(f"{flag} {value}: must be >= 1")
    wl = resolve_workload(workload)
    deploy = {"runtime": runtime, "kernel": kernel, "dtype": dtype}
    per_op = estimate(workload if isinstance(workload, SparseWorkload) else wl, device, plan, criterion=criterion,
                      **deploy)
    batch_latency = None
    if max_batch > 1:
        if not isinstance(workload, str):
            raise WorkloadError("serving with batching needs a workload spec with a batch parameter "
                                "(e.g. bert-base:seq=128), not a traced workload")
        spec_of = _batch_specs(workload)
        cache: dict[int, float] = {}

        def batch_latency(b: int) -> float:
            if b not in cache:
                frame = estimate(spec_of(b), device, plan, criterion=criterion, **deploy)
                cache[b] = run_sequence(OpTimes.from_frame(frame), overlap=overlap).makespan_s
            return cache[b]

    return simulate_frame(per_op, qps=qps, requests=requests, overlap=overlap, seed=seed,
                          stream=stream, batch=_batch_of(wl), max_batch=max_batch,
                          batch_latency=batch_latency)


def _batch_specs(spec: str) -> Callable[[int], str]:
    """spec -> (b -> the same spec at b times its batch)."""
    from sparsesim.tracing.workloads import parse_params

    head, _, tail = spec.strip().partition(":")
    params = parse_params(tail, where=f"workload {spec!r}")
    try:
        base = int(params.get("batch", "1"))
    except ValueError:
        raise WorkloadError(f"workload {spec!r}: batch={params['batch']!r} is not an integer") from None

    def at(b: int) -> str:
        p = {**params, "batch": str(base * b)}
        return head + ":" + ",".join(f"{k}={v}" for k, v in p.items())

    return at


def _batch_of(wl: Workload) -> int:
    # samples per inference, when the recipe says (recipes name it `batch`)
    b = wl.params.get("batch", 1) if wl.params else 1
    try:
        return max(1, int(b))
    except (TypeError, ValueError):
        return 1
