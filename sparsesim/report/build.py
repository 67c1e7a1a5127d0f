"""Collect everything a hardware comparison report shows, as plain frames and records.

Stages (each optional past the first): compare workloads x devices x plans (per-op and summary
frames), serving curves from the simulator, search fronts read from a search's output
directory, and a validation table (a `validate --json` file, or a quick validation run).
Nothing here draws or writes; `render` turns a `ReportData` into files.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sparsesim.hw.devices import Device
from sparsesim.report.inputs import (
    ReportError,
    SearchResult,
    ValidationResult,
    read_search_dir,
    read_validation,
    run_quick_validation,
)
from sparsesim.run import DEFAULT_PLANS as STANDARD_PLANS

__all__ = ["DEFAULT_WORKLOADS", "STANDARD_PLANS", "ReportData", "ReportError", "collect", "resolve_devices"]


# The main job: the three model families people ask about, Llama in both inference phases.
DEFAULT_WORKLOADS = (
    "resnet50",
    "bert-base",
    "llama2-7b:phase=prefill,batch=1,seq=512",
    "llama2-7b:phase=decode,batch=1,kv=2048",
)


# The training section: dense against one method of each kind, at RigL's headline setting
# (90% sparsity, ERK), for every workload whose recipe has a [train] table.
TRAINING_METHODS = ("dense", "gmp", "static", "rigl", "2:4")
TRAINING_SPARSITY = 0.9
TRAINING_DISTRIBUTION = "erk"


# Offered load as a fraction of the dense plan's single-stream capacity (1 / latency): a curve
# from light load to just below saturation, where queueing makes p99 climb.
SERVING_LOADS = (0.2, 0.5, 0.7, 0.85, 0.95)


SERVING_REQUESTS = 400


@dataclass
class ReportData:
    workloads: list[str]
    devices: list[Device]
    plans: list[str]
    per_op: pd.DataFrame
    summary: pd.DataFrame
    serving: pd.DataFrame | None = None
    searches: list[SearchResult] = field(default_factory=list)
    validation: ValidationResult | None = None
    command: str = ""
    created: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    dtypes: dict[str, set[str]] = field(default_factory=dict)  # matmul dtypes per workload (roofline roofs)
    op_bytes: dict[str, dict[int, float]] = field(default_factory=dict)  # traced operand bytes per op index
    training: pd.DataFrame | None = None  # `sparsesim.train` summary rows of the workloads with a [train] table

    @property
    def device_names(self) -> list[str]:
        return [d.name for d in self.devices]


def resolve_devices(names: Sequence[str] | None) -> list[Device]:
    """Device names or files; every built-in device when none are given."""
    from sparsesim.run.estimate import resolve_devices as resolve

    devs = resolve(list(names) if names else None)
    if not devs:
        raise ReportError("no device files found: accelerators/ is empty and no --devices were given")
    return devs


def collect(workloads: Sequence[Any], devices: Sequence[Device], plans: Sequence[str], *,
            serving: bool = False, training: bool = False, search_dirs: Sequence[str | Path] = (),
            validation: str | Path | None = None, run_validation: bool = False,
            progress: Callable[[int], Any] | None = None, stage: Callable[[str], Any] | None = None,
            command: str = "", deploy: Mapping[str, str] | None = None, dask_scheduler: str = "") -> ReportData:
    """Run the comparison (and the optional stages) and return everything the report shows.
    `deploy` holds the runtime/kernel/dtype keyword arguments of `run.estimate.compare_tables`;
    `dask_scheduler` costs each (workload, device) cell of the comparison on that Dask cluster."""
    # read the given result files first: a bad path fails before minutes of work, not after
    searches = [r for d in search_dirs for r in read_search_dir(Path(d))]
    given_validation = read_validation(Path(validation)) if validation is not None else None
    timings: dict[str, float] = {}
    dtypes: dict[str, set[str]] = {}
    op_bytes: dict[str, dict[int, float]] = {}
    per_op_frames, summary_frames = [], []
    t0 = time.perf_counter()
    swept = None
    if dask_scheduler:  # every (workload, device) cell on the cluster at once
        from sparsesim.run.estimate import compare_many

        if stage is not None:
            stage("compare on the cluster")
        swept = compare_many(list(workloads), list(devices), list(plans), **dict(deploy or {}),
                             dask_scheduler=dask_scheduler)
    for i, spec in enumerate(workloads):
        if stage is not None:
            stage(f"compare {workload_label(spec)}")
        label = workload_label(spec)
        dtypes[label], op_bytes[label] = workload_facts(spec)
        if swept is not None:
            per_op, summary = swept[i].per_op, swept[i].summary
            if progress is not None:
                progress(len(devices) * len(plans))
        else:
            per_op, summary = compare_frames(spec, devices, plans, progress=progress, deploy=deploy)
        per_op_frames.append(per_op.assign(workload=label))
        summary_frames.append(summary.assign(workload=label))
        timings[f"compare {label}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
    per_op = pd.concat(per_op_frames, ignore_index=True)
    summary = mark_best(pd.concat(summary_frames, ignore_index=True))
    data = ReportData([workload_label(w) for w in workloads], list(devices), list(plans), per_op, summary,
                      command=command, created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                      timings=timings, dtypes=dtypes, op_bytes=op_bytes)
    if serving:
        if stage is not None:
            stage("serving curves")
        t0 = time.perf_counter()
        data.serving = serving_frame(per_op, summary, progress=progress)
        timings["serving"] = time.perf_counter() - t0
    if training:
        t0 = time.perf_counter()
        data.training = training_frame(workloads, devices, stage=stage)
        timings["training"] = time.perf_counter() - t0
    data.searches = searches
    if given_validation is not None:
        data.validation = given_validation
    elif run_validation:
        if stage is not None:
            stage("validate (quick)")
        t0 = time.perf_counter()
        data.validation = run_quick_validation()
        timings["validation"] = time.perf_counter() - t0
    return data


def frame_part(df: pd.DataFrame | None) -> tuple[Any, ...] | None:
    """A result frame as a cache-key part: its column names and a hash per row (text cells by
    their text), so a cached value computed from the frame misses when any cell changes."""
    if df is None:
        return None
    text = {c: df[c].astype(str) for c in df.columns if df[c].dtype == object}
    d = df.assign(**text) if text else df
    return tuple(map(str, d.columns)), pd.util.hash_pandas_object(d, index=False).to_numpy()


def workload_facts(spec: Any) -> tuple[set[str], dict[int, float]]:
    """The matmul dtypes (roofline roofs) and traced operand bytes per op index of a workload;
    for a spec string kept in the disk cache by its sources, so a warm report traces nothing."""
    from sparsesim.core import diskcache
    from sparsesim.run.estimate import resolve_workload
    from sparsesim.tracing.specs import spec_key

    def facts() -> tuple[set[str], dict[int, float]]:
        wl = resolve_workload(spec)
        return {op.dtype for op in wl.ops if op.is_matmul}, {op.index: float(op.bytes_moved) for op in wl.ops}

    return diskcache.remembered("facts", spec_key("facts", spec), facts, lambda v: isinstance(v, tuple) and len(v) == 2)


def training_workloads(workloads: Sequence[Any]) -> list[Any]:
    """The workloads whose recipe says how they are trained (a [train] table)."""
    from sparsesim.train.run import recipe_training

    return [w for w in workloads if recipe_training(w)]


def training_frame(workloads: Sequence[Any], devices: Sequence[Device],
                   stage: Callable[[str], Any] | None = None) -> pd.DataFrame | None:
    """Whole-run training cost of TRAINING_METHODS for each workload with a [train] table."""
    from sparsesim.core import diskcache
    from sparsesim.tracing.specs import spec_key
    from sparsesim.train import train

    frames = []
    for spec in training_workloads(workloads):
        if stage is not None:
            stage(f"training {workload_label(spec)}")
        key = spec_key("training", spec, tuple(d.key for d in devices), TRAINING_METHODS, TRAINING_SPARSITY,
                       TRAINING_DISTRIBUTION)
        run = functools.partial(train, spec, TRAINING_METHODS, [TRAINING_SPARSITY], [TRAINING_DISTRIBUTION],
                                list(devices))
        df = diskcache.remembered("training", key, run, lambda v: isinstance(v, pd.DataFrame))
        frames.append(df.assign(workload=workload_label(spec)))
    return pd.concat(frames, ignore_index=True) if frames else None


def workload_label(spec: Any) -> str:
    """How a workload is named in the report: its spec string as given, or a Workload's name."""
    return spec.strip() if isinstance(spec, str) else str(getattr(spec, "name", spec))


