"""The search pipeline, as small stages in one direction:

trace -> space (patterns the device exploits) -> per-unit cost and sensitivity tables -> DP at the
budget (candidates re-costed as whole plans and evaluated for real) and/or Optuna with the real
evaluate -> uniform baselines in the same run -> Pareto front -> the chosen plan saved with its
masks (plans.save_plan) and the sparsified model's state_dict (torch.save).

A budget is "modeled latency <= dense / target_speedup" or "real accuracy >= dense - max drop"
(then the fastest plan that keeps it). The chosen plan is the most accurate evaluated plan within
the budget, wherever it came from (DP, Optuna or a uniform plan), and `uniform_accuracy` is the
best uniform plan within the same budget.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparsesim.core.errors import SearchError, SparsesimError
from sparsesim.search import dp
from sparsesim.search.accuracy import chain, recalibrate_bn
from sparsesim.search.baselines import best_within, uniform_choices
from sparsesim.search.problem import SIGNALS, SearchProblem
from sparsesim.search.task import SearchTask

ALGORITHMS = ("dp", "optuna", "both")
DEFAULT_TARGET_SPEEDUP = 2.0
# DP plans near the budget evaluated for real: the additive tables are exact for latency only
# up to channel-group interactions, and the cheap signal only ranks plans approximately.
DP_CANDIDATES = 6
DP_TIGHTEN = (1.0, 0.97, 0.93, 0.88, 0.8, 0.7, 0.6, 0.5)  # table-budget scales tried in turn
DEFAULT_TRIALS = 40  # Optuna trials when --algorithm optuna/both and --trials is not given


@dataclass
class SearchConfig:
    workload: str
    device: str
    target_speedup: float | None = None
    max_accuracy_drop: float | None = None
    algorithm: str = "dp"
    trials: int | None = None
    workers: int = 1
    storage: str | None = None
    seed: int = 0
    out: str = "search-out"
    signal: str = "fidelity"
    sampler: str = "nsga2"
    dask_scheduler: str | None = None
    evaluate: str | None = None  # module:function overriding the workload's own evaluate
    study_name: str | None = None
    bn_recalibrate: bool = False  # recovery: recompute BatchNorm statistics on the calibration batch
    finetune: str | None = None  # recovery: module:function(model) run after the masks go in
    runtime: str = ""  # eager, compiled or engine ("" = the device file's default)
    kernel: str = ""  # a kernel library forced for the ops it serves ("" = the runtime picks)
    dtype: str = ""  # deploy the model at this dtype for its cost ("" = as traced)


def _no_step(n: int = 1) -> None:
    """`Progress.step` when nothing shows progress."""


@dataclass
class Progress:
    """Stage-wise progress: the CLI passes a tqdm-backed callable; tests pass nothing."""

    start: Callable[[str, int], None] = lambda stage, total: None
    step: Callable[[int], None] = _no_step
    set: Callable[[int], None] = lambda n: None


def _import(ref: str, what: str) -> Any:
    mod, _, attr = ref.partition(":")
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise SearchError(f"{what} {ref!r}: cannot import ({e})") from None


def search_task_for(workload_spec: str, model: torch.nn.Module, *, seed: int, evaluate: str | None) -> SearchTask:
    """The workload's SearchTask: from `search_task` next to its recipe's builder, with
    `evaluate` (module:function) overriding its evaluate; a user model needs `evaluate`."""
    task = None
    head = workload_spec.partition(":")[0]
    builder = None
    try:
        from sparsesim.tracing.specs import builtin_recipe_files
        from sparsesim.tracing.workloads import read_recipe

        files = builtin_recipe_files()
        if head in files:
            builder = read_recipe(files[head], head).builder
        elif head.endswith(".toml"):
            builder = read_recipe(Path(head)).builder
    except SparsesimError:
        builder = None
    if builder is not None:
        from sparsesim.search.tasks import task_for_builder

        fn = task_for_builder(builder)
        if fn is not None:
            task = fn(model, seed=seed)
    if evaluate is not None:
        ev = _import(evaluate, "--evaluate")
        task = SearchTask(evaluate=ev, metric=evaluate) if task is None else \
            SearchTask(ev, evaluate, task.fidelity, task.groups, task.calibration, task.recovery)
    if task is None:
        raise SearchError(f"workload {workload_spec!r} has no accuracy signal: pass --evaluate module:function "
                          "(a function model -> float, higher is better)")
    return task


def build_problem(cfg: SearchConfig) -> SearchProblem:
    from sparsesim.hw.devices import load_device
    from sparsesim.tracing.workloads import load_workload

    try:
        device = load_device(cfg.device)
    except SparsesimError as e:
        raise SearchError(f"--device {cfg.device}: {e}") from None
    wl = load_workload(cfg.workload)
    task = search_task_for(cfg.workload, wl.model, seed=cfg.seed, evaluate=cfg.evaluate)
    if cfg.dtype:
        from sparsesim.tracing.retype import retype

        # the cost is the deployment's; accuracy is measured on the model as loaded (masks only)
        wl = retype(wl, cfg.dtype)
    bn = None
    if cfg.bn_recalibrate:
        if task.calibration is None:
            raise SearchError(f"workload {cfg.workload!r}: --bn-recalibrate needs a calibration batch")
        bn = recalibrate_bn(task.calibration)
    tune = _import(cfg.finetune, "--finetune") if cfg.finetune else None
    return SearchProblem(wl, device, evaluate=task.evaluate, fidelity=task.fidelity, groups=task.groups,
                         recovery=chain(task.recovery, bn, tune), calibration=task.calibration,
                         runtime=cfg.runtime, kernel=cfg.kernel)


def _record(problem: SearchProblem, choice: Mapping[str, str], source: str, accuracy: float | None = None
            ) -> dict[str, Any]:
    c = problem.cost(choice)
    acc = problem.accuracy(choice) if accuracy is None else accuracy
    return {"source": source, "accuracy": acc, "latency_s": c.latency_s, "energy_j": c.energy_j,
            "memory_bytes": c.memory_bytes, "speedup_vs_dense": problem.dense_cost.latency_s / c.latency_s,
            "fallback_ops": c.fallback_ops, "choice": dict(choice)}


def _study_name(cfg: SearchConfig, problem: SearchProblem) -> str:
    """Stable across resumes; changes when the space changes (a resumed study must share it)."""
    h = hashlib.sha256(json.dumps(problem.units).encode()).hexdigest()[:10]
    deploy = "".join(f":{v}" for v in (cfg.runtime, cfg.kernel) if v)  # the dtype is in the workload's name
    return cfg.study_name or f"{problem.name}@{problem.device.name}{deploy}:seed{cfg.seed}:{cfg.signal}:{h}"


def _check(cfg: SearchConfig) -> None:
    if cfg.algorithm not in ALGORITHMS:
        raise SearchError(f"--algorithm {cfg.algorithm}: expected one of {', '.join(ALGORITHMS)}")
    if cfg.signal not in SIGNALS:
        raise SearchError(f"--signal {cfg.signal}: expected one of {', '.join(SIGNALS)}")
    if cfg.target_speedup is not None and cfg.max_accuracy_drop is not None:
        raise SearchError("give --target-speedup or --max-accuracy-drop, not both")
    if cfg.target_speedup is not None and not (cfg.target_speedup > 0 and math.isfinite(cfg.target_speedup)):
        raise SearchError(f"--target-speedup must be a number > 0, got {cfg.target_speedup}")
    if cfg.max_accuracy_drop is not None and not (cfg.max_accuracy_drop >= 0):
        raise SearchError(f"--max-accuracy-drop must be >= 0, got {cfg.max_accuracy_drop}")
    if cfg.trials is not None and cfg.trials < 0:
        raise SearchError(f"--trials must be >= 0, got {cfg.trials}")


def _make_out(path: str) -> Path:
    """The output directory, created; SearchError naming it when it cannot be."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SearchError(f"--out {path}: cannot create the output directory ({e.strerror or e})") from None
    return out


