"""Estimate a workload under a plan on devices: the per-op table and the per (device, plan) summary.

The work splits into three stages so each runs as few times as possible:

1. resolve the workload (trace a recipe once per spec string),
2. sparsify it once per plan (masks built from the real weights; independent of the device),
3. cost every op of every sparsified workload on every device (pure family cost functions).

`compare` runs stage 1 once, stage 2 once per plan, stage 3 once per (plan, device). Traced
workloads and sparsified workloads are also cached across calls (see `clear_cache`), so calling
`estimate` for one device after another does not retrace or re-mask. Across processes the
on-disk cache (`core.diskcache`) keeps traces of meta-device workloads and every costed per-op
table, keyed by content: a repeated `compare` of a recipe spec reads its table back.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sparsesim.core import diskcache, progress
from sparsesim.core.errors import DeviceFileError
from sparsesim.core.ir import DTYPE_BYTES, Op, Workload
from sparsesim.cost.common import UNKNOWN_DTYPE_BYTES
from sparsesim.cost.record import Cost, RunContext
from sparsesim.hw.devices import Device, default_devices, load_device
from sparsesim.run import DEFAULT_PLANS, results
from sparsesim.run.fit import memory_fit, peak_activation_bytes
from sparsesim.sparsity.records import LayerSparsity, SparseWorkload

if TYPE_CHECKING:
    import pandas as pd

DENSE = "dense"

# traced workloads kept per spec string: tracing a recipe (building the model) dominates otherwise
_WORKLOAD_CACHE_SIZE = 4


@dataclass(frozen=True, eq=False)
class Tables:
    """Both tables of one evaluation, so a report need not recompute either: as columns
    (`results.Columns`), and as DataFrames made on first use (`per_op`, `summary`; unpacking
    gives the two frames). A run that only prints reads the columns and never imports pandas."""

    per_op_columns: results.Columns
    summary_columns: results.Columns

    @cached_property
    def per_op(self) -> pd.DataFrame:
        return results.frame(self.per_op_columns, results.PER_OP_COLUMNS)

    @cached_property
    def summary(self) -> pd.DataFrame:
        return results.frame(self.summary_columns, results.SUMMARY_COLUMNS)

    def __iter__(self) -> Iterator[pd.DataFrame]:
        yield self.per_op
        yield self.summary


@dataclass(frozen=True)
class Prepared:
    """A resolved workload and its sparsified versions, keyed by plan label (dense always present)."""

    workload: Workload
    sparse: Mapping[str, SparseWorkload]


# ----------------------------------------------------------------------------- caches

_workloads: OrderedDict[str, Workload] = OrderedDict()
_sparse: dict[tuple[int, str, str], SparseWorkload] = {}


def clear_cache() -> None:
    """Forget cached traces and sparsified workloads (e.g. after editing a recipe or plan file)."""
    _workloads.clear()
    _disk_workloads.clear()
    _fusions.clear()
    _sparse.clear()
    _retyped_cache.clear()


def resolve_workload(workload: str | Workload | SparseWorkload) -> Workload:
    """A Workload from a spec string (cached), a Workload, or a SparseWorkload's workload."""
    if isinstance(workload, SparseWorkload):
        return workload.workload
    if isinstance(workload, Workload):
        return workload
    if not isinstance(workload, str):
        raise TypeError(f"workload must be a spec string or a Workload, got {type(workload).__name__}")
    from sparsesim.tracing.topology import is_topology, load_topology

    if is_topology(workload):
        # read every time (microseconds, no torch): the file may change under the same spec
        return load_topology(workload)
    hit = _workloads.get(workload)
    if hit is not None:
        _workloads.move_to_end(workload)
        return hit
    from sparsesim.tracing.workloads import load_workload

    wl = load_workload(workload)
    _workloads[workload] = wl
    while len(_workloads) > _WORKLOAD_CACHE_SIZE:
        _workloads.popitem(last=False)
    return wl


_disk_workloads: OrderedDict[str, Workload] = OrderedDict()


