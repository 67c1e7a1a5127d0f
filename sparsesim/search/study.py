"""The shared Optuna study and one worker's loop: accuracy x latency x energy x memory.

Every trial lives in an Optuna study in storage (a journal file by default, any Optuna storage URL
when given), so a search can be killed at any point and resumed, and several processes (or Dask
workers) can share one study. The contract is "exactly N COMPLETE trials, none evaluated twice
to completion, none lost":

* each worker counts COMPLETE + RUNNING trials in storage and only asks while they are below N;
  a trial that finds N trials ahead of it (a race between workers) is PRUNED unevaluated;
* each trial records its owner (host, pid, process start time); a RUNNING trial whose owner
  process is gone on this host (SIGKILL) is marked FAIL and its parameters are re-enqueued once
  (WAITING), so the killed evaluation is redone, not lost; RDB storages also get Optuna's
  heartbeat so owners on other machines are reclaimed after the grace period;
* a re-enqueued trial carries `retry_of`; a second retry of the same trial is PRUNED.
Limit: with a journal file shared by several machines (Dask), a trial whose owner died on another
machine is reclaimed only by a later run on that machine; use an RDB storage URL there, whose
heartbeat reclaims it from anywhere.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sparsesim.core.errors import SearchError, SparsesimWarning, interruption

OBJECTIVES = ("accuracy", "latency_s", "energy_j", "memory_bytes")
DIRECTIONS = ("maximize", "minimize", "minimize", "minimize")
# Optuna heartbeat for RDB storages: a worker on another machine that stops beating for
# GRACE_S is presumed dead and its trial retried (Optuna's recommended ratio is interval x 2+).
HEARTBEAT_S = 10
GRACE_S = 60
# a RUNNING trial with no owner recorded (killed between ask and the owner write) is stale
# once it is this old; the write follows the ask by milliseconds
UNOWNED_STALE_S = 30.0
# a process's start time as two processes read it (psutil: boot time + ticks) can differ by the
# boot-time rounding; a pid reused within this window by another process is not a real risk
OWNER_CLOCK_S = 1.0
POLL_S = 0.2  # how often a worker waits for others' RUNNING trials to finish
SQLITE_BUSY_S = 60.0  # how long a SQLite writer waits for another process's transaction
SCHEMA_ATTEMPTS = 6  # opening a fresh database that another process is creating at the same moment


class TrialProblem(Protocol):
    """What a search evaluates: named units with choice labels, and a measure of one plan."""

    @property
    def units(self) -> Sequence[tuple[str, tuple[str, ...]]]: ...

    def measure(self, choice: Mapping[str, str]) -> dict[str, float]:
        """Accuracy and modeled costs of a plan given as {unit: label} (keys of OBJECTIVES)."""
        ...


@dataclass(frozen=True)
class StudyConfig:
    """Where a study lives and how it samples; plain data so it crosses process boundaries."""

    storage: str  # an Optuna storage URL, or a journal file path
    study_name: str
    n_trials: int
    seed: int = 0
    sampler: str = "nsga2"  # or "tpe"


def journal_path_of(storage: str) -> Path | None:
    """The journal file a storage spec names, or None for an Optuna URL (sqlite://, postgresql://)."""
    if "://" in storage:
        return None
    return Path(storage.removeprefix("journal:"))


def open_storage(storage: str):
    """An Optuna storage object for a journal file path or a storage URL."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    path = journal_path_of(storage)
    if path is not None:
        from sparsesim.search.journal import repair

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fixed = repair(path)
            if fixed is not None:
                warnings.warn(fixed.message(), SparsesimWarning, stacklevel=2)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as e:
            raise SearchError(f"--storage {storage}: cannot open the journal file ({e.strerror or e})") from None
    if storage.split("://", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql", "oracle", "mssql"):
        import inspect

        # Optuna 4.9 renamed the stale-trial callback; pass whichever this version takes
        params = inspect.signature(RDBStorage).parameters
        cb = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else "failed_trial_callback"
        stale: dict[str, Any] = {cb: _retry_stale}  # the parameter's name depends on the version
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sqlite = storage.startswith("sqlite")
            for attempt in range(SCHEMA_ATTEMPTS):
                try:
                    rdb = RDBStorage(storage, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                     engine_kwargs={"connect_args": {"timeout": SQLITE_BUSY_S}} if sqlite else None,
                                     **stale)
                    if sqlite:
                        _serialise_sqlite(rdb.engine)
                    return rdb
                except Exception as e:
                    if _schema_race(e) and attempt < SCHEMA_ATTEMPTS - 1:
                        time.sleep(POLL_S * (attempt + 1))  # another process is creating the schema
                        continue
                    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise SearchError(f"--storage {storage}: cannot open the database ({first})") from None
    try:
        return optuna.storages.get_storage(storage)
    except Exception as e:  # optuna raises several types for a bad URL
        raise SearchError(f"--storage {storage}: not an Optuna storage URL or journal path ({e})") from e


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextmanager
def storage_errors(storage: str):
    """Turn a failing storage (full disk, damaged database, unreadable journal) into one SearchError
    line naming the file and what it still holds. Optuna may re-raise a storage failure as another
    error (an AssertionError from its own bookkeeping), so the cause chain is searched."""
    try:
        yield
    except SearchError:
        raise
    except Exception as e:
        stop = interruption(e)
        if stop is not None:
            # a stop (SIGTERM's SystemExit, Ctrl-C) that unwound through Optuna's journal lock can
            # leave a follow-on error (the lock it never took cannot be removed): the stop it is
            raise stop from None
        err = _storage_cause(e, storage)
        if err is None:
            raise
        raise err from None


def _storage_cause(exc: BaseException, storage: str) -> SearchError | None:
    import sqlalchemy.exc

    path = journal_path_of(storage)
    where = path if path is not None else storage
    e: BaseException | None = exc
    while e is not None:
        if isinstance(e, OSError):
            if e.errno in _DISK_FULL:
                kept = ""
                if path is not None:
                    from sparsesim.search.journal import complete_trials_in

                    kept = f"; the {complete_trials_in(path)} complete trials recorded in it are kept"
                return SearchError(f"{where}: disk full while writing the study ({e.strerror or e}){kept}: free "
                                   "space and rerun the same command to resume")
            return SearchError(f"{where}: cannot read or write the study ({e.strerror or e})")
        if path is not None and (isinstance(e, json.JSONDecodeError) or str(e) == "Invalid log format."):
            return SearchError(f"{where}: a journal record cannot be read ({e}); rerun to repair it (the "
                               "records before it are kept)")
        if isinstance(e, sqlalchemy.exc.DatabaseError):
            first = (str(e.orig if e.orig is not None else e).strip().splitlines() or [type(e).__name__])[0]
            return SearchError(f"{storage}: the database cannot be read ({first}); its completed trials are "
                               "what `sqlite3 FILE .recover` (or your database's repair tool) salvages")
        e = e.__cause__ or e.__context__
    return None


def _serialise_sqlite(engine) -> None:
    """Make every SQLite transaction BEGIN IMMEDIATE (SQLAlchemy's recipe). SQLite ignores
    SELECT ... FOR UPDATE, so two processes could both pop the same WAITING trial and both run it
    (the second then fails with "Cannot tell a COMPLETE trial"); an immediate transaction makes
    Optuna's read-check-update of a trial's state atomic across processes."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_conn, record) -> None:
        dbapi_conn.isolation_level = None  # let the "begin" hook below issue BEGIN

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made while Optuna created the schema predate the hooks


def _schema_race(e: Exception) -> bool:
    """A CREATE TABLE / version row lost to another process creating the same fresh database."""
    import sqlalchemy.exc

    text = str(e)
    return (isinstance(e, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError))
            and ("already exists" in text or "UNIQUE constraint failed" in text or "database is locked" in text))


def make_sampler(name: str, seed: int, n_trials: int):
    import optuna

    if name == "nsga2":
        # a population a quarter of the budget (8..50) so small budgets still see a few generations
        pop = max(8, min(50, n_trials // 4))
        return optuna.samplers.NSGAIISampler(population_size=pop, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    raise SearchError(f"--sampler {name}: expected nsga2 or tpe")


class _NoInterruptNoise(logging.Filter):
    """Drop Optuna's 'Trial N failed' warnings (with a traceback) for a Ctrl-C: the CLI says
    'interrupted' in one line, and the interrupted trial is redone on resume."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and interruption(record.exc_info[1]) is not None:
            return False
        return "KeyboardInterrupt" not in str(record.msg) and "failed with value None" not in str(record.msg)


def _quiet_interrupts() -> None:
    """Install the filter on Optuna's handlers once per process (workers are separate processes);
    on handlers, since a logger's own filters do not see its children's records."""
    import optuna

    optuna.logging.get_verbosity()  # makes Optuna install its handler if it has not yet
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _NoInterruptNoise) for f in handler.filters):
            handler.addFilter(_NoInterruptNoise())


def open_study(cfg: StudyConfig, *, worker: int = 0):
    """Create or load the study; the sampler seed differs per worker and per resume so proposals
    are not replayed."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _quiet_interrupts()
    storage = open_storage(cfg.storage)
    with storage_errors(cfg.storage):
        study = _create_study(optuna, storage, cfg.study_name)
        done = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(cfg.sampler, cfg.seed * 1000 + worker * 100003 + done, cfg.n_trials)
    return study


def _create_study(optuna, storage, name: str, attempts: int = 5):
    """create_study(load_if_exists), retried when another process creates the same database schema
    or study at the same moment (SQLAlchemy reports the loser's CREATE TABLE as an error)."""
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return optuna.create_study(storage=storage, study_name=name, directions=list(DIRECTIONS),
                                       load_if_exists=True)
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError):
            if attempt == attempts - 1:
                raise
            time.sleep(POLL_S * (attempt + 1))
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- ownership and stale trials

def _owner() -> str:
    import psutil

    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{psutil.Process(pid).create_time():.3f}"


def _owner_alive(owner: str) -> bool | None:
    """True/False for an owner on this host; None when it is on another host (cannot tell)."""
    import psutil

    host, pid, created = owner.rsplit(":", 2)
    if host != socket.gethostname():
        return None
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped by its parent: dead
            return False
        return abs(proc.create_time() - float(created)) < OWNER_CLOCK_S
    except (psutil.NoSuchProcess, ValueError):
        return False


def _retry_stale(study, trial) -> None:
    """Re-enqueue a failed stale trial's parameters once (also Optuna's RDB heartbeat callback)."""
    origin = trial.user_attrs.get("retry_of", trial.number)
    study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": origin}, skip_if_exists=False)


def reclaim_stale(study) -> int:
    """Fail RUNNING trials whose owner died and re-enqueue them; returns how many were reclaimed."""
    import optuna
    from optuna.trial import TrialState

    if isinstance(study._storage, optuna.storages.RDBStorage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # Optuna's heartbeat (RDB storages only)
    now = time.time()
    reclaimed = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("owner")
        if owner is None:
            started = t.datetime_start.timestamp() if t.datetime_start else now
            stale = now - started > UNOWNED_STALE_S
        else:
            stale = _owner_alive(owner) is False
        if not stale:
            continue
        try:
            ok = study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            ok = False  # another worker got there first
        if ok:
            if t.params:
                _retry_stale(study, t)
            reclaimed += 1
    return reclaimed


def counts(study) -> dict[str, int]:
    from optuna.trial import TrialState

    out = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] += 1
    return out


# ---------------------------------------------------------------- one worker

def _objective(problem: TrialProblem, study, n_trials: int) -> Callable:
    import optuna
    from optuna.trial import TrialState

    def objective(trial) -> tuple[float, ...]:
        trial.set_user_attr("owner", _owner())
        live = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        if sum(1 for t in live if t.number < trial.number) >= n_trials:
            trial.set_user_attr("surplus", True)
            raise optuna.TrialPruned("the study already has enough trials")
        origin = trial.user_attrs.get("retry_of")
        if origin is not None:
            twins = [t for t in live if t.number != trial.number and t.user_attrs.get("retry_of") == origin
                     and (t.state == TrialState.COMPLETE or t.number < trial.number)]
            if twins:
                trial.set_user_attr("surplus", True)
                raise optuna.TrialPruned(f"trial {origin} is already being retried")
        choice = {name: trial.suggest_categorical(name, list(labels)) for name, labels in problem.units}
        try:
            res = problem.measure(choice)
        except SearchError as e:
            trial.set_user_attr("error", str(e))
            raise
        except Exception as e:  # the user's evaluate: report what it raised, keep the study
            msg = f"trial {trial.number}: evaluate raised {type(e).__name__}: {e}"
            trial.set_user_attr("error", msg)
            raise SearchError(msg) from e
        values = tuple(float(res[k]) for k in OBJECTIVES)
        bad = [k for k, v in zip(OBJECTIVES, values) if not math.isfinite(v)]
        if bad:
            msg = f"trial {trial.number}: evaluate returned a non-finite {', '.join(bad)} ({values})"
            trial.set_user_attr("error", msg)
            raise SearchError(msg)
        for k, v in res.items():
            if k not in OBJECTIVES and isinstance(v, (int, float)):
                trial.set_user_attr(k, float(v))
        return values

    return objective


def run_worker(problem: TrialProblem, cfg: StudyConfig, *, worker: int = 0,
               on_trial: Callable[[int], None] | None = None, parent: int | None = None) -> int:
    """Run trials on the shared study until it holds cfg.n_trials COMPLETE trials.

    Returns how many this worker completed. Raises SearchError when an evaluation fails
    (the failed trial is FAIL in storage with its error; completed ones stay).
    """
    study = open_study(cfg, worker=worker)
    with storage_errors(cfg.storage):
        return _worker_loop(problem, cfg, study, on_trial, parent)


def _worker_loop(problem: TrialProblem, cfg: StudyConfig, study, on_trial: Callable[[int], None] | None,
                 parent: int | None) -> int:
    from optuna.trial import TrialState

    objective = _objective(problem, study, cfg.n_trials)
    mine = 0
    while True:
        if parent is not None and os.getppid() != parent:
            return mine  # the driver was killed: stop too; a resumed run takes over
        reclaim_stale(study)
        c = counts(study)
        if c["COMPLETE"] >= cfg.n_trials:
            return mine
        if c["COMPLETE"] + c["RUNNING"] >= cfg.n_trials:
            time.sleep(POLL_S)  # others hold the remaining slots; wait for them (or their death)
            continue
        before = c["COMPLETE"]
        try:
            study.optimize(objective, n_trials=1, catch=(), gc_after_trial=False, show_progress_bar=False)
        except ValueError as e:
            # another process finished this trial first (it was reclaimed from us, or popped twice
            # by a storage without row locks): its record stands, ours is dropped; go on
            if not str(e).startswith("Cannot tell a "):
                raise
        last = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        me = _owner()
        mine = sum(1 for t in last if t.user_attrs.get("owner") == me)
        if on_trial is not None:
            on_trial(max(before, len(last)))