def dp_candidates(problem: SearchProblem, tables, fixed: float, budget: float, *, k: int = DP_CANDIDATES
                  ) -> list[dict[str, str]]:
    """Up to k DP-optimal plans (of the additive tables) whose whole-plan modeled latency meets the
    budget, least table sensitivity first."""
    out: list[dict[str, str]] = []
    # channel groups sharing an op make latency sub-additive; when no table-optimal plan meets the
    # budget as a whole plan, tighten the table budget and try again
    for scale in DP_TIGHTEN:
        if budget * scale - fixed < 0:  # the additive tables cannot reach it (whole plans may)
            break
        curve = dp.tradeoff(tables, budget * scale - fixed)
        for point in reversed(curve):  # least sensitivity first
            choice = point.labels(tables)
            if problem.cost(choice).latency_s <= budget * (1 + 1e-9) and choice not in out:
                out.append(choice)
                if len(out) >= k:
                    return out
        if out:
            break
    return out


def run_search(cfg: SearchConfig, progress: Progress | None = None, problem: SearchProblem | None = None,
               sensitivity_cache: dict | None = None) -> dict[str, Any]:
    """Run the pipeline (module doc) and return the result document (plain JSON types).

    `problem` reuses an already built problem; `sensitivity_cache` shares per-unit sensitivity
    between runs on the same model and calibration data (e.g. one workload on several devices)."""
    _check(cfg)
    pg = progress or Progress()
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    out = _make_out(cfg.out)  # before the (slow) problem, so an unwritable --out fails at once
    if cfg.algorithm != "dp" and (cfg.trials is None or cfg.trials > 0):
        from sparsesim.core.extras import require
        from sparsesim.search.optuna_search import open_storage

        for mod in ("optuna", "psutil"):
            require(mod, "search", f"search --algorithm {cfg.algorithm}")

        open_storage(cfg.storage or str(out / "study.journal"))  # a bad --storage fails at once too
    problem = problem or build_problem(cfg)
    dense = _record(problem, problem.space.dense_choice(), "dense", accuracy=problem.dense_accuracy)

    budget, acc_floor = _budget(cfg, problem)
    if budget is not None:
        _check_reachable(problem, budget)

    # uniform baselines, same run
    uni = uniform_choices(problem.space)
    pg.start("uniform baselines", len(uni))
    uniform = []
    for label, choice in uni.items():
        r = _record(problem, choice, f"uniform {label}")
        r["plan"] = label
        uniform.append(r)
        pg.step(1)

    records: list[dict[str, Any]] = [dense] + uniform
    if budget is not None:
        records.append(_record(problem, fastest_choice(problem), "fastest"))
    if cfg.algorithm in ("dp", "both"):
        n = sum(len(u.choices) for u in problem.space.units)
        pg.start(f"sensitivity ({cfg.signal})", n)
        tables, fixed = problem.tables(cfg.signal, progress=lambda: pg.step(1), cache=sensitivity_cache)
        if budget is not None:
            cands = dp_candidates(problem, tables, fixed, budget)
        else:
            cands = _dp_for_accuracy(problem, tables, fixed, _floor(acc_floor), pg)
        pg.start("DP plans", len(cands))
        for ch in cands:
            records.append(_record(problem, ch, "dp"))
            pg.step(1)

    study_info = None
    if cfg.algorithm in ("optuna", "both"):
        study_info, trials = _optuna(cfg, problem, records, pg)
        records += trials

    records = _dedupe(records)
    if budget is None:  # accuracy target: the fastest plan that keeps the accuracy
        floor = _floor(acc_floor)
        ok = [r for r in records if r["accuracy"] >= floor - 1e-12]
        budget = min(r["latency_s"] for r in ok)  # dense always qualifies
    chosen = best_within(records, budget)
    if chosen is None:
        fastest = min(records, key=lambda r: r["latency_s"])
        raise SearchError(
            f"impossible target: no evaluated plan models within {budget:.4g} s on {problem.device.name}; "
            f"the fastest reached {fastest['speedup_vs_dense']:.2f}x of dense")
    best_uni = best_within(uniform, budget)
    from sparsesim.search.optuna_search import pareto

    front = pareto(records)
    saved = save_outputs(problem, chosen, out)
    check = compare_check(problem, saved["plan"], chosen["speedup_vs_dense"])
    doc = {
        "workload": problem.name, "device": problem.device.name, "runtime": problem.runtime,
        "kernel": problem.kernel, "dtype": cfg.dtype, "algorithm": cfg.algorithm,
        "signal": cfg.signal, "seed": cfg.seed,
        "target": {"speedup": cfg.target_speedup, "max_accuracy_drop": cfg.max_accuracy_drop,
                   "latency_budget_s": budget},
        "dense": _public(dense),
        "accuracy": chosen["accuracy"], "latency_s": chosen["latency_s"],
        "speedup_vs_dense": chosen["speedup_vs_dense"], "energy_j": chosen["energy_j"],
        "memory_bytes": chosen["memory_bytes"], "chosen_source": chosen["source"],
        "uniform_accuracy": None if best_uni is None else best_uni["accuracy"],
        "uniform_plan": None if best_uni is None else best_uni["plan"],
        "uniform_latency_s": None if best_uni is None else best_uni["latency_s"],
        "chosen": {"choice": chosen["choice"], "patterns": {w: p.label for w, p in
                                                            problem.patterns(chosen["choice"]).items()}},
        "front": [dict(_public(r), choice=r["choice"]) for r in front],
        "uniform": [_public(r) for r in uniform],
        "evaluated": len(records),
        "study": study_info,
        "dropped": [list(d) for d in problem.space.dropped],
        "files": saved,
        "check": check,
        "manifest": manifest(out, saved),
        "wall_s": time.perf_counter() - t0,
    }
    write_result(out, doc)
    return doc