def _traced(spec: str) -> Workload:
    """The workload of a spec string for costing: from memory, else (meta-device workloads: no
    weights to keep) from the disk cache, else traced now and, when on the meta device, stored
    there without its model (costing and analytic stats need only the ops and weight shapes)."""
    from sparsesim.tracing.topology import is_topology

    if is_topology(spec):
        return resolve_workload(spec)
    hit = _workloads.get(spec) or _disk_workloads.get(spec)
    if hit is not None:
        return hit
    from sparsesim.tracing.specs import spec_key

    k = spec_key("workload", spec)
    if k is not None:
        found = diskcache.get("workload", k)
        if isinstance(found, tuple) and len(found) == 2 and isinstance(found[0], Workload):
            wl, caught = found
            diskcache.replay(caught)
            _disk_workloads[spec] = wl
            while len(_disk_workloads) > _WORKLOAD_CACHE_SIZE:
                _disk_workloads.popitem(last=False)
            return wl
    wl, caught = diskcache.recording(lambda: resolve_workload(spec))
    if k is not None and wl.on_meta:
        diskcache.put("workload", k, (dataclasses.replace(wl, model=None), caught))
    return wl


def _is_frame(value: Any) -> bool:
    import pandas as pd

    return isinstance(value, pd.DataFrame)


def _is_per_op(value: Any) -> bool:
    """A per-op column table as `cost_table` makes it (what the disk cache may hand back)."""
    return isinstance(value, dict) and all(isinstance(value.get(c), list) for c in results.PER_OP_COLUMNS)


def resolve_device(device: str | Device) -> Device:
    return device if isinstance(device, Device) else load_device(device)


def resolve_devices(devices: str | Device | Iterable[str | Device] | None) -> list[Device]:
    """None = every built-in device and the user's own (`default_devices`); a comma-separated
    string or any iterable of names/Devices."""
    if devices is None:
        return default_devices()
    if isinstance(devices, (str, Device)):
        if isinstance(devices, str) and not devices.strip(" ,"):
            raise DeviceFileError(f"devices {devices!r}: no device named (comma-separated names or .toml paths)")
        devices = [d for d in devices.split(",") if d.strip()] if isinstance(devices, str) else [devices]
    out: list[Device] = []
    seen: set[tuple[str, str]] = set()
    names: dict[str, str] = {}
    for d in devices:
        dev = resolve_device(d.strip() if isinstance(d, str) else d)
        if (dev.name, dev.key) in seen:
            continue  # the same device asked for twice
        seen.add((dev.name, dev.key))
        if names.setdefault(dev.name, dev.key) != dev.key:
            # a what-if copy under the same name (an edited file, the same path changed between
            # loads): kept as its own row, named apart by its content
            dev = dataclasses.replace(dev, name=f"{dev.name}@{dev.key[:8]}")
        out.append(dev)
    return out


def plan_label(plan: Any) -> str:
    """The name a plan goes by in result tables."""
    if isinstance(plan, str):
        return plan.strip()
    if isinstance(plan, SparseWorkload):
        return plan.plan_name
    return str(getattr(plan, "name", None) or plan)


_retyped_cache: OrderedDict[tuple[int, str], Workload] = OrderedDict()


def _retyped(wl: Workload, dtype: str) -> Workload:
    """`wl` deployed at `dtype` (`tracing.retype`), cached per (workload object, dtype) so its
    sparsified versions are cached too."""
    from sparsesim.tracing.retype import retype

    key = (id(wl), dtype)
    hit = _retyped_cache.get(key)
    if hit is not None and hit.name == f"{wl.name}@{dtype}":
        return hit
    out = retype(wl, dtype)
    _retyped_cache[key] = out
    while len(_retyped_cache) > _WORKLOAD_CACHE_SIZE:
        _retyped_cache.popitem(last=False)
    return out


def sparsify_cached(workload: Workload, plan: Any, *, criterion: str = "magnitude") -> SparseWorkload:
    """Sparsify `workload` under `plan`, once per (workload object, plan spec, criterion).

    The dense plan goes through `sparsify` too: zeros already in the weights (a model pruned
    before tracing) show up as unstructured there. Plan objects (not spec strings) are
    sparsified every time, since they may carry masks of their own.
    """
    if isinstance(plan, SparseWorkload):
        return plan
    label = plan_label(plan)
    key = (id(workload), label, criterion)
    if isinstance(plan, str):
        hit = _sparse.get(key)
        if hit is not None and hit.dense is workload:
            return hit
    from sparsesim.sparsity.plans import load_plan
    from sparsesim.sparsity.sparsify import sparsify

    sw = sparsify(workload, load_plan(plan) if isinstance(plan, str) else plan, criterion=criterion)
    if isinstance(plan, str):
        _sparse[key] = sw
        weakref.finalize(workload, _sparse.pop, key, None)
    return sw


