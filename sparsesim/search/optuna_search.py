"""Run a multi-objective Optuna study with the real evaluate to exactly N trials: in this process,
in local worker processes, or on a Dask cluster (`dask_workers`). The study itself, its storage
and one worker's loop are in `study`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sparsesim.core.errors import SearchError, SparsesimWarning, interruption
from sparsesim.core.threads import one_thread, usable_cores
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
    storage_errors,
)

__all__ = ["OBJECTIVES", "StudyConfig", "TrialProblem", "_quiet_interrupts", "completed", "counts",
           "journal_path_of", "open_storage", "open_study", "optimize", "pareto", "run_worker"]


# how long after a stop that could not be raised it is delivered again (the hook has returned by then)
STOP_REDELIVERY_S = 0.05


def _process_main(blob: bytes, cfg: StudyConfig, worker: int, errors, parent: int) -> None:
    """Entry of a spawned worker process."""
    # The driver stops workers with SIGTERM (Ctrl-C is ignored here: the driver reports it, once).
    # SystemExit unwinds Optuna's journal lock; the unfinished trial is reclaimed on resume.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sys.unraisablehook = _stop_again_if_unraisable
    import torch

    torch.set_num_threads(1)  # N workers on N cores: one thread each
    problem = pickle.loads(blob)
    try:
        run_worker(problem, cfg, worker=worker, parent=parent)
    except SearchError as e:
        errors.put(str(e))
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as e:
        if interruption(e) is not None:  # the stop cut Optuna's lock release short: exit as stopped, quietly
            raise SystemExit(128 + signal.SIGTERM) from None
        raise


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _stop_again_if_unraisable(unraisable: Any) -> None:
    """A stop that lands where Python cannot raise (a weakref callback of an import lock) would
    print 'Exception ignored' with a traceback and be lost: deliver the signal again a moment
    later, from another thread, so that it lands in ordinary code and unwinds there."""
    if isinstance(unraisable.exc_value, SystemExit):
        import threading

        threading.Timer(STOP_REDELIVERY_S, os.kill, args=(os.getpid(), signal.SIGTERM)).start()
        return
    sys.__unraisablehook__(unraisable)


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
    with storage_errors(cfg.storage):
        _run(problem, cfg, workers, dask_scheduler, enqueue, progress)
    study = open_study(cfg)
    with storage_errors(cfg.storage):
        c = counts(study)
    if c["COMPLETE"] < cfg.n_trials:
        raise SearchError(f"study {cfg.study_name}: only {c['COMPLETE']} of {cfg.n_trials} trials completed")
    return study


def _run(problem: TrialProblem, cfg: StudyConfig, workers: int, dask_scheduler: str | None,
         enqueue: Sequence[Mapping[str, str]], progress: Callable[[int], None] | None) -> None:
    study = open_study(cfg)
    if not study.get_trials(deepcopy=False):
        for params in list(enqueue)[: cfg.n_trials]:
            study.enqueue_trial(dict(params), skip_if_exists=True)
    if dask_scheduler:
        from sparsesim.search.dask_workers import run_on_dask

        run_on_dask(problem, cfg, dask_scheduler, workers)
    elif workers == 1:
        run_worker(problem, cfg, worker=0, on_trial=progress)  # torch's intra-op threads use the cores
    else:
        cores = usable_cores()
        if workers > cores:
            warnings.warn(f"--workers {workers} on {cores} core(s): the workers share the cores, so the search "
                          f"runs no faster than with {cores}", SparsesimWarning, stacklevel=2)
        # the driver is worker 0: one thread, as every spawned worker (N workers share N cores)
        with one_thread():
            _run_local(problem, cfg, workers, progress)


def _run_local(problem: TrialProblem, cfg: StudyConfig, workers: int, progress) -> None:
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    blob = pickle.dumps(problem)
    procs = [ctx.Process(target=_process_main, args=(blob, cfg, w, errors, os.getpid()),
                         daemon=True) for w in range(1, workers)]
    # workers start with Ctrl-C ignored (a spawned Python keeps an ignored SIGINT), so a Ctrl-C is
    # handled once, here, and never prints a traceback from a worker
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for p in procs:
            p.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        run_worker(problem, cfg, worker=0, on_trial=progress)
    except BaseException:
        for p in procs:
            p.terminate()
        raise
    finally:
        for p in procs:
            p.join()
    if not errors.empty():
        raise SearchError(errors.get())
    for i, p in enumerate(procs, start=1):
        # a worker killed mid-trial: its trial was reclaimed and redone by the others (the study
        # completed, or run_worker would not have returned), so say so and go on
        if p.exitcode is not None and p.exitcode < 0:
            warnings.warn(f"search worker {i} (pid {p.pid}) was killed by signal {-p.exitcode}; its unfinished "
                          "trial was redone by the other workers", SparsesimWarning, stacklevel=2)
        elif p.exitcode not in (0, None):
            raise SearchError(f"search worker {i} (pid {p.pid}) exited with code {p.exitcode}")


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