def compare_frames(workload: Any, devices: Sequence[Device], plans: Sequence[str],
                   progress: Callable[[int], Any] | None = None,
                   deploy: Mapping[str, str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-op and per-(device, plan) frames for one workload, from one pass of the estimate module."""
    from sparsesim.run.estimate import compare_tables

    tables = compare_tables(workload, list(devices), list(plans), **dict(deploy or {}))
    if progress is not None:
        progress(len(devices) * len(plans))
    return tables.per_op, tables.summary


def mark_best(summary: pd.DataFrame) -> pd.DataFrame:
    """Add `best`: the plan with the highest speedup over dense per (workload, device)."""
    s = summary.copy()
    s["best"] = False
    for _, g in s.groupby(["workload", "device"], sort=False):
        ok = g["speedup_vs_dense"].astype(float)
        if ok.notna().any():
            s.loc[ok.idxmax(), "best"] = True
    return s


def summary_records(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """The summary numbers as plain JSON records (what `--json` prints and the tables show)."""
    cols = ["workload", "device", "family", "plan", "latency_s", "speedup_vs_dense", "energy_j",
            "energy_vs_dense", "memory_bytes", "fallback_ops", "bound", "best", "why"]
    recs = []
    for r in summary[[c for c in cols if c in summary.columns]].to_dict("records"):
        recs.append({k: _plain(v) for k, v in r.items()})
    return recs


def frame_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in r.items()} for r in df.to_dict("records")]


def _plain(v: Any) -> Any:
    """Plain JSON: numpy scalars unwrapped, NaN/inf as None."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def serving_frame(per_op: pd.DataFrame, summary: pd.DataFrame, progress: Callable[[int], Any] | None = None,
                  loads: Iterable[float] = SERVING_LOADS, requests: int = SERVING_REQUESTS) -> pd.DataFrame:
    """Latency against offered load per (workload, device), for dense and the device's best plan.

    One simulated inference per plan gives the service time; Poisson arrivals at each rate then
    queue in front of it. Rates are fractions of each plan's saturation rate, so both curves run
    from light load to just below the point where the slower plan's queue grows without bound.
    The simulations are seeded, so the frame is a function of its inputs: kept in the disk cache
    under their contents.
    """
    from sparsesim.core import diskcache

    loads = tuple(loads)
    key = diskcache.key("serving", frame_part(per_op), frame_part(summary), loads, requests) \
        if diskcache.enabled() else None
    groups = summary.groupby(["workload", "device"], sort=False).ngroups
    done: list[int] = []

    def step(n: int) -> None:
        done.append(n)
        if progress is not None:
            progress(n)

    frame = diskcache.remembered("serving", key, lambda: _serving_frame(per_op, summary, step, loads, requests),
                                 lambda v: isinstance(v, pd.DataFrame))
    if progress is not None and not done:
        progress(2 * groups)  # read back: every curve is done
    return frame


def _serving_frame(per_op: pd.DataFrame, summary: pd.DataFrame, progress: Callable[[int], Any] | None,
                   loads: tuple[float, ...], requests: int) -> pd.DataFrame:
    from sparsesim.run.simulate import serve, simulate_frame

    rows = []
    for (wl, dev), s in summary.groupby(["workload", "device"], sort=False):
        plans = ["dense"]
        best = s[s["best"].astype(bool)]
        if len(best) and best["plan"].iloc[0] != "dense":
            plans.append(str(best["plan"].iloc[0]))
        service = {}
        for plan in plans:
            ops = per_op[(per_op["workload"] == wl) & (per_op["device"] == dev) & (per_op["plan"] == plan)]
            if len(ops):
                service[plan] = simulate_frame(ops, stream=1).latency_s
        if progress is not None:  # two steps per device: a curve not drawn (best is dense) is done too
            progress(2 - len(service))
        if not service or min(service.values()) <= 0:
            continue
        rates = sorted({f / t for f in loads for t in service.values()})
        for plan, t in service.items():
            for qps in rates:
                if qps * t >= max(loads):
                    continue  # at saturation the queue (and p99) grows with the number of requests
                st = serve(t, qps, requests, seed=0)
                rows.append({"workload": wl, "device": dev, "plan": plan, "qps": qps, "load": qps * t,
                             "service_s": t, "p50_s": st.p50_s, "p99_s": st.p99_s,
                             "throughput_qps": st.throughput_rps, "saturation_qps": st.saturation_rps})
            if progress is not None:
                progress(1)
    return pd.DataFrame(rows, columns=["workload", "device", "plan", "qps", "load", "service_s", "p50_s", "p99_s",
                                       "throughput_qps", "saturation_qps"])
