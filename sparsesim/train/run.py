"""Whole training runs: every (method, sparsity, distribution) on every device, against dense.

Stages, each run as few times as possible:

1. resolve the workload at the training batch (traced on the meta device when the recipe can:
   training costs need shapes, not weights), and the run length in steps;
2. per (method, sparsity, distribution): the target pattern of each weight and the method's
   schedule of segments (`methods.py`);
3. per distinct step kind (segments of different runs that cost the same are built once): the
   step's IR ops (`step.py`) and its peak memory (`memory.py`);
4. per step kind and device: the step (a SparseWorkload of training ops) costed by
   `sparsesim.run.estimate.cost_workload` in its whole-model run context, the one path
   `estimate`, `compare`, the search and the reports take; one memo per device is shared by
   every step kind, so an op identical in two steps is costed once;
5. per run and device: steps x per-step figures summed over the segments; ratios to dense
   training on the same device; the why (passes that ran sparse or fell back, what dominated
   memory and time).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import pandas as pd

from sparsesim.core import progress
from sparsesim.core.errors import TrainError, WorkloadError
from sparsesim.core.ir import Workload
from sparsesim.cost.record import Cost
from sparsesim.hw.devices import Device
from sparsesim.run.estimate import cost_workload, resolve_devices, resolve_workload
from sparsesim.sparsity.records import DENSE, Pattern
from sparsesim.train.distributions import (
    NAMED,
    global_sparsity,
    is_plan,
    target_patterns,
)
from sparsesim.train.memory import (
    COMPONENTS,
    Memory,
    ModelSizes,
    model_sizes,
    step_memory,
)
from sparsesim.train.methods import NM_PATTERN, Method, Segment, get_method
from sparsesim.train.optimizers import Optimizer, get_optimizer
from sparsesim.train.step import (
    PASSES,
    STORAGES,
    Step,
    StepOptions,
    build_step,
    weight_shapes,
)

DEFAULT_OPTIMIZER = "sgd-momentum"
# dtypes whose training keeps fp32 master weights by default (mixed precision)
MIXED_PRECISION_DTYPES = ("fp16", "bf16")
# the passes whose kernels a sparse pattern can change (the why lists them)
GEMM_PASSES = ("forward", "grad-input", "grad-weight")

SUMMARY_COLUMNS: dict[str, str] = {
    "workload": "workload as traced for training (at the training batch)",
    "method": "training method (sparsesim.train.methods.METHODS)",
    "kind": "dense, dense-to-sparse, static or dynamic sparse-to-sparse, semi-structured",
    "storage": "sparse (sparse kernels and formats where the device has them) or masked (dense x 0/1 mask)",
    "sparsity": "global sparsity asked for (0.5 for 2:4, 0 for dense)",
    "distribution": "layer-wise density distribution (uniform, uniform-first-dense, er, erk, or a plan file)",
    "global_sparsity": "fraction of the sparsifiable weights removed at the end of the run",
    "device": "device name",
    "family": "hardware family whose cost model ran",
    "runtime": "runtime the steps ran under (eager, compiled, engine: --runtime, else the device file's default)",
    "steps": "training steps of the run (the method's step multiplier applied)",
    "train_flops": "theoretical FLOPs of the whole run (zeros skipped, whatever the kernels do)",
    "train_flops_vs_dense": "train_flops / dense training's",
    "inference_flops": "theoretical forward FLOPs of one step's batch with the final mask",
    "inference_flops_vs_dense": "inference_flops / the dense model's",
    "flops_executed": "FLOPs the kernels execute over the run (a dense fallback executes the zeros)",
    "time_s": "modeled time of the whole run (ops run one after another)",
    "time_vs_dense": "time_s / dense training's on the same device (<1 = faster)",
    "energy_j": "modeled energy of the whole run",
    "energy_vs_dense": "energy_j / dense training's on the same device",
    "peak_memory_bytes": "peak device memory of the run's costliest step (weights, grads, optimizer, activations, masks)",
    "peak_memory_vs_dense": "peak_memory_bytes / dense training's",
    **{f"memory_{c}_bytes": f"{c} part of peak_memory_bytes" for c in COMPONENTS},
    "memory_top": "component holding the most of the peak memory",
    "peak_segment": "the segment whose step sets the peak memory",
    "sparse_passes": "passes in which at least one op ran a sparse kernel",
    "fallback_passes": "passes in which a sparse pattern fell back to a dense (or other) kernel",
    "time_top_segment": "segment holding the most of the run's time",
    "why": "the above in words",
}

SEGMENT_COLUMNS = ("workload", "method", "storage", "sparsity", "distribution", "device", "segment", "steps",
                   "train", "step_flops", "flops", "step_time_s", "time_s", "energy_j", "peak_memory_bytes",
                   "sparse_passes", "fallback_passes")


class TrainTables(NamedTuple):
    """Per-segment rows and the per-run summary."""

    segments: pd.DataFrame
    summary: pd.DataFrame


@dataclass(frozen=True)
class TrainConfig:
    """How long and how a run trains; per-method settings and step multipliers by method name
    (a multiplier under the key "*" applies to every sparse method without its own)."""

    steps: float | None = None
    epochs: float | None = None
    dataset_size: int | None = None
    batch: int | None = None
    optimizer: str = DEFAULT_OPTIMIZER
    master_weights: bool | None = None
    storage: str = "sparse"
    checkpoint: bool = False
    input_grad: bool = False
    step_multiplier: Mapping[str, float] = field(default_factory=dict)
    settings: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    runtime: str = ""  # eager, compiled or engine ("" = each device file's default)
    kernel: str = ""  # a kernel library forced for the ops it serves ("" = the runtime picks)
    dtype: str = ""  # train at this dtype ("" = as traced): a float dtype or fp8

    def multiplier(self, method: str) -> float:
        m = self.step_multiplier
        if method in m:
            return float(m[method])
        return float(m.get("*", 1.0)) if method != "dense" else 1.0


# ----------------------------------------------------------------------------- workload

def training_workload(spec: str | Workload, batch: int | None = None) -> tuple[Workload, dict[str, Any]]:
    """The workload at the training batch, and its recipe's training defaults ([train] table).

    A recipe whose builder takes `device` is traced on the meta device; `batch` overrides the
    recipe's batch parameter (a spec that names its own batch must agree).
    """
    if not isinstance(spec, str):
        if batch is not None and spec.params.get("batch") not in (None, batch):
            raise TrainError(f"workload {spec.name!r} was traced at batch {spec.params.get('batch')}; "
                             f"retrace it at batch {batch}")
        return spec, {}
    from pathlib import Path

    from sparsesim.tracing.specs import builtin_recipe_files
    from sparsesim.tracing.workloads import parse_params, read_recipe

    text = spec.strip()
    head, _, tail = text.partition(":")
    files = builtin_recipe_files()
    if head in files or head.endswith(".toml"):
        recipe = read_recipe(files[head], head) if head in files else read_recipe(Path(head))
        given = parse_params(tail, where=f"recipe {recipe.name!r}")
        setup = dict(recipe.train)
        want = batch if batch is not None else setup.get("batch")
        if want is not None:
            if "batch" not in recipe.defaults:
                raise TrainError(f"workload {text!r}: the recipe takes no batch parameter; drop --batch")
            if "batch" in given and int(given["batch"]) != want:
                raise TrainError(f"workload {text!r} names batch={given['batch']} but the training batch is {want}")
            given["batch"] = str(want)
        if "device" in recipe.defaults and "device" not in given:
            given["device"] = "meta"
        text = head + ":" + ",".join(f"{k}={v}" for k, v in given.items()) if given else head
        return resolve_workload(text), setup
    if batch is not None:
        raise TrainError(f"workload {text!r} is not a recipe: give its batch in the spec, not --batch")
    return resolve_workload(text), {}


# integer dtypes are inference deployments (int8 activations, int4 weight-only): no gradients at them
TRAIN_DTYPES = ("fp32", "tf32", "fp16", "bf16", "fp8")


def _at_dtype(wl: Workload, dtype: str) -> Workload:
    """`wl` re-typed to train at `dtype` (`tracing.retype`; fp8 as float8 training does it,
    `float8_training`); as traced when empty."""
    if not dtype:
        return wl
    from sparsesim.tracing.retype import DEPLOY_DTYPES, FLOAT8, float8_training, retype

    if dtype not in TRAIN_DTYPES:
        inference = ", ".join(d for d in DEPLOY_DTYPES if d not in TRAIN_DTYPES)
        raise TrainError(f"--dtype {dtype!r}: training is modelled at {', '.join(TRAIN_DTYPES)} "
                         f"({inference} are inference deployments)")
    if dtype == FLOAT8:
        return float8_training(wl)  # fp8 GEMMs in linears, everything else as built
    return retype(wl, dtype)


def recipe_training(spec: str | Workload) -> dict[str, Any]:
    """The [train] table of the recipe a spec names (empty for anything else); nothing is traced."""
    if not isinstance(spec, str):
        return {}
    from pathlib import Path

    from sparsesim.tracing.specs import builtin_recipe_files
    from sparsesim.tracing.workloads import read_recipe

    head = spec.strip().partition(":")[0]
    files = builtin_recipe_files()
    if head in files:
        return dict(read_recipe(files[head], head).train)
    if head.endswith(".toml") and Path(head).is_file():
        return dict(read_recipe(Path(head)).train)
    return {}


def run_steps(config: TrainConfig, setup: Mapping[str, Any], workload: Workload) -> float:
    """Steps of a dense run: --steps, or epochs x ceil(dataset size / batch)."""
    if config.steps is not None:
        if not config.steps > 0:
            raise TrainError(f"steps {config.steps:g} must be > 0")
        return float(config.steps)
    epochs = config.epochs if config.epochs is not None else setup.get("epochs")
    size = config.dataset_size if config.dataset_size is not None else setup.get("dataset_size")
    batch = config.batch or workload.params.get("batch") or setup.get("batch")
    if epochs is None or size is None or batch is None:
        raise TrainError(f"workload {workload.name!r}: give --steps, or --epochs with --dataset-size "
                         "(its recipe has no [train] table to take them from)")
    if not (epochs > 0 and size > 0 and batch > 0):
        raise TrainError(f"epochs {epochs}, dataset size {size} and batch {batch} must all be > 0")
    return float(epochs) * math.ceil(size / batch)


# ----------------------------------------------------------------------------- runs

@dataclass(frozen=True)
class Run:
    """One (method, sparsity, distribution): its final patterns and schedule."""

    method: Method
    sparsity: float
    distribution: str
    target: Mapping[str, Pattern]
    segments: tuple[Segment, ...]
    global_sparsity: float


def _runs(wl: Workload, methods: Sequence[str], sparsities: Sequence[float], distributions: Sequence[str],
          steps: float, config: TrainConfig) -> list[Run]:
    out: list[Run] = []
    seen: set[tuple] = set()
    for name in ["dense", *methods]:
        method = get_method(name)
        if method.name in config.settings:
            method = method.with_settings(**config.settings[method.name])
        mult = config.multiplier(method.name)
        if not mult > 0:
            raise TrainError(f"step multiplier {mult:g} for {method.name} must be > 0")
        for dist in distributions:
            if not is_plan(dist) and dist not in NAMED:
                raise TrainError(f"distribution {dist!r} is not one of {', '.join(NAMED)} or a plan file (.toml, .safetensors, .pt)")
            for s in sparsities:
                if method.name == "dense":
                    key: tuple = ("dense",)
                    sp, dd = 0.0, "dense"
                elif method.name == "2:4":
                    key, sp, dd = ("2:4", dist), 0.5, dist
                elif is_plan(dist):
                    key, sp, dd = (method.name, dist), math.nan, dist
                else:
                    key, sp, dd = (method.name, float(s), dist), float(s), dist
                if key in seen:
                    continue
                seen.add(key)
                if method.name == "dense":
                    target = {w: DENSE for w in target_patterns(wl, "uniform", 0.0)}
                else:
                    target = target_patterns(wl, dist, 0.0 if math.isnan(sp) else sp,
                                             nm=NM_PATTERN if method.name == "2:4" else None)
                g = global_sparsity(wl, target)
                out.append(Run(method, g if math.isnan(sp) else sp, dd, target, method.schedule(steps * mult, target), g))
    return out


def _seg_key(seg: Segment) -> tuple:
    return (tuple(sorted((w, p) for w, p in seg.patterns.items())), seg.wgrad, seg.held, seg.extras, seg.train,
            seg.optimizer)


@dataclass(frozen=True)
class _StepCost:
    latency_s: float
    energy_j: float
    flops_executed: float
    sparse_passes: tuple[str, ...]
    fallback_passes: tuple[str, ...]


def _aggregate(step: Step, costs: Sequence[Cost]) -> _StepCost:
    sparse: set[str] = set()
    fell: set[str] = set()
    for layer, phase, c in zip(step.layers, step.passes, costs):
        if phase not in GEMM_PASSES:
            continue
        if layer is not None and c.fallback:
            fell.add(phase)
        elif layer is not None and c.kernel != "dense":
            sparse.add(phase)
    order = {p: i for i, p in enumerate(PASSES)}
    return _StepCost(
        latency_s=float(sum(c.latency_s for c in costs)), energy_j=float(sum(c.energy_j for c in costs)),
        flops_executed=float(sum(c.flops_executed for c in costs)),
        sparse_passes=tuple(sorted(sparse, key=order.__getitem__)),
        fallback_passes=tuple(sorted(fell, key=order.__getitem__)),
    )


def _optimizer(config: TrainConfig, sizes: ModelSizes, wl: Workload) -> Optimizer:
    master = config.master_weights
    if master is None:
        dtypes = {w.dtype for w in wl.weights.values()} or {wl.ops[0].dtype if wl.ops else "fp32"}
        master = bool(dtypes & set(MIXED_PRECISION_DTYPES))
    return get_optimizer(config.optimizer, master_weights=master)


def _build(wl: Workload, seg: Segment, opts: StepOptions, sizes: ModelSizes, shapes: Mapping[str, tuple[int, int]],
           mem: Memory | None) -> Step:
    """A step's ops; the optimizer's values are what the storage holds (its theoretical FLOPs
    what sparse storage would hold)."""
    held = mem.grads / sizes.param_bytes if mem is not None else float(sizes.params)
    sparse = held
    if mem is not None and opts.storage != "sparse":
        sparse = step_memory(sizes, shapes, seg, storage="sparse", optimizer=opts.optimizer,
                             checkpoint=opts.checkpoint).grads / sizes.param_bytes
    return build_step(wl, seg, opts, held_values=held, param_bytes=sizes.param_bytes, label=seg.label,
                      sparse_values=sparse)


def train_tables(
    workload: str | Workload,
    methods: Iterable[str] = ("dense",),
    sparsities: Iterable[float] = (0.9,),
    distributions: Iterable[str] = ("uniform",),
    devices: str | Device | Iterable[str | Device] | None = None,
    config: TrainConfig | None = None,
) -> TrainTables:
    """Per-segment and per-run tables of every (method, sparsity, distribution) x device.
    Dense training is always costed (the ratios need it)."""
    config = config or TrainConfig()
    if config.storage not in STORAGES:
        raise TrainError(f"storage {config.storage!r} is not one of {', '.join(STORAGES)}")
    methods, sparsities, distributions = list(methods), [float(s) for s in sparsities], list(distributions)
    if not methods:
        methods = ["dense"]
    for s in sparsities:
        if not 0 <= s < 1:
            raise TrainError(f"sparsity {s:g} must be in [0, 1) (the fraction of weights removed)")
    wl, setup = training_workload(workload, config.batch)
    wl = _at_dtype(wl, config.dtype)
    if not wl.ops:
        raise WorkloadError(f"workload {wl.name!r} traced to no ops")
    devs = resolve_devices(devices)
    steps = run_steps(config, setup, wl)
    sizes = model_sizes(wl)
    shapes = weight_shapes(wl)
    optimizer = _optimizer(config, sizes, wl)
    opts = StepOptions(storage=config.storage, optimizer=optimizer, checkpoint=config.checkpoint,
                       input_grad=config.input_grad)
    runs = _runs(wl, methods, sparsities or [0.9], distributions or ["uniform"], steps, config)

    # stage 3: distinct step kinds, their ops and memory
    kinds: dict[tuple, tuple[Step, Memory | None]] = {}
    for run in progress.each(runs, f"training steps {wl.name}", unit="run"):
        for seg in run.segments:
            key = _seg_key(seg)
            if key in kinds:
                continue
            mem = step_memory(sizes, shapes, seg, storage=config.storage, optimizer=optimizer,
                              checkpoint=config.checkpoint) if seg.train else None
            step = _build(wl, seg, opts, sizes, shapes, mem)
            kinds[key] = (step, mem)

    # stage 4: cost every step kind on every device through the one costing path
    costed: dict[tuple[tuple, str], _StepCost] = {}
    for dev in progress.each(devs, f"cost training {wl.name}", unit="device"):
        memo: dict[tuple, Cost] = {}
        for key, (step, _) in kinds.items():
            costs = cost_workload(step.sparse, dev, runtime=config.runtime, kernel=config.kernel, memo=memo)
            costed[(key, dev.path)] = _aggregate(step, costs)

    # stage 5: runs x devices
    seg_rows, rows = [], []
    for run in runs:
        final = run.segments[-1].patterns if run.method.name != "dense" else run.target
        inference = _forward_flops(wl, final)
        for dev in devs:
            total_t = total_e = total_f = total_x = 0.0
            peak: tuple[float, Memory | None, str] = (-1.0, None, "")
            sparse_p: set[str] = set()
            fell_p: set[str] = set()
            seg_time: dict[str, float] = {}
            for seg in run.segments:
                key = _seg_key(seg)
                step, mem = kinds[key]
                sc = costed[(key, dev.path)]
                t, e = seg.steps * sc.latency_s, seg.steps * sc.energy_j
                total_t += t
                total_e += e
                total_f += seg.steps * step.flops
                total_x += seg.steps * sc.flops_executed
                seg_time[seg.label] = seg_time.get(seg.label, 0.0) + t
                if seg.train:
                    sparse_p.update(sc.sparse_passes)
                    fell_p.update(sc.fallback_passes)
                if mem is not None and mem.total > peak[0]:
                    peak = (mem.total, mem, seg.label)
                seg_rows.append({
                    "workload": wl.name, "method": run.method.name, "storage": config.storage,
                    "sparsity": run.sparsity, "distribution": run.distribution, "device": dev.name,
                    "segment": seg.label, "steps": seg.steps, "train": seg.train, "step_flops": step.flops,
                    "flops": seg.steps * step.flops, "step_time_s": sc.latency_s, "time_s": t, "energy_j": e,
                    "peak_memory_bytes": mem.total if mem is not None else math.nan,
                    "sparse_passes": ",".join(sc.sparse_passes), "fallback_passes": ",".join(sc.fallback_passes),
                })
            mem = peak[1] or Memory()
            order = {p: i for i, p in enumerate(PASSES)}
            top_seg = max(seg_time, key=seg_time.__getitem__) if seg_time else ""
            row = {
                "workload": wl.name, "method": run.method.name, "kind": run.method.kind, "storage": config.storage,
                "sparsity": run.sparsity, "distribution": run.distribution, "global_sparsity": run.global_sparsity,
                "device": dev.name, "family": dev.family, "runtime": dev.runtime(config.runtime)[0],
                "steps": sum(s.steps for s in run.segments if s.train),
                "train_flops": total_f, "inference_flops": inference, "flops_executed": total_x,
                "time_s": total_t, "energy_j": total_e, "peak_memory_bytes": mem.total,
                **{f"memory_{c}_bytes": getattr(mem, c) for c in COMPONENTS},
                "memory_top": mem.largest()[0], "peak_segment": peak[2],
                "sparse_passes": ",".join(sorted(sparse_p, key=order.__getitem__)),
                "fallback_passes": ",".join(sorted(fell_p, key=order.__getitem__)),
                "time_top_segment": top_seg,
                "_top_share": seg_time[top_seg] / total_t if total_t > 0 and top_seg else 0.0,
                "_mem_share": mem.largest()[1],
            }
            rows.append(row)
    summary = _with_ratios(pd.DataFrame(rows))
    return TrainTables(pd.DataFrame(seg_rows, columns=list(SEGMENT_COLUMNS)), summary)


def _forward_flops(wl: Workload, patterns: Mapping[str, Pattern]) -> float:
    total = 0.0
    for op in wl.ops:
        p = patterns.get(op.weight or "", DENSE)
        total += op.flops * (1.0 if p.spec.is_dense else p.density)
    return total


def _with_ratios(df: pd.DataFrame) -> pd.DataFrame:
    dense = df[df["method"] == "dense"].set_index("device")
    for col, ratio in (("train_flops", "train_flops_vs_dense"), ("inference_flops", "inference_flops_vs_dense"),
                       ("time_s", "time_vs_dense"), ("energy_j", "energy_vs_dense"),
                       ("peak_memory_bytes", "peak_memory_vs_dense")):
        df[ratio] = df[col] / df["device"].map(dense[col])
    df["why"] = [_why(r) for r in df.to_dict(orient="records")]
    return df[list(SUMMARY_COLUMNS)].reset_index(drop=True)


def _why(r: Mapping[str, Any]) -> str:
    """The row's structured facts in words: kernels per pass, where the time went, what set the peak."""
    parts = []
    if r["method"] != "dense":
        if r["storage"] == "masked":
            parts.append("masked storage: every pass dense on 0/1-masked weights, plus the masking")
        else:
            sp, fb = r["sparse_passes"].replace(",", "/"), r["fallback_passes"].replace(",", "/")
            parts.append((f"sparse kernels in {sp}" if sp else "no pass ran a sparse kernel")
                         + (f" (some layers fell back to dense in {fb})" if fb and sp else
                            f" (fell back to dense in {fb})" if fb else ""))
    parts.append(f"most time in '{r['time_top_segment']}' ({r['_top_share']:.0%})")
    parts.append(f"peak memory set by '{r['peak_segment']}', {r['memory_top']} {r['_mem_share']:.0%} of it")
    return "; ".join(parts)


