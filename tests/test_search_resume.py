"""A search killed with SIGKILL and resumed ends with exactly N COMPLETE trials, none lost or
run twice; two workers on one study likewise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState
from search_helpers import study_trials

N = 10


def _cmd(out: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "sparsesim", "search", "digits:batch=64", "--device", "arm-cortex-a78",
            "--algorithm", "optuna", "--trials", str(N), "--workers", str(workers), "--seed", "3",
            "--evaluate", "search_helpers:slow_accuracy", "--out", str(out), "--json"]


def _trials(journal: Path):
    return study_trials(str(journal))


def _complete(journal: Path) -> int:
    if not journal.exists():
        return 0
    try:
        return sum(t.state == TrialState.COMPLETE for t in _trials(journal))
    except ValueError:  # the study is not created yet
        return 0


def _kill_midway(out: Path, search_env: dict, workers: int) -> None:
    journal = out / "study.journal"
    proc = subprocess.Popen(_cmd(out, workers), env=search_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 90
    while _complete(journal) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "the search made no progress"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its worker processes, mid-trial
    proc.wait()
    assert _complete(journal) < N


def _check_exact(out: Path) -> None:
    trials = _trials(out / "study.journal")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == N
    # every trial killed mid-evaluation is FAIL and its parameters were retried exactly once
    # (one killed before it drew parameters had nothing to lose)
    killed = [t for t in trials if t.state == TrialState.FAIL and t.params]
    retries = [t.user_attrs.get("retry_of") for t in trials if "retry_of" in t.user_attrs]
    for t in killed:
        assert retries.count(t.number) == 1
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def _resume(out: Path, search_env: dict, workers: int) -> dict:
    done = subprocess.run(_cmd(out, workers), env=search_env, capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return json.loads(done.stdout)


def test_sigkill_then_resume_ends_with_exactly_n_trials(tmp_path, search_env):
    _kill_midway(tmp_path, search_env, workers=1)
    doc = _resume(tmp_path, search_env, workers=1)
    _check_exact(tmp_path)
    assert doc["study"]["complete"] == N
    assert doc["front"] and doc["accuracy"] > 0


def test_two_workers_killed_and_resumed_share_one_study(tmp_path, search_env):
    _kill_midway(tmp_path, search_env, workers=2)
    doc = _resume(tmp_path, search_env, workers=2)
    _check_exact(tmp_path)
    owners = {t.user_attrs["owner"] for t in _trials(tmp_path / "study.journal") if t.state == TrialState.COMPLETE}
    assert len(owners) >= 2  # trials really ran in more than one process
    assert doc["study"]["counts"]["COMPLETE"] == N


def test_dask_local_cluster_runs_exactly_n_trials(tmp_path, search_env, monkeypatch):
    distributed = pytest.importorskip("distributed")
    import torch

    from sparsesim.search import optuna_search as osr
    from sparsesim.search.runner import SearchConfig, build_problem

    monkeypatch.setenv("SPARSESIM_CACHE", search_env["SPARSESIM_CACHE"])
    torch.set_num_threads(1)
    problem = build_problem(SearchConfig(workload="digits:batch=64", device="arm-cortex-a78"))
    cfg = osr.StudyConfig(storage=str(tmp_path / "study.journal"), study_name="dask", n_trials=N, seed=1)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        study = osr.optimize(problem, cfg, dask_scheduler=cluster.scheduler_address)
    assert osr.counts(study)["COMPLETE"] == N


def test_more_workers_than_cores_says_it_runs_no_faster(tmp_path, search_env, monkeypatch):
    import torch

    from sparsesim.core.errors import SparsesimWarning
    from sparsesim.search import optuna_search as osr
    from sparsesim.search.runner import SearchConfig, build_problem

    monkeypatch.setenv("SPARSESIM_CACHE", search_env["SPARSESIM_CACHE"])
    monkeypatch.setattr(osr, "usable_cores", lambda: 1)
    threads = torch.get_num_threads()
    problem = build_problem(SearchConfig(workload="digits:batch=64", device="arm-cortex-a78"))
    cfg = osr.StudyConfig(storage=str(tmp_path / "study.journal"), study_name="cores", n_trials=4, seed=1)
    with pytest.warns(SparsesimWarning, match="--workers 2 on 1 core"):
        study = osr.optimize(problem, cfg, workers=2)
    assert osr.counts(study)["COMPLETE"] == 4
    assert torch.get_num_threads() == threads  # the driver's one thread was only for the run