def prepare(
    workload: str | Workload | SparseWorkload,
    plans: Iterable[Any] = DEFAULT_PLANS,
    *,
    criterion: str = "magnitude",
    dtype: str = "",
) -> Prepared:
    """Stages 1 and 2: resolve the workload once (re-typed to `dtype` when given: a deployment
    at int8, fp8 or int4 weight-only) and sparsify it once per plan (dense always)."""
    wl = _traced(workload) if isinstance(workload, str) else resolve_workload(workload)
    if dtype:
        wl = _retyped(wl, dtype)
    todo: dict[str, Any] = {DENSE: DENSE}
    for p in plans:
        todo.setdefault(plan_label(p), p)
    return Prepared(wl, _sparsify_all(wl, todo, criterion))


def _sparsify_all(wl: Workload, plans: Mapping[str, Any], criterion: str) -> dict[str, SparseWorkload]:
    """`sparsify_cached` of each plan (by label, in their order), the plans side by side on the
    process's cores: building masks and stats is many small tensor ops that release the GIL,
    each plan on one thread (two plans on two cores: 2.7 -> 1.6 s for BERT-base's five)."""
    from sparsesim.core.threads import one_thread, usable_cores

    workers = min(len(plans), usable_cores())
    if workers < 2:
        return {label: sparsify_cached(wl, p, criterion=criterion)
                for label, p in progress.each(plans.items(), f"sparsify {wl.name}", unit="plan")}
    from concurrent.futures import ThreadPoolExecutor, as_completed

    # one intra-op thread for the whole pool: each sparsify's own one_thread() then restores 1,
    # not a value another thread set
    with one_thread():
        pool = ThreadPoolExecutor(workers)
        try:
            futures = {label: pool.submit(sparsify_cached, wl, p, criterion=criterion) for label, p in plans.items()}
            for f in progress.each(as_completed(futures.values()), f"sparsify {wl.name}", unit="plan",
                                   total=len(futures)):
                f.result()  # a plan's error (or Ctrl-C here) stops the plans not yet started
            return {label: f.result() for label, f in futures.items()}
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- costing

def _cost_key(op: Op) -> tuple:
    # what a cost model may read of an op: everything but its identity (index, module, names)
    return (op.kind, op.aten, op.dtype, op.input_shapes, op.output_shape, op.flops, op.bytes_moved,
            op.gemm, op.conv, op.weight is not None, op.weight_shape, op.activation_density,
            op.activation_measured, op.causal, op.masked, op.strided, op.deployed_from, op.training_gemm)


def _layer_key(layer: LayerSparsity | None) -> tuple | None:
    if layer is None:
        return None
    return (layer.pattern, layer.stats, layer.format, layer.format_bytes, layer.value_bytes,
            layer.metadata_bytes)


# fusion groups per (ops object, runtime fusion flags): a pure function of both, and a pass over
# every op, so it runs once per workload and runtime rather than once per (device, plan); the ops
# tuple is kept with its groups, so an id reused after it is freed cannot match
_fusions: OrderedDict[tuple[int, tuple[bool, ...]], tuple[Sequence[Op], tuple[Any, ...]]] = OrderedDict()
_FUSIONS_KEPT = 32


def cost_ops(
    ops: Sequence[Op],
    layers: Sequence[LayerSparsity | None],
    device: Device,
    *,
    keys: Sequence[tuple] | None = None,
    memo: dict[tuple, Cost] | None = None,
    context: RunContext | None = None,
) -> list[Cost]:
    """Cost every op on one device under the context's runtime (the device's default when the
    context names none): the family's kernel cost, then the runtime's fusion pass and host
    dispatch (`sparsesim.runtime`).

    The cost functions are pure, so ops identical but for their identity (the 12 layers of a
    BERT, the norms and activations every plan leaves alone) with identical sparsity are costed
    once; pass the same `memo` for every plan on one device to share it across plans.
    `context` is the whole-model run (see `run_context`); None costs each op alone.
    """
    from sparsesim.cost import ALONE, estimate_op
    from sparsesim.runtime import apply_runtime, fuse

    memo = {} if memo is None else memo
    context = ALONE if context is None else context
    rt_name, rt = device.runtime(context.runtime)
    if keys is None:
        keys = [(_cost_key(op), _layer_key(ly)) for op, ly in zip(ops, layers)]
    flags = (rt.fuse_elementwise, rt.fuse_epilogue, rt.fuse_attention)
    hit = _fusions.get((id(ops), flags))
    if hit is not None and hit[0] is ops:  # the same ops under another device or plan: grouped once
        fusion = hit[1]
    else:
        fusion = fuse(ops, elementwise=flags[0], epilogue=flags[1], attention=flags[2])
        if isinstance(ops, tuple):  # immutable (a workload's ops); a list may change under the same id
            _fusions[(id(ops), flags)] = (ops, fusion)
        while len(_fusions) > _FUSIONS_KEPT:
            _fusions.popitem(last=False)
    out = []
    for op, layer, key, fu in zip(ops, layers, keys, fusion):
        # a fused attention's head launches the attention kernel, not its own matmul
        kop = fu.kernel_op or op
        kernel_key = (key if fu.kernel_op is None else (_cost_key(kop), None), context)
        cost = memo.get(kernel_key)
        if cost is None:
            cost = memo[kernel_key] = estimate_op(kop, layer if fu.kernel_op is None else None, device, context)
        fkey = (kernel_key, fu.role, fu.how, fu.dram_scale)
        run_cost = memo.get(fkey)
        if run_cost is None:
            run_cost = memo[fkey] = apply_runtime(cost, fu, rt, name=rt_name)
        out.append(run_cost)
    return out


