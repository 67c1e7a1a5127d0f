"""`sparsesim search WORKLOAD --device DEV`: per-layer masks that trade real accuracy against modeled cost."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from sparsesim.cli.common import add_deployment_arguments, deployment

if TYPE_CHECKING:
    from tqdm import tqdm

    from sparsesim.core.progress import HiddenBar

NAME = "search"
HELP = "search per-layer sparsity (DP and/or Optuna) for the best real accuracy at a modeled speedup on a device"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workload", help="recipe with an accuracy signal (digits, minilm) or any workload with --evaluate")
    p.add_argument("--device", required=True, help="built-in device name or path to a device .toml")
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--target-speedup", type=float, default=None,
                      help="modeled speedup over dense to reach at the least accuracy loss (default 2)")
    goal.add_argument("--max-accuracy-drop", type=float, default=None,
                      help="largest accuracy drop allowed; the fastest such plan is chosen")
    p.add_argument("--algorithm", choices=("dp", "optuna", "both"), default=None,
                   help="dynamic programming over per-layer tables, Optuna with the real evaluate, or both "
                        "(default: dp, or both when --trials, --workers, --storage or --dask-scheduler is given)")
    p.add_argument("--trials", type=int, default=None, help="Optuna trials (COMPLETE trials in the study; default 40)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes sharing the study")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (postgresql://..., sqlite:///...) or journal file (default OUT/study.journal)")
    p.add_argument("--study-name", default=None, help="Optuna study name (default: workload, device, seed, space hash)")
    p.add_argument("--dask-scheduler", default=None, metavar="ADDRESS",
                   help="run the Optuna trials on an existing Dask cluster (needs the 'cluster' extra)")
    p.add_argument("--sampler", choices=("nsga2", "tpe"), default="nsga2", help="Optuna multi-objective sampler")
    p.add_argument("--signal", choices=("fidelity", "evaluate", "reconstruction"), default="fidelity",
                   help="per-layer sensitivity for the DP (the chosen plan is always evaluated for real)")
    p.add_argument("--evaluate", default=None, metavar="MODULE:FUNCTION",
                   help="evaluate(model) -> float (higher is better) replacing the workload's own")
    p.add_argument("--bn-recalibrate", action="store_true",
                   help="recovery: recompute BatchNorm statistics on the calibration batch after pruning")
    p.add_argument("--finetune", default=None, metavar="MODULE:FUNCTION",
                   help="recovery: finetune(model) run after the masks go in (pruned weights stay zero)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (and the workload's split/seed where it has one)")
    p.add_argument("--out", default="search-out", help="directory for the plan, masks, model and study")
    add_deployment_arguments(p)


def default_algorithm(args: argparse.Namespace) -> str:
    """DP alone unless the user asked for Optuna trials in some way: then DP and Optuna."""
    asked_for_trials = (args.trials is not None or args.workers != 1 or args.storage is not None
                        or args.dask_scheduler is not None)
    return "both" if asked_for_trials else "dp"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sparsesim.search.runner import SearchConfig, run_search

    algorithm = args.algorithm or default_algorithm(args)
    cfg = SearchConfig(
        workload=args.workload, device=args.device, target_speedup=args.target_speedup,
        max_accuracy_drop=args.max_accuracy_drop, algorithm=algorithm, trials=args.trials,
        workers=args.workers, storage=args.storage, seed=args.seed, out=args.out, signal=args.signal,
        sampler=args.sampler, dask_scheduler=args.dask_scheduler, evaluate=args.evaluate,
        study_name=args.study_name, bn_recalibrate=args.bn_recalibrate, finetune=args.finetune,
        **deployment(args),
    )
    bar = _Bar()
    try:
        return run_search(cfg, progress=bar.progress())
    finally:
        bar.close()


class _Bar:
    """One tqdm bar per stage on stderr."""

    def __init__(self) -> None:
        self.bar: tqdm | HiddenBar | None = None

    def progress(self):
        from sparsesim.search.runner import Progress

        return Progress(start=self.start, step=self.step, set=self.set)

    def start(self, stage: str, total: int) -> None:
        from sparsesim.core import progress

        self.close()
        self.bar = progress.bar(stage, total)

    def step(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def set(self, n: int) -> None:
        if self.bar is not None and n > self.bar.n:
            self.bar.update(n - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _check_line(check: dict[str, Any] | None) -> list[str]:
    if not check:
        return []
    verdict = "agrees" if check["agrees"] else "DISAGREES (a bug: please report it)"
    return [f"  compare on the saved plan: {check['compare_speedup']:.2f}x of dense, "
            f"{verdict} with the search's {check['search_speedup']:.2f}x"]


def render(doc: dict[str, Any]) -> str:
    from sparsesim.core.textfmt import fmt_si

    d = doc["dense"]
    lines = [
        f"search {doc['workload']} on {doc['device']}, runtime {doc['runtime']}"
        + (f", kernel {doc['kernel']}" if doc.get("kernel") else "")
        + f" ({doc['algorithm']}, signal {doc['signal']}, seed {doc['seed']})",
        f"  dense:    accuracy {_pct(d['accuracy'])}  latency {fmt_si(d['latency_s'], 's')}",
        f"  chosen:   accuracy {_pct(doc['accuracy'])}  latency {fmt_si(doc['latency_s'], 's')}  "
        f"{doc['speedup_vs_dense']:.2f}x of dense  (from {doc['chosen_source']})",
        f"  uniform:  accuracy {_pct(doc['uniform_accuracy'])}  best uniform plan within the same budget: "
        f"{doc['uniform_plan'] or 'none'}",
        *_check_line(doc.get("check")),
        "",
        "Pareto front (accuracy vs modeled latency / energy / memory):",
        f"  {'source':<26} {'accuracy':>9} {'latency':>10} {'speedup':>8} {'energy':>10} {'memory':>10}",
    ]
    for r in doc["front"]:
        lines.append(f"  {r['source'][:26]:<26} {r['accuracy']:>9.4f} {fmt_si(r['latency_s'], 's'):>10} "
                     f"{r['speedup_vs_dense']:>7.2f}x {fmt_si(r['energy_j'], 'J'):>10} "
                     f"{fmt_si(r['memory_bytes'], 'B'):>10}")
    lines.append("")
    lines.append("chosen plan (per weight):")
    for w, p in doc["chosen"]["patterns"].items():
        lines.append(f"  {w:<50} {p}")
    if doc.get("study"):
        s = doc["study"]
        lines.append(f"study {s['study_name']} in {s['storage']}: {s['complete']} complete trials")
    f = doc["files"]
    lines.append(f"saved: plan {f['plan']}, model {f['model']}")
    return "\n".join(lines)
