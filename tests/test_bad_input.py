"""Bad input on the command line, across verbs: each case exits 2 with ONE line on stderr that
names the thing at fault, and never a traceback. Tiny workloads keep every case fast."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

G = "gemm:M=8,N=8,K=8"


def _run(cli, argv: list[str]) -> tuple[int, str, str]:
    """The CLI's exit code, stdout and stderr; argparse's own errors exit via SystemExit."""
    try:
        return cli(*argv)
    except SystemExit as e:  # argparse usage errors
        return int(e.code), "", ""


def _blocker(tmp_path) -> str:
    """A regular file: any path below it can be neither a directory nor a file (even for root)."""
    f = tmp_path / "a-file"
    f.write_text("")
    return str(f)


# (argv, text the one-line error must contain); "{blocker}" is a path under a regular file
CASES = [
    (["trace", "nope"], "unknown workload 'nope'"),
    (["trace", "resnet18:image=abc"], "image='abc'"),
    (["trace", "resnet18:nope=1"], "unknown parameter 'nope'"),
    (["trace", "resnet18:batch=0"], "batch=0"),
    (["trace", "conv:cin=3,cout=8,h=8,w=8,padding=-1"], "padding=-1"),
    (["trace", G, "--plan", "3:2"], "'3:2'"),
    (["trace", G, "--plan", "block0x4:0.5"], "block0x4:0.5"),
    (["trace", G, "--plan", "unstructured:1.5"], "unstructured:1.5"),
    (["estimate", G, "--device", "nope"], "unknown device 'nope'"),
    (["estimate", G, "--device", "{blocker}/x.toml"], "does not exist"),
    (["compare", G, "--devices", ""], "no device named"),
    (["compare", G, "--devices", " , "], "no device named"),
    (["simulate", G, "--device", "s4-antoum", "--qps", "-1"], "--qps"),
    (["simulate", G, "--device", "s4-antoum", "--qps", "nan"], "--qps"),
    (["simulate", G, "--device", "s4-antoum", "--qps", "inf"], "--qps"),
    (["simulate", G, "--device", "s4-antoum", "--requests", "0"], "--requests"),
    (["report", G, "--devices", "s4-antoum", "--search", "{blocker}/none", "--out", "{tmp}/r"], "--search"),
    (["report", G, "--devices", "s4-antoum", "--out", "{blocker}/r"], "--out"),
    (["calibrate", "--quick", "--out", "{tmp}/dir.toml"], "not a writable file"),
    (["search", "digits", "--device", "arm-cortex-a78", "--out", "{blocker}/out"], "--out"),
    (["search", "digits", "--device", "arm-cortex-a78", "--algorithm", "optuna", "--trials", "2",
      "--out", "{tmp}/out", "--storage", "{blocker}/study.journal"], "--storage"),
    (["search", "digits", "--device", "arm-cortex-a78", "--algorithm", "optuna", "--trials", "2",
      "--out", "{tmp}/out", "--storage", "sqlite:///{blocker}/x.db"], "--storage"),
]


@pytest.mark.parametrize("argv, names", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_one_line_exit_2(cli, tmp_path, argv, names):
    (tmp_path / "dir.toml").mkdir()
    argv = [a.format(blocker=_blocker(tmp_path), tmp=tmp_path) for a in argv]
    names = names.format(blocker=_blocker(tmp_path), tmp=tmp_path)
    rc, _out, err = _run(cli, argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (rc, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert names in lines[0], lines[0]
    assert lines[0].startswith(f"sparsesim {argv[0]}: error: ")


@pytest.mark.parametrize("argv", [
    ["simulate", G, "--device", "s4-antoum", "--qps", "abc"],
    ["trace"],
    ["nope"],
])
def test_usage_errors_are_one_line(capsys, argv):
    from sparsesim.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    assert "error:" in err and "--help" in err


@pytest.mark.parametrize("argv, names", [
    (["estimate", G, "--device", "{f}"], "not a UTF-8 text file"),
    (["trace", G, "--plan", "{f}"], "not a UTF-8 text file"),
    (["trace", "{f}"], "not a UTF-8 text file"),
    (["trace", "{d}"], "Is a directory"),
], ids=["device", "plan", "recipe", "recipe-dir"])
def test_unreadable_toml_files(cli, tmp_path, argv, names):
    f = tmp_path / "binary.toml"
    f.write_bytes(b'name = "\xff\xfe"\n')
    (tmp_path / "dir.toml").mkdir()
    argv = [a.format(f=f, d=tmp_path / "dir.toml") for a in argv]
    rc, _, err = _run(cli, argv)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert names in err and str(tmp_path) in err


@pytest.mark.parametrize("spec, rc", [
    ("gemm:M=10000000000,N=4,K=4", 0),  # a huge input is described on the meta device, never allocated
    ("conv:batch=100000000,cin=64,cout=64,h=224,w=224", 0),
    ("gemm:M=9223372036854775807,N=4,K=4", 2),  # past what a tensor can describe: one line
])
def test_huge_single_op_shapes_are_costed_or_one_line(cli, spec, rc):
    code, out, err = cli("estimate", spec, "--device", "a100-sxm4-80gb", "--json")
    assert code == rc, err
    assert "Traceback" not in err
    if rc:
        assert len(err.strip().splitlines()) == 1 and "elements" in err
    else:
        assert '"latency_s"' in out


def test_an_error_raised_while_a_ctrl_c_unwound_is_the_interruption(cli, monkeypatch):
    """Cleanup cut short by a Ctrl-C that fails in its place (Optuna's lock release cannot remove
    a lock it never took) is reported as the interruption, not as a bug."""
    import sparsesim.cli.devices_cmd as devices_cmd

    def interrupted(args):
        try:
            raise KeyboardInterrupt
        finally:
            raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(devices_cmd, "run", interrupted)
    code, _, err = cli("devices")
    assert code == 130 and err.strip() == "sparsesim devices: interrupted"


def test_an_internal_error_is_one_line_and_its_traceback_on_request(cli, monkeypatch):
    import sparsesim.cli.devices_cmd as devices_cmd

    def broken(args):
        raise RuntimeError("something we did not foresee\nsecond line")

    monkeypatch.setattr(devices_cmd, "run", broken)
    code, _, err = cli("devices")
    assert code == 70 and err.strip() == ("sparsesim devices: internal error: RuntimeError: something we did not "
                                          "foresee (a bug in sparsesim; SPARSESIM_TRACEBACK=1 shows the traceback "
                                          "to report)")
    monkeypatch.setenv("SPARSESIM_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="foresee"):
        cli("devices")