def train(
    workload: str | Workload,
    methods: Iterable[str] = ("dense",),
    sparsities: Iterable[float] = (0.9,),
    distributions: Iterable[str] = ("uniform",),
    devices: str | Device | Iterable[str | Device] | None = None,
    config: TrainConfig | None = None,
    **options: Any,
) -> pd.DataFrame:
    """One row per (method, sparsity, distribution, device): whole-run FLOPs, time, energy, peak
    memory, each against dense training on the same device (columns: `SUMMARY_COLUMNS`).
    Keyword `options` are `TrainConfig` fields (steps=, epochs=, storage=, optimizer=, ...)."""
    if options:
        config = replace(config or TrainConfig(), **options)
    return train_tables(workload, methods, sparsities, distributions, devices, config).summary


def step_table(
    workload: str | Workload,
    method: str,
    device: str | Device,
    *,
    sparsity: float = 0.9,
    distribution: str = "uniform",
    config: TrainConfig | None = None,
    segment: str | None = None,
) -> pd.DataFrame:
    """The per-op table (`sparsesim.run.results.PER_OP_COLUMNS` plus `pass` and
    `theoretical_flops`) of one step of a method's run on one device, through
    `sparsesim.run.estimate.cost_table`. `segment` names the segment (default: the training
    segment with the most steps)."""
    from sparsesim.run.estimate import Prepared, cost_table, resolve_device

    config = config or TrainConfig(steps=1)
    if config.steps is None and config.epochs is None:
        config = replace(config, steps=1)
    wl, setup = training_workload(workload, config.batch)
    wl = _at_dtype(wl, config.dtype)
    steps = run_steps(config, setup, wl)
    sizes = model_sizes(wl)
    optimizer = _optimizer(config, sizes, wl)
    runs = [r for r in _runs(wl, [method], [sparsity], [distribution], steps, config)
            if r.method.name == get_method(method).name]
    segs = [s for s in runs[0].segments if s.train]
    if segment is not None:
        segs = [s for s in runs[0].segments if s.label == segment]
        if not segs:
            raise TrainError(f"method {method!r} has no segment {segment!r} "
                             f"(has: {', '.join(s.label for s in runs[0].segments)})")
    seg = max(segs, key=lambda s: s.steps)
    mem = step_memory(sizes, weight_shapes(wl), seg, storage=config.storage, optimizer=optimizer,
                      checkpoint=config.checkpoint) if seg.train else None
    opts = StepOptions(storage=config.storage, optimizer=optimizer, checkpoint=config.checkpoint,
                       input_grad=config.input_grad)
    step = _build(wl, seg, opts, sizes, weight_shapes(wl), mem)
    from sparsesim.run import results

    per_op = cost_table(Prepared(step.sparse.workload, {seg.label: step.sparse}), [resolve_device(device)],
                        runtime=config.runtime, kernel=config.kernel)
    df = results.frame(per_op, results.PER_OP_COLUMNS)
    df.insert(df.columns.get_loc("kind"), "pass", list(step.passes))
    df.insert(df.columns.get_loc("flops") + 1, "theoretical_flops", list(step.theoretical_flops))
    return df
