"""Outputs never lose a user's file: a report deletes only what a report wrote, refuses a directory
that is not a report, writes atomically (an interrupted rerun deletes nothing), and a search result
is checked against its manifest. Names a user chose cannot inject HTML or spreadsheet formulas."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path

import pandas as pd
import pytest

from sparsesim.cli import main
from sparsesim.core import atomic
from sparsesim.hw.devices import load_device
from sparsesim.report import build, render
from sparsesim.report.inputs import ReportError, read_search_dir
from sparsesim.report.outdir import MANIFEST
from sparsesim.tracing.workloads import load_workload

DEVICE = "arm-cortex-a78"
ARGS = ("gemm:M=64,N=64,K=64", "--devices", DEVICE, "--plans", "dense,2:4", "--no-serving")


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def _report(out: Path) -> tuple[int, str, str]:
    return _cli("report", *ARGS, "--out", str(out))


# ------------------------------------------------------------------ report directories

def test_report_refuses_a_directory_that_is_not_a_report(tmp_path):
    (tmp_path / "index.html").write_text("my homepage")
    (tmp_path / "notes.md").write_text("mine")
    rc, _, err = _report(tmp_path)
    assert rc == 2 and str(tmp_path) in err and "not a sparsesim report" in err
    assert len(err.strip().splitlines()) == 1
    assert (tmp_path / "index.html").read_text() == "my homepage"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html", "notes.md"]


def test_rerun_keeps_the_users_files_and_removes_only_stale_report_files(tmp_path):
    assert _report(tmp_path)[0] == 0
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert "summary.csv" in manifest["files"] and "index.html" in manifest["files"]
    (tmp_path / "my_numbers.csv").write_text("a,b\n1,2\n")
    (tmp_path / "images" / "my_plot.png").write_bytes(b"\x89PNG mine")
    # a table an earlier report wrote that this run does not: removed, being the report's own
    (tmp_path / "search-0.csv").write_text("old,front\n")
    manifest["files"]["search-0.csv"] = atomic.sha256(tmp_path / "search-0.csv")
    # a report table the user edited since: kept
    (tmp_path / "serving.csv").write_text("edited by hand\n")
    manifest["files"]["serving.csv"] = "0" * 64
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    assert _report(tmp_path)[0] == 0
    assert (tmp_path / "my_numbers.csv").read_text() == "a,b\n1,2\n"
    assert (tmp_path / "images" / "my_plot.png").read_bytes() == b"\x89PNG mine"
    assert (tmp_path / "serving.csv").read_text() == "edited by hand\n"
    assert not (tmp_path / "search-0.csv").exists()


def test_interrupted_rerun_deletes_nothing_and_leaves_whole_files(tmp_path, monkeypatch):
    assert _report(tmp_path)[0] == 0
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    data = build.collect(["gemm:M=64,N=64,K=128"], [load_device(DEVICE)], ["dense", "2:4"])

    def ctrl_c(*args, **kwargs):  # Ctrl-C after the new tables and images are written, before the pages
        raise KeyboardInterrupt

    monkeypatch.setattr(render, "render_html", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        render.write_report(data, tmp_path)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert set(before) <= set(after)  # nothing removed
    assert not [p for p in after if p.name.startswith(".") and p.name != MANIFEST]  # no temporary file left
    for name in ("index.html", "report.md"):
        assert after[Path(name)] == before[Path(name)]
    assert "K=128" in after[Path("summary.csv")].decode()  # the new tables are whole files
    listed = json.loads((tmp_path / MANIFEST).read_text())["files"]
    assert {str(p) for p in after if p.name != MANIFEST} <= set(listed)  # and known as the report's
    monkeypatch.undo()
    assert _report(tmp_path)[0] == 0  # the rerun clears what the interrupted run left
    assert not list((tmp_path / "images").glob("*k-128*"))


def test_atomic_replace_keeps_the_old_file_on_failure(tmp_path):
    f = tmp_path / "model.pt"
    f.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic.replacing(f) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert f.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.pt"]


# ------------------------------------------------------------------ hostile names

def test_names_cannot_inject_html_or_spreadsheet_formulas(tmp_path):
    wl = dataclasses.replace(load_workload("gemm:M=64,N=64,K=64"), name="<script>alert(1)</script>")
    dev = dataclasses.replace(load_device(DEVICE), name='=HYPERLINK("http://evil","x")')
    data = build.collect([wl], [dev], ["dense", "2:4"])
    render.write_report(data, tmp_path)
    md = (tmp_path / "report.md").read_text()
    html = (tmp_path / "index.html").read_text()
    assert "<script" not in md and "&lt;script&gt;" in md
    assert "<script" not in html
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert set(summary["device"]) == {"'" + dev.name}
    assert set(summary["workload"]) == {wl.name}
    numbers = render.csv_safe(pd.DataFrame({"x": ["-1.5", "-", "+x", "@a", "plain"]}))
    assert list(numbers["x"]) == ["-1.5", "'-", "'+x", "'@a", "plain"]


# ------------------------------------------------------------------ search results

def _search_dir(tmp_path: Path) -> Path:
    """A search output directory as `sparsesim search` writes it (files, then search.json with hashes)."""
    from sparsesim.search.runner import manifest, write_result

    out = tmp_path / "s"
    out.mkdir()
    files = {}
    for key, name, data in (("plan", "plan.safetensors", b"plan"), ("model", "model.pt", b"model" * 100),
                            ("choice", "choice.json", b"{}")):
        atomic.write_bytes(out / name, data)
        files[key] = str(out / name)
    doc = {"workload": "digits", "device": DEVICE, "front": [{"source": "dp", "accuracy": 0.9, "latency_s": 1e-5}],
           "files": files, "manifest": manifest(out, files)}
    write_result(out, doc)
    return out


def test_search_result_is_checked_against_its_manifest(tmp_path):
    out = _search_dir(tmp_path)
    assert len(read_search_dir(out)) == 1
    model = out / "model.pt"
    model.write_bytes(model.read_bytes()[:100])  # a kill during the model save
    with pytest.raises(ReportError, match="model.pt does not match"):
        read_search_dir(out)
    model.unlink()
    with pytest.raises(ReportError, match="model.pt, which is missing"):
        read_search_dir(out)


def test_report_search_with_a_torn_output_is_one_line(tmp_path):
    out = _search_dir(tmp_path)
    (out / "plan.safetensors").write_bytes(b"a later, interrupted search")
    rc, _, err = _cli("report", *ARGS, "--search", str(out), "--out", str(tmp_path / "r"))
    assert rc == 2 and "plan.safetensors" in err and len(err.strip().splitlines()) == 1
