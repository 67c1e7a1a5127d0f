"""Run a multi-objective Optuna study with the real evaluate to exactly N trials: in this process,
in local worker processes, or on a Dask cluster (`dask_workers`). The study itself, its storage
and one worker's loop are in `study`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
from typing import Any, Callable, Mapping, Sequence

from sparsesim.core.errors import SearchError
from sparsesim.search.study import (
    OBJECTIVES,
    StudyConfig,
    TrialProblem,
    _quiet_interrupts,
    counts,
    journal_path_of,
    open_storage,
    open_study,
    run_worker,
)

__all__ = ["OBJECTIVES", "StudyConfig", "TrialProblem", "_quiet_interrupts", "completed", "counts",
           "journal_path_of", "open_storage", "open_study", "optimize", "pareto", "run_worker"]


def _process_main(blob: bytes, cfg: StudyConfig, worker: int, errors, parent: int) -> None:
    """Entry of a spawned worker process."""
    import torch

    torch.set_num_threads(1)  # N workers on N cores: one thread each
    problem = pickle.loads(blob)
    try:
        run_worker(problem, cfg, worker=worker, parent=parent)
    except SearchError as e:
        errors.put(str(e))
        raise SystemExit(2)
    except KeyboardInterrupt:  # Ctrl-C reaches every worker: the driver reports it, once
        raise SystemExit(130) from None


# ---------------------------------------------------------------- the driver

def optimize(problem: TrialProblem, cfg: StudyConfig, *, workers: int = 1, dask_scheduler: str | None = None,
             enqueue: Sequence[Mapping[str, str]] = (), progress: Callable[[int], None] | None = None):
    """Run (or resume) the study to exactly cfg.n_trials COMPLETE trials; returns the study.

    `enqueue` seeds a fresh study with known plans (DP optimum, uniform baselines) as its first
    trials; on a resumed study it is ignored.
    """
    if cfg.n_trials < 1:
        raise SearchError(f"--trials must be >= 1, got {cfg.n_trials}")
    if workers < 1:
        raise SearchError(f"--workers must be >= 1, got {workers}")
    study = open_study(cfg)
    if not study.get_trials(deepcopy=False):
        for params in list(enqueue)[: cfg.n_trials]:
            study.enqueue_trial(dict(params), skip_if_exists=True)
    if dask_scheduler:
        from sparsesim.search.dask_workers import run_on_dask

        run_on_dask(problem, cfg, dask_scheduler, workers)
    elif workers == 1:
        run_worker(problem, cfg, worker=0, on_trial=progress)
    else:
        _run_local(problem, cfg, workers, progress)
    study = open_study(cfg)
    c = counts(study)
    if c["COMPLETE"] < cfg.n_trials:
        raise SearchError(f"study {cfg.study_name}: only {c['COMPLETE']} of {cfg.n_trials} trials completed")
    return study


def _run_local(problem: TrialProblem, cfg: StudyConfig, workers: int, progress) -> None:
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    blob = pickle.dumps(problem)
    procs = [ctx.Process(target=_process_main, args=(blob, cfg, w, errors, os.getpid()),
                         daemon=True) for w in range(1, workers)]
    for p in procs:
        p.start()
    try:
        run_worker(problem, cfg, worker=0, on_trial=progress)
    finally:
        for p in procs:
            p.join()
    if not errors.empty():
        raise SearchError(errors.get())
    if any(p.exitcode not in (0, None) for p in procs):
        raise SearchError(f"a search worker exited with code {[p.exitcode for p in procs]}")


# ---------------------------------------------------------------- results

def completed(study) -> list[dict[str, Any]]:
    """The COMPLETE trials as plain records (number, params, objectives, extra user attrs)."""
    from optuna.trial import TrialState

    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        rec = {"number": t.number, "choice": dict(t.params)}
        rec.update(dict(zip(OBJECTIVES, t.values)))
        rec.update({k: v for k, v in t.user_attrs.items() if k not in ("owner", "retry_of")})
        out.append(rec)
    return out


def pareto(records: Sequence[Mapping[str, Any]], keys: Sequence[str] = OBJECTIVES) -> list[Mapping[str, Any]]:
    """Non-dominated records over `keys` (accuracy maximised, costs minimised), fastest first."""
    sign = {k: (-1.0 if k == "accuracy" else 1.0) for k in keys}

    def dominates(a, b) -> bool:
        le = all(sign[k] * a[k] <= sign[k] * b[k] for k in keys)
        return le and any(sign[k] * a[k] < sign[k] * b[k] for k in keys)

    front = [r for r in records if not any(dominates(o, r) for o in records if o is not r)]
    return sorted(front, key=lambda r: (r.get("latency_s", 0.0), -r.get("accuracy", 0.0)))
