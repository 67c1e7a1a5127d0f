"""The user's own model code under sparsesim: a factory, import or forward that hangs, calls
sys.exit, raises KeyboardInterrupt, runs no op or computes in fp64 ends as one line naming the
model and its file (exit 2), never a hang, a silent exit 0 or a traceback; a real Ctrl-C is still
an interruption (130), and nothing half-written is left behind."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from terminal import as_from_a_terminal

from sparsesim.tracing import guard

MODELS = """
import sys, time
import torch, torch.nn as nn

class Net(nn.Module):
    def __init__(self, mode):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.mode = mode
    def forward(self, x):
        x = self.body(x)
        if self.mode == "announce":  # says (in a file) that the forward is running, then hangs
            open("forward-started", "w").close()
        if self.mode in ("hang", "announce"):
            while True:
                time.sleep(0.01)
        if self.mode == "stubborn":  # the loop's own jumps run inside the try, so no alarm escapes it
            while True:
                try:
                    while True:
                        time.sleep(0.01)
                except BaseException:
                    pass
        if self.mode == "exit":
            sys.exit(0)
        if self.mode == "kbd":
            raise KeyboardInterrupt
        return x

class Identity(nn.Module):
    def forward(self, x):
        return x.view(2, 8)

def make(mode):
    return Net(mode), (torch.randn(2, 8),)

def hang(): return make("hang")
def announce(): return make("announce")
def stubborn(): return make("stubborn")
def forward_exits(): return make("exit")
def forward_kbd(): return make("kbd")
def factory_exits(): sys.exit(0)
def factory_hangs():
    while True:
        pass
def identity(): return Identity(), (torch.randn(2, 8),)
def empty(): return nn.Sequential(), (torch.randn(2, 8),)
def fp64():
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)).double()
    return m, (torch.randn(16, 64, dtype=torch.float64),)
