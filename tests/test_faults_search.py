"""Faults under a search: a torn or damaged journal, a full disk, a worker killed mid-trial, Ctrl-C
to several workers, two processes racing on one fresh SQLite database. Nothing completed is lost
and every failure is one line, never a traceback."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState
from search_helpers import study_trials
from terminal import as_from_a_terminal

from sparsesim.search.journal import complete_trials_in, repair
from sparsesim.search.optuna_search import open_storage

N = 6

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tmp_path_factory, search_env):
    """A finished N-trial study: its journal is copied and damaged by the tests below."""
    out = tmp_path_factory.mktemp("done")
    r = subprocess.run(_cmd(out, 1, storage=None), env=search_env, capture_output=True, timeout=180, check=False)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return out / "study.journal"


def _cmd(out: Path, workers: int, trials: int = N, storage: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "sparsesim", "search", "digits:batch=64", "--device", "arm-cortex-a78",
           "--algorithm", "optuna", "--trials", str(trials), "--workers", str(workers), "--seed", "3",
           "--evaluate", "search_helpers:slow_accuracy", "--out", str(out), "--json"]
    return cmd + (["--storage", storage] if storage else [])


def _trials(storage: str):
    return study_trials(storage)


def _complete(storage: str) -> int:
    try:
        return sum(t.state == TrialState.COMPLETE for t in _trials(storage))
    except (ValueError, OSError):
        return 0


def _run(cmd: list[str], search_env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=search_env, capture_output=True, timeout=240, check=False, **kw)


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    err = r.stderr.decode()
    assert "Traceback" not in err, err[-3000:]
    assert r.returncode == 2, err[-3000:]
    return err


# ------------------------------------------------------------------ torn and damaged journals

def test_torn_journal_is_repaired_and_resumed_without_loss(tmp_path, search_env, finished):
    """The search resumed on a journal cut inside its last records (what a kill mid-write leaves)."""
    journal = tmp_path / "study.journal"
    journal.write_bytes(finished.read_bytes()[:-300])
    before = complete_trials_in(journal)
    assert before >= N - 1  # a cut inside the last records loses at most the one cut short
    r = _run(_cmd(tmp_path, 1, trials=N + 1), search_env)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    assert "Traceback" not in r.stderr.decode()
    assert _complete(str(journal)) == N + 1
    assert json.loads(r.stdout)["study"]["complete"] == N + 1


@pytest.mark.parametrize("cut", [2, 300])
def test_torn_journal_takes_new_trials_after_repair(tmp_path, finished, cut):
    """The storage a resume opens (the same `open_storage` the search uses) repairs any cut and
    then takes new records: the journal stays readable and keeps every complete trial."""
    journal = tmp_path / "study.journal"
    journal.write_bytes(finished.read_bytes()[:-cut])
    before = complete_trials_in(journal)
    assert before >= N - 1
    st = open_storage(str(journal))
    (summary,) = optuna.get_all_study_summaries(st)
    study = optuna.load_study(study_name=summary.study_name, storage=st)
    trial = study.ask()
    study.tell(trial, [0.5] * len(study.directions))
    assert _complete(str(journal)) == before + 1


def test_damaged_middle_line_keeps_prefix_and_the_original(tmp_path, finished):
    journal = tmp_path / "study.journal"
    lines = finished.read_bytes().splitlines(keepends=True)
    mid = len(lines) // 2
    journal.write_bytes(b"".join(lines[:mid] + [b'{"op_code": 6, "trial_id": \x00garbage\n'] + lines[mid + 1:]))
    original = journal.read_bytes()
    fixed = repair(journal)
    assert fixed is not None and fixed.backup is not None
    assert fixed.backup.read_bytes() == original  # nothing lost: the whole file is kept aside
    assert fixed.bad_line == mid + 1 and fixed.kept_records == mid
    assert str(journal) in fixed.message() and "complete trials" in fixed.message()
    assert _complete(str(journal)) == fixed.complete_trials  # Optuna reads what is kept


def test_whole_record_without_newline_is_kept(tmp_path, finished):
    journal = tmp_path / "study.journal"
    journal.write_bytes(finished.read_bytes()[:-1])
    assert repair(journal) is None
    assert journal.read_bytes() == finished.read_bytes()


def test_disk_full_mid_study_is_one_line_and_resumable(tmp_path, search_env, finished):
    journal = tmp_path / "study.journal"
    journal.write_bytes(finished.read_bytes())
    size = journal.stat().st_size
    per_trial = size / N
    # room for one more trial and part of the next, then writes fail (EFBIG) well before N + 4
    limit = int(size + 1.5 * per_trial)

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = _run(_cmd(tmp_path, 1, trials=N + 4), search_env, preexec_fn=small_disk)
    err = _one_line_error(r)
    assert "disk full" in err and str(journal) in err and "complete trials" in err
    kept = _complete(str(journal))
    assert N <= kept < N + 4  # every trial completed before the disk filled is still there
    r = _run(_cmd(tmp_path, 1, trials=N + 4), search_env)  # space freed: the same command resumes
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    assert _complete(str(journal)) == N + 4


# ------------------------------------------------------------------ workers

def _wait_for(journal: Path, proc: subprocess.Popen, n: int) -> None:
    """Until `n` trials are complete, counted straight off the journal's records (loading the study
    through optuna each poll takes long enough for a fast search to finish in between)."""
    deadline = time.time() + 120
    while complete_trials_in(journal) < n:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "the search made no progress"
        time.sleep(0.05)


def test_killed_worker_does_not_hang_the_search(tmp_path, search_env):
    journal = tmp_path / "study.journal"
    trials = 8 * N  # still running when the worker is killed, on a loaded or a fast machine
    proc = subprocess.Popen(_cmd(tmp_path, 2, trials), env=search_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for(journal, proc, 2)
        spawned = [c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        assert spawned, "no worker process found"
        os.kill(spawned[0].pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert "killed by signal 9" in err.decode()
    assert _complete(str(journal)) == trials


def test_ctrl_c_to_two_workers_is_one_line_and_resumable(tmp_path, search_env):
    journal = tmp_path / "study.journal"
    # far more trials than run before the signal lands, on a fast machine too (a search that has
    # finished every trial when Ctrl-C arrives has nothing left to resume)
    trials = 100
    proc = subprocess.Popen(_cmd(tmp_path, 2, trials), env=search_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, preexec_fn=as_from_a_terminal)
    try:
        _wait_for(journal, proc, 2)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = err.decode()
    assert proc.returncode == 130, text[-3000:]
    assert "Traceback" not in text and "interrupted" in text
    kept = _complete(str(journal))
    assert 2 <= kept < trials
    r = _run(_cmd(tmp_path, 1, kept + 2), search_env)  # one worker resumes what two left: --trials is the total
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    assert _complete(str(journal)) == kept + 2


def test_two_processes_on_one_fresh_sqlite_database(tmp_path, search_env):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    procs = [subprocess.Popen(_cmd(tmp_path / f"out{i}", 1, storage=url), env=search_env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err.decode()[-3000:]
    trials = _trials(url)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == N
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def test_damaged_sqlite_is_one_line(tmp_path, cli):
    db = tmp_path / "study.db"
    db.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    argv = _cmd(tmp_path, 1, storage=f"sqlite:///{db}")[3:]  # the same command, in this process
    rc, _, err = cli(*argv)
    assert rc == 2 and "Traceback" not in err
    assert str(db) in err and len(err.strip().splitlines()) == 1


def test_a_stop_unwinding_through_the_journal_lock_stays_a_stop(tmp_path):
    """SIGTERM's SystemExit (or Ctrl-C) raised inside Optuna's lock leaves a follow-on OSError
    (the lock it never took cannot be unlinked): that is the stop, not an unreadable study."""
    from sparsesim.core.errors import SearchError
    from sparsesim.search.study import storage_errors

    journal = str(tmp_path / "study.journal")
    for stop in (SystemExit(143), KeyboardInterrupt()):
        with pytest.raises(type(stop)):
            with storage_errors(journal):
                try:
                    raise stop
                finally:
                    os.unlink(tmp_path / "study.journal.lock")   # what the lock's release does
    # without a stop in the chain the same OSError is one line naming the study
    with pytest.raises(SearchError, match="cannot read or write the study"):
        with storage_errors(journal):
            os.unlink(tmp_path / "study.journal.lock")


def test_a_stop_that_lands_in_an_import_callback_still_stops_quietly():
    """A worker's SIGTERM can land inside a weakref callback of an import lock, where Python
    cannot raise: it would print 'Exception ignored' with a traceback and the worker would go on.
    The worker's hook delivers the stop again, so it exits with 143 and prints nothing."""
    code = (
        "import signal, sys, time, weakref\n"
        "from sparsesim.search import optuna_search as o\n"
        "signal.signal(signal.SIGTERM, o._exit_on_sigterm)\n"
        "sys.unraisablehook = o._stop_again_if_unraisable\n"
        "class A: pass\n"
        "a = A()\n"
        "def cb(ref): raise SystemExit(143)\n"
        "r = weakref.ref(a, cb)\n"
        "del a\n"
        "time.sleep(5)\n"
        "print('not stopped')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 143 and proc.stderr == "" and proc.stdout == ""