def cost_one(op: Op, layer: LayerSparsity | None, device: Device, *, runtime: str = "", kernel: str = "",
             context: RunContext | None = None) -> Cost:
    """One op alone on one device under `runtime` (default: the device's) with `kernel` forced
    if given: what a micro-benchmark of that op in that runtime measures."""
    ctx = context or RunContext()
    ctx = RunContext(ctx.model_weight_bytes, runtime or ctx.runtime, kernel or ctx.kernel)
    return cost_ops([op], [layer], device, context=ctx)[0]


def run_context(sw: SparseWorkload, *, runtime: str = "", kernel: str = "") -> RunContext:
    """The whole-model context of a sparsified workload: its weights' stored size under the
    plan (sparse formats for planned layers, dense for the rest, each distinct weight once),
    the runtime it runs under ("" = each device's default) and the kernel forced, if any."""
    return RunContext(model_weight_bytes=_stored_weight_bytes(sw), runtime=runtime, kernel=kernel)


def _stored_weight_bytes(sw: SparseWorkload) -> float:
    """The stored size of a sparsified workload's weights under its plan (`run_context`)."""
    stored = {w: float(ly.format_bytes) for w, ly in sw.layers.items()}
    for name, info in sw.workload.weights.items():
        if name not in stored:
            stored[name] = float(math.prod(info.shape)) * DTYPE_BYTES.get(info.dtype, UNKNOWN_DTYPE_BYTES)
    return sum(stored.values())


def cost_workload(
    sw: SparseWorkload,
    device: Device,
    *,
    runtime: str = "",
    kernel: str = "",
    memo: dict[tuple, Cost] | None = None,
    keys: Sequence[tuple] | None = None,
) -> list[Cost]:
    """The one costing path: every op of a sparsified workload on one device, each with its
    layer's sparsity, in the whole-model run context of the plan (`run_context`), under
    `runtime` (default: the device's) with `kernel` forced where it applies. `estimate`,
    `compare`, `simulate`, the search and the reports all cost plans through here."""
    layers = [sw.sparsity_of(op) for op in sw.ops]
    return cost_ops(sw.ops, layers, device, keys=keys, memo=memo,
                    context=run_context(sw, runtime=runtime, kernel=kernel))


def cost_table(prepared: Prepared, devices: Sequence[Device], plans: Iterable[str] | None = None, *,
               runtime: str = "", kernel: str = "") -> results.Columns:
    """Stage 3: the per-op table (as columns) for every (plan, device); `plans` defaults to all prepared ones.
    `runtime` ("" = each device's default) and `kernel` ("" = the runtime picks) apply to all."""
    labels = list(prepared.sparse) if plans is None else list(plans)
    memos: dict[str, dict[tuple, Cost]] = {dev.path: {} for dev in devices}
    rt_names = {dev.path: dev.runtime(runtime)[0] for dev in devices}
    op_keys: dict[int, list[tuple]] = {}
    blocks = []
    shown = progress.bar(f"cost {prepared.workload.name}", len(labels) * len(devices), unit="run")
    for label in labels:
        sw = prepared.sparse[label]
        ops = sw.ops
        layers = [sw.sparsity_of(op) for op in ops]
        if id(ops) not in op_keys:
            op_keys[id(ops)] = [_cost_key(op) for op in ops]
        keys = list(zip(op_keys[id(ops)], [_layer_key(ly) for ly in layers]))
        static = results.op_columns(ops, layers)
        weights, activations = _stored_weight_bytes(sw), peak_activation_bytes(ops)
        for dev in devices:
            costs = cost_workload(sw, dev, runtime=runtime, kernel=kernel, keys=keys, memo=memos[dev.path])
            fit = memory_fit(weights, sw.workload.input_bytes, activations, dev)
            blocks.append({
                "workload": sw.name, "plan": label, "device": dev.name, "family": dev.family,
                "runtime": rt_names[dev.path], **static, **results.cost_columns(costs), **results.fit_columns(fit),
                "device_file": dev.path,
            })
            shown.update(1)
    shown.close()
    return results.per_op_columns(blocks)