def write_result(out: Path, doc: dict[str, Any]) -> None:
    """search.json, atomically and last: it lists the files it belongs to with their hashes
    (`manifest`), so a reader tells a whole result from one a kill or a full disk cut short."""
    from sparsesim.core import atomic

    try:
        atomic.write_text(out / "search.json", json.dumps(doc, indent=1, default=float))
    except OSError as e:
        raise SearchError(f"{out / 'search.json'}: cannot write the result ({e.strerror or e}); the study's "
                          "completed trials are kept: free space and rerun the same command") from None


def _dedupe(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per distinct plan; a plan found by several routes lists them all."""
    seen: dict[str, dict[str, Any]] = {}
    for r in records:
        key = json.dumps(r["choice"], sort_keys=True)
        if key in seen:
            if r["source"] not in seen[key]["source"].split(" = "):
                seen[key]["source"] += " = " + r["source"]
        else:
            seen[key] = dict(r)
    return list(seen.values())


def _public(r: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k != "choice"}


def fastest_choice(problem: SearchProblem) -> dict[str, str]:
    """Every unit at the choice that alone saves the most modeled latency."""
    dense = problem.space.dense_choice()
    return {u.name: min(u.choices, key=lambda c: problem.cost(dict(dense, **{u.name: c.label})).latency_s).label
            for u in problem.space.units}


def _check_reachable(problem: SearchProblem, budget: float) -> None:
    fastest = problem.cost(fastest_choice(problem)).latency_s
    if fastest > budget * (1 + 1e-9):
        dense = problem.dense_cost.latency_s
        raise SearchError(
            f"impossible target: {dense / budget:.3g}x on {problem.device.name} needs <= {budget:.4g} s, but the "
            f"fastest plan in the space models {fastest:.4g} s ({dense / fastest:.2f}x of dense)")


def _budget(cfg: SearchConfig, problem: SearchProblem) -> tuple[float | None, float | None]:
    if cfg.max_accuracy_drop is not None:
        return None, problem.dense_accuracy - cfg.max_accuracy_drop
    speedup = cfg.target_speedup if cfg.target_speedup is not None else DEFAULT_TARGET_SPEEDUP
    return problem.dense_cost.latency_s / speedup, None


def _floor(acc_floor: float | None) -> float:
    """The accuracy floor of a search with no latency budget (`_budget` gives one or the other)."""
    if acc_floor is None:
        raise SearchError("internal error: a search with neither a latency budget nor an accuracy floor")
    return acc_floor


def _dp_for_accuracy(problem: SearchProblem, tables, fixed: float, floor: float, pg: Progress
                     ) -> list[dict[str, str]]:
    """Fastest DP plan whose real accuracy stays >= floor: bisect the DP trade-off curve (accuracy
    falls as the budget shrinks, nearly monotonically) with real evaluations."""
    top = problem.dense_cost.latency_s
    curve = dp.tradeoff(tables, max(top - fixed, 0.0))
    plans = [p.labels(tables) for p in curve]  # fastest first
    lo, hi = 0, len(plans) - 1
    good = [plans[-1]]
    pg.start("DP bisection", max(1, math.ceil(math.log2(len(plans) + 1))))
    while lo <= hi:
        mid = (lo + hi) // 2
        acc = problem.accuracy(plans[mid])
        pg.step(1)
        if acc >= floor:
            good.append(plans[mid])
            hi = mid - 1
        else:
            lo = mid + 1
    return good


def _optuna(cfg: SearchConfig, problem: SearchProblem, seeds: list[dict[str, Any]], pg: Progress):
    from sparsesim.search import optuna_search as osr

    n = DEFAULT_TRIALS if cfg.trials is None else cfg.trials
    storage = cfg.storage or str(Path(cfg.out) / "study.journal")
    scfg = osr.StudyConfig(storage=storage, study_name=_study_name(cfg, problem), n_trials=n, seed=cfg.seed,
                           sampler=cfg.sampler)
    if n == 0:
        return {"storage": storage, "study_name": scfg.study_name, "complete": 0}, []
    # seed a fresh study with the DP plans and the best uniform plans
    ranked = sorted(seeds[1:], key=lambda r: -r["accuracy"])
    enqueue = [r["choice"] for r in ranked if r["source"] == "dp"][:2] + [r["choice"] for r in ranked][:2]
    pg.start("optuna trials", n)
    study = osr.optimize(problem, scfg, workers=cfg.workers, dask_scheduler=cfg.dask_scheduler,
                         enqueue=enqueue, progress=pg.set)
    pg.set(n)
    trials = []
    for t in osr.completed(study):
        trials.append({"source": f"optuna #{t['number']}", "accuracy": t["accuracy"], "latency_s": t["latency_s"],
                       "energy_j": t["energy_j"], "memory_bytes": t["memory_bytes"],
                       "speedup_vs_dense": problem.dense_cost.latency_s / t["latency_s"],
                       "fallback_ops": problem.cost(t["choice"]).fallback_ops, "choice": t["choice"]})
    info = {"storage": storage, "study_name": scfg.study_name, "complete": len(trials),
            "counts": osr.counts(study)}
    return info, trials


# how far the search's speedup may sit from `compare` on the saved plan (both take the one costing
# path, so they agree to rounding; a larger gap means the two paths diverged)
AGREEMENT_TOL = 0.01


def compare_check(problem: SearchProblem, plan_path: str, speedup: float) -> dict[str, Any]:
    """`compare` on the saved plan file, next to the speedup the search reports for it."""
    from sparsesim.run.estimate import compare

    row = compare(problem.workload, problem.device, [plan_path], runtime=problem.runtime,
                  kernel=problem.kernel).iloc[0]
    got = float(row["speedup_vs_dense"])
    return {"compare_speedup": got, "search_speedup": speedup,
            "agrees": abs(got / speedup - 1.0) <= AGREEMENT_TOL}


def save_outputs(problem: SearchProblem, chosen: Mapping[str, Any], out: Path) -> dict[str, str]:
    """plan.safetensors (rules + masks, loadable by plans.load_plan), model.pt (the sparsified
    model's state_dict with the masks applied) and the chosen choice per unit in choice.json."""
    from sparsesim.core import atomic
    from sparsesim.sparsity.plans import save_plan

    choice = chosen["choice"]
    plan = problem.plan(choice)
    masks = dict(plan.masks)
    from sparsesim.search.accuracy import masked

    with masked(problem.model, masks) as m:
        state = {k: v.detach().clone() for k, v in m.state_dict().items()}
    model_path = out / "model.pt"
    try:  # each file atomically (a kill leaves the old one whole); search.json, written last, lists them
        plan_path = save_plan(out / "plan.safetensors", plan, masks)
        with atomic.replacing(model_path) as tmp:
            torch.save(state, tmp)
        atomic.write_text(out / "choice.json", json.dumps(choice, indent=1))
    except OSError as e:
        raise SearchError(f"--out {out}: cannot write the chosen plan ({e.strerror or e}); the study's completed "
                          "trials are kept: free space and rerun the same command") from None
    return {"plan": str(plan_path), "model": str(model_path), "choice": str(out / "choice.json")}


def manifest(out: Path, saved: Mapping[str, str]) -> dict[str, str]:
    """sha256 of each saved file by its name in `out`: readers check a result against it."""
    from sparsesim.core import atomic

    return {Path(p).name: atomic.sha256(p) for p in saved.values()}