"""

_names = itertools.count()


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A directory holding the user's model files, as the current directory (where
    `sparsesim ... module:factory` imports from); module names are fresh per test (imports are cached)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _module(where: Path, source: str = MODELS) -> str:
    name = f"usermodel_{os.getpid()}_{next(_names)}"
    (where / f"{name}.py").write_text(textwrap.dedent(source))
    return name


def _one_line(rc: int, err: str, *needles: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


# ------------------------------------------------------------------ --timeout

@pytest.mark.parametrize("factory, doing", [("hang", "tracing the forward"), ("factory_hangs", "running the factory")])
def test_hanging_model_code_ends_with_one_line_naming_the_model_and_timeout(cli, user_dir, factory, doing):
    spec = f"{_module(user_dir)}:{factory}"
    t0 = time.monotonic()
    rc, out, err = cli("estimate", spec, "--device", "a100-sxm4-80gb", "--timeout", "0.5")
    assert time.monotonic() - t0 < 30
    _one_line(rc, err, spec, "0.5 s", doing, "--timeout")
    assert out == ""


def test_hanging_import_names_the_module(cli, user_dir):
    name = _module(user_dir, "while True:\n    pass\ndef f():\n    pass\n")
    rc, _, err = cli("trace", f"{name}:f", "--timeout", "0.5")
    _one_line(rc, err, f"{name}:f", f"importing {name!r}", "0.5 s")


def test_search_and_report_on_a_hanging_model_leave_nothing_behind(cli, user_dir):
    spec = f"{_module(user_dir)}:hang"
    out = user_dir / "search-out"
    rc, _, err = cli("search", spec, "--device", "a100-sxm4-80gb", "--evaluate", f"{spec.split(':')[0]}:make",
                     "--out", str(out), "--timeout", "0.5")
    _one_line(rc, err, spec, "0.5 s")
    assert not out.exists() or not list(out.iterdir())
    rep = user_dir / "report-out"
    rc, _, err = cli("report", spec, "--devices", "a100-sxm4-80gb", "--plans", "2:4", "--out", str(rep),
                     "--timeout", "0.5")
    _one_line(rc, err, spec, "0.5 s")
    assert not rep.exists() or not list(rep.rglob("*"))


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_bad_timeout_is_one_line(cli, value):
    rc, _, err = cli("trace", "gemm:M=8,N=8,K=8", "--timeout", value)
    _one_line(rc, err, "--timeout")


def test_every_verb_that_runs_model_code_takes_timeout():
    from sparsesim.cli import USER_CODE_VERBS, build_parser

    parser, _ = build_parser()
    for verb in USER_CODE_VERBS:
        args = parser.parse_args([verb, *(["x"] if verb != "report" else []),
                                  *(["--device", "d"] if verb in ("estimate", "simulate", "search") else [])])
        assert args.timeout == guard.DEFAULT_TIMEOUT_S, verb


def _subprocess_env(user_dir: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(user_dir), os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="1")


def test_code_that_swallows_the_timeout_still_ends(user_dir):
    """`except BaseException: pass` in a loop outlives the alarm; the watchdog ends the process."""
    spec = f"{_module(user_dir)}:stubborn"
    r = subprocess.run([sys.executable, "-m", "sparsesim", "trace", spec, "--timeout", "1"], cwd=user_dir,
                       env=_subprocess_env(user_dir), capture_output=True, text=True, timeout=240, check=False)
    _one_line(r.returncode, r.stderr, spec, "1 s", "did not stop")


def test_real_ctrl_c_while_tracing_is_still_an_interruption(user_dir):
    spec = f"{_module(user_dir)}:announce"
    proc = subprocess.Popen([sys.executable, "-m", "sparsesim", "trace", spec, "--timeout", "120"], cwd=user_dir,
                            env=_subprocess_env(user_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_from_a_terminal)
    try:
        deadline = time.monotonic() + 100
        while not (user_dir / "forward-started").exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the forward never started"
            time.sleep(0.1)
        time.sleep(0.5)  # inside the forward's loop
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err


# ------------------------------------------------------------------ sys.exit and KeyboardInterrupt

@pytest.mark.parametrize("factory, needle", [
    ("forward_exits", "forward"), ("factory_exits", "factory"), ("forward_kbd", "KeyboardInterrupt"),
])
def test_user_code_exiting_is_one_line_naming_the_file(cli, user_dir, factory, needle):
    name = _module(user_dir)
    rc, out, err = cli("estimate", f"{name}:{factory}", "--device", "a100-sxm4-80gb")
    _one_line(rc, err, f"{name}:{factory}", needle, str(user_dir / f"{name}.py"))
    assert out == ""


def test_import_calling_sys_exit_is_one_line_naming_the_file(cli, user_dir):
    name = _module(user_dir, "import sys\nsys.exit(0)\ndef f():\n    pass\n")
    rc, _, err = cli("trace", f"{name}:f")
    _one_line(rc, err, f"importing {name!r}", str(user_dir / f"{name}.py"), "sys.exit(0)")


def test_recipe_builder_calling_sys_exit_names_the_recipe(cli, user_dir):
    name = _module(user_dir, "import sys\ndef build():\n    sys.exit(3)\n")
    recipe = user_dir / "r.toml"
    recipe.write_text(f'description = "exits"\nbuilder = "{name}:build"\n')
    rc, _, err = cli("trace", str(recipe))
    _one_line(rc, err, "recipe 'r'", f"{name}:build", "sys.exit(3)")


def test_library_callers_get_the_same_errors(user_dir):
    from sparsesim.core.errors import WorkloadError
    from sparsesim.tracing.workloads import load_workload

    name = _module(user_dir)
    alarm, sigint = signal.getsignal(signal.SIGALRM), signal.getsignal(signal.SIGINT)
    with pytest.raises(WorkloadError, match="sys.exit"):
        load_workload(f"{name}:forward_exits")
    with guard.time_limit(0.3), pytest.raises(WorkloadError, match="did not finish within 0.3 s"):
        load_workload(f"{name}:hang")
    # the caller's signal handlers are back and no timer is left running
    assert signal.getsignal(signal.SIGALRM) is alarm and signal.getsignal(signal.SIGINT) is sigint
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0


def test_a_callers_own_alarm_still_fires_inside_a_bounded_section(user_dir):
    """A bounded section keeps the caller's SIGALRM timer: it fires on time, with its handler."""
    from sparsesim.tracing.workloads import load_workload

    class Mine(BaseException):
        pass

    def mine(signum, frame):
        raise Mine

    name = _module(user_dir)
    old = signal.signal(signal.SIGALRM, mine)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with guard.time_limit(60), pytest.raises(Mine):
            load_workload(f"{name}:hang")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------ no ops, fp64

@pytest.mark.parametrize("factory", ["identity", "empty"])
@pytest.mark.parametrize("verb", ["estimate", "trace"])
def test_model_with_no_ops_is_one_line_naming_it(cli, user_dir, factory, verb):
    spec = f"{_module(user_dir)}:{factory}"
    rc, _, err = cli(verb, spec, *(["--device", "a100-sxm4-80gb"] if verb == "estimate" else []))
    _one_line(rc, err, spec, "no operation")


@pytest.mark.parametrize("device", ["a100-sxm4-80gb", "xeon-sapphire-rapids", "alveo-u250", "s4-antoum"])
def test_fp64_model_is_costed_and_the_why_says_fp64(cli, user_dir, device):
    """Every family: the fp64 model traces (it used to fail in sparsesim's own activation norms,
    blamed on the user's forward) and each fp64 GEMM says what the device does with fp64."""
    import json

    spec = f"{_module(user_dir)}:fp64"
    rc, out, err = cli("estimate", spec, "--device", device, "--plan", "unstructured:0.5", "--json")
    assert rc == 0, err
    assert "forward raised" not in err
    linears = [o for o in json.loads(out)["ops"] if o["kind"] == "linear"]
    assert len(linears) == 2 and all("fp64" in o["why"] for o in linears)