# ----------------------------------------------------------------------------- the API

def compare_tables(
    workload: str | Workload,
    devices: str | Device | Iterable[str | Device] | None = None,
    plans: Iterable[Any] = DEFAULT_PLANS,
    *,
    criterion: str = "magnitude",
    runtime: str = "",
    kernel: str = "",
    dtype: str = "",
    dask_scheduler: str = "",
) -> Tables:
    """Per-op table and summary for every device x plan. Dense is always computed for the
    ratios: the per-op table holds it in any case, the summary only the plans asked for, in the
    order asked (devices in the order given, built-in order by default).

    `runtime` (eager, compiled, engine; "" = each device file's default), `kernel` (force one
    kernel library where it applies) and `dtype` (deploy the model at another dtype, e.g. int8,
    fp8 or int4 weight-only) describe the deployment; both plans and dense use them.
    `dask_scheduler` (an address) costs each device's cell as a task on that Dask cluster."""
    return compare_many([workload], devices, plans, criterion=criterion, runtime=runtime, kernel=kernel,
                        dtype=dtype, dask_scheduler=dask_scheduler)[0]


def compare_many(
    workloads: Sequence[str | Workload],
    devices: str | Device | Iterable[str | Device] | None = None,
    plans: Iterable[Any] = DEFAULT_PLANS,
    *,
    criterion: str = "magnitude",
    runtime: str = "",
    kernel: str = "",
    dtype: str = "",
    dask_scheduler: str = "",
) -> list[Tables]:
    """`compare_tables` of each workload (arguments as there); on a Dask cluster every
    (workload, device) cell of the sweep is submitted at once."""
    plans = list(plans)
    if not plans:
        plans = [DENSE]
    devs = resolve_devices(devices)
    deploy = {"criterion": criterion, "runtime": runtime, "kernel": kernel, "dtype": dtype}
    if dask_scheduler:
        per_ops = _per_op_on_dask(dask_scheduler, list(workloads), devs, plans, deploy)
    else:
        per_ops = [_per_op(w, devs, plans, None, **deploy) for w in workloads]
    wanted = list(dict.fromkeys(plan_label(p) for p in plans))
    order = {p: i for i, p in enumerate(wanted)}
    dev_order = {d.name: i for i, d in enumerate(devs)}
    tables = []
    for per_op in per_ops:
        summary = results.summarize(per_op)
        rows = [i for i, p in enumerate(summary["plan"]) if p in order]
        rows.sort(key=lambda i: (dev_order[summary["device"][i]], order[summary["plan"][i]]))
        tables.append(Tables(per_op, results.take(summary, rows)))
    return tables


def compare(
    workload: str | Workload,
    devices: str | Device | Iterable[str | Device] | None = None,
    plans: Iterable[Any] = DEFAULT_PLANS,
    *,
    criterion: str = "magnitude",
    runtime: str = "",
    kernel: str = "",
    dtype: str = "",
    dask_scheduler: str = "",
) -> pd.DataFrame:
    """One row per device x plan: latency, energy, memory, speedup over dense on the same device,
    fallback ops, dominant bound and top why (columns: `results.SUMMARY_COLUMNS`); the
    deployment and cluster arguments as in `compare_tables`. A repeated call reads the summary
    alone back from the disk cache (not the per-op table it was made from)."""
    plans = list(plans) or [DENSE]
    devs = resolve_devices(devices)
    k = _table_key(workload, devs, plans, None, criterion, runtime, kernel, dtype)
    return diskcache.remembered("summary", k, lambda: compare_tables(
        workload, devs, plans, criterion=criterion, runtime=runtime, kernel=kernel, dtype=dtype,
        dask_scheduler=dask_scheduler).summary, _is_frame)


