"""Progress on stderr for the long steps: shown when asked (plain lines off a terminal), silent under
--quiet, pipes and tests, never on stdout, and a reader that goes away is a clean exit."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparsesim.cli import main
from sparsesim.core import progress
from sparsesim.run.estimate import clear_cache

REPO = Path(__file__).resolve().parent.parent
GEMM = "gemm:M=64,N=256,K=256"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    clear_cache()  # every test traces afresh (a cached trace shows no trace step)
    yield
    progress.configure(None)


def test_silent_when_stderr_is_not_a_terminal(cli):
    rc, out, err = cli("compare", GEMM, "--devices", "a100-sxm4-80gb", "--plans", "2:4")
    assert rc == 0 and out and err == ""


def test_progress_flag_prints_plain_lines_per_stage_on_stderr_only(cli):
    rc, out, err = cli("compare", GEMM, "--devices", "a100-sxm4-80gb,zcu102", "--plans", "2:4", "--json", "--progress")
    assert rc == 0
    json.loads(out)  # stdout holds the document and nothing else
    lines = err.splitlines()
    assert "\r" not in err and "\x1b" not in err and all(len(line) <= 100 for line in lines)
    assert any(line.startswith(f"trace {GEMM}:") and "op" in line for line in lines)
    # the dense baseline and 2:4, sparsified side by side
    assert any(line.startswith(f"sparsify {GEMM}:") and "2/2" in line for line in lines)
    # dense and 2:4 on two devices: four runs costed, the last state kept
    assert any(line.startswith(f"cost {GEMM}: 100%") and "4/4" in line for line in lines)


def test_environment_asks_and_quiet_wins(cli, monkeypatch):
    monkeypatch.setenv(progress.ENV, "1")
    rc, _, err = cli("estimate", GEMM, "--device", "xeon-sapphire-rapids")
    assert rc == 0 and f"trace {GEMM}" in err
    rc, _, err = cli("estimate", GEMM, "--device", "xeon-sapphire-rapids", "--quiet")
    assert rc == 0 and err == ""
    monkeypatch.setenv(progress.ENV, "0")
    rc, _, err = cli("estimate", GEMM, "--device", "xeon-sapphire-rapids", "--progress")
    assert rc == 0 and f"cost {GEMM}" in err  # the flag beats the environment


def test_progress_and_quiet_exclude_each_other(cli):
    with pytest.raises(SystemExit) as e:
        cli("trace", GEMM, "--progress", "--quiet")
    assert e.value.code == 2


def test_a_recipe_build_and_a_training_sweep_show_their_stages(cli):
    rc, _, err = cli("train", GEMM, "--methods", "static", "--steps", "10", "--device", "a100-sxm4-80gb",
                     "--progress")
    assert rc == 0
    assert "training steps" in err and "cost training" in err
    rc, _, err = cli("trace", "digits", "--progress")
    assert rc == 0 and "digits: building the model ..." in err


def test_a_closed_stderr_stops_the_display_without_a_traceback(monkeypatch):
    """`sparsesim ... 2>&1 | head -1`: the reader of stderr has gone; the verb still finishes."""
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    closed = io.TextIOWrapper(os.fdopen(write_fd, "wb", buffering=0), write_through=True)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", closed)
    monkeypatch.setattr(sys, "stdout", out)
    rc = main(["compare", GEMM, "--devices", "a100-sxm4-80gb", "--plans", "2:4", "--progress"])
    monkeypatch.undo()
    assert rc == 0 and "a100-sxm4-80gb" in out.getvalue()


def test_piped_to_head_is_a_clean_exit():
    """A real shell pipe, stdout and stderr both to `head -1`."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = (f"{sys.executable} -m sparsesim compare {GEMM} --devices a100-sxm4-80gb --plans 2:4 --progress "
           "2>&1 | head -1; exit ${PIPESTATUS[0]}")
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, check=False, timeout=300)
    assert r.returncode in (0, 141), r.stderr
    assert len(r.stdout.splitlines()) == 1 and "Traceback" not in r.stdout + r.stderr


def test_a_terminal_gets_a_redrawn_bar(monkeypatch):
    """On a terminal the bar is redrawn in place (tqdm's carriage returns) and removed when done."""
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(progress, "_terminal", lambda: True)
    monkeypatch.setattr(progress, "TERMINAL_DELAY_S", 0.0)
    with progress.bar("cost x", 3, unit="run") as b:
        b.update(3)
    assert "\r" in err.getvalue() and "cost x" in err.getvalue()
    monkeypatch.setattr(progress, "_terminal", lambda: False)
    err.truncate(0)
    assert list(progress.each([1, 2], "quiet")) == [1, 2] and err.getvalue() == ""


def test_timing_stage_lines_follow_the_same_switch(capsys):
    """calibrate's and validate's stage lines are shown exactly when progress bars are."""
    import argparse

    from sparsesim.cli.common import timing_progress

    args = argparse.Namespace(threads=1, json=False)
    say = timing_progress(args, "validate")
    assert say is not None
    say("timing 3 dense cases")
    assert capsys.readouterr().err == ""  # not a terminal, not asked
    progress.configure(True)
    say("timing 3 dense cases")
    assert capsys.readouterr().err == "validate: timing 3 dense cases\n"
    assert timing_progress(argparse.Namespace(threads=1, json=True), "validate") is None


def _child_enabled(q) -> None:
    progress.configure(True)
    q.put(progress.enabled())


def test_nested_bars_in_plain_lines_carry_no_terminal_escapes(capsys):
    """A report's or search's bar holds the costing bars inside it: off a terminal, no cursor moves."""
    progress.configure(True)
    with progress.bar("outer", 2) as outer:
        for _ in progress.each(range(3), "inner"):
            pass
        outer.update(2)
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\r" not in err
    assert any(line.startswith("inner: 100%") for line in err.splitlines())
    assert err.splitlines()[-1].startswith("outer: 100%")


def test_worker_processes_never_draw():
    """Search workers run in child processes: only the parent's bar is shown."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child_enabled, args=(q,))
    p.start()
    shown = q.get(timeout=120)
    p.join(timeout=60)
    assert shown is False


def test_a_report_counts_every_step_it_announces(cli, tmp_path):
    """The report's bar ends at its total (a device whose best plan is dense draws one serving
    curve, and its second step is counted as done)."""
    rc, _, err = cli("report", GEMM, "--devices", "a100-sxm4-80gb,zcu102", "--plans", "dense,2:4",
                     "--out", str(tmp_path / "r"), "--progress")
    assert rc == 0
    last = [line for line in err.splitlines() if line.startswith(("report:", "figures:"))][-1]
    # 1 workload x 2 devices x 2 plans, 1 figure set, 2 serving steps per device
    assert "100%" in last and "9/9" in last