def estimate(
    workload: str | Workload | SparseWorkload,
    device: str | Device,
    plan: Any = DENSE,
    *,
    criterion: str = "magnitude",
    runtime: str = "",
    kernel: str = "",
    dtype: str = "",
) -> pd.DataFrame:
    """One row per op of `workload` under `plan` on `device` (columns: `results.PER_OP_COLUMNS`);
    the deployment arguments as in `compare_tables`.

    `plan` may also be an already sparsified workload (a SparseWorkload), and so may `workload`
    when `plan` is left at dense: then its own sparsity is costed.
    """
    if isinstance(workload, SparseWorkload) and isinstance(plan, str) and plan == DENSE:
        plan = workload
    dev = resolve_device(device)
    per_op = _per_op(workload, [dev], [plan], [plan_label(plan)], criterion=criterion, runtime=runtime,
                     kernel=kernel, dtype=dtype)
    return results.frame(per_op, results.PER_OP_COLUMNS)


def _per_op(workload: str | Workload | SparseWorkload, devs: Sequence[Device], plans: Sequence[Any], labels: list[str] | None, *,
            criterion: str, runtime: str, kernel: str, dtype: str) -> results.Columns:
    """`cost_table` of the prepared plans (`labels`: which; None = all), read from the disk cache
    when the same inputs were costed before (`_table_key`)."""
    k = _table_key(workload, devs, plans, labels, criterion, runtime, kernel, dtype)

    def make() -> results.Columns:
        prepared = prepare(workload, plans, criterion=criterion, dtype=dtype)
        return cost_table(prepared, devs, labels, runtime=runtime, kernel=kernel)

    return diskcache.remembered("costs", k, make, _is_per_op)


# how long a run waits for the Dask scheduler it is given before saying it cannot connect
DASK_CONNECT_TIMEOUT_S = 30


def _device_cell(workload: str, dev: Device, plans: Sequence[Any], deploy: dict[str, str]) -> results.Columns:
    """One device's per-op table: a Dask task (the worker traces and masks through its own caches)."""
    return _per_op(workload, [dev], plans, None, **deploy)


def _per_op_on_dask(address: str, workloads: Sequence[Any], devs: Sequence[Device], plans: Sequence[Any],
                    deploy: dict[str, str]) -> list[results.Columns]:
    """`_per_op` of each workload, every (workload, device) cell a task on the Dask cluster at
    `address`, all submitted at once; the same tables. dask and distributed are the optional
    extra `cluster`."""
    from sparsesim.core.errors import SparsesimError
    from sparsesim.core.extras import require

    if not all(isinstance(w, str) for w in workloads):
        raise SparsesimError("--dask-scheduler: the workload must be a spec (a recipe, a .toml file, a topology .csv, gemm:/conv: "
                             "or module:factory) that every worker can build, not an in-memory model")
    Client = require("distributed", "cluster", "--dask-scheduler").Client
    try:
        client = Client(address, timeout=DASK_CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as e:
        raise SparsesimError(f"--dask-scheduler {address}: cannot connect ({e})") from e
    with client:
        futures = [[client.submit(_device_cell, w, d, list(plans), deploy, pure=False) for d in devs]
                   for w in workloads]
        cells = client.gather(futures)
    out = []
    for tables in cells:
        # the local table's order: plan by plan, each plan's devices in order
        labels = list(dict.fromkeys(tables[0]["plan"])) if tables else []
        out.append(results.per_op_columns(results.rows_where(t, "plan", label) for label in labels for t in tables))
    return out


def _table_key(workload: Any, devs: Sequence[Device], plans: Sequence[Any], labels: list[str] | None,
               *args: str) -> str | None:
    """The disk-cache key of a per-op table: the workload spec's sources, the plans (a plan file
    by its bytes), every device file's bytes and parsed contents, and the other arguments. None
    when an input is an object, not a file or spec (not keyed by content, so not cached)."""
    if not all(isinstance(p, str) for p in plans):
        return None
    from pathlib import Path

    from sparsesim.tracing.specs import spec_key

    dev_parts = [(repr(d), Path(d.path) if Path(d.path).is_file() else None) for d in devs]
    return spec_key("costs", workload, [diskcache.named_file(p) for p in plans], labels, dev_parts, args)
