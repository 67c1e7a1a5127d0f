"""`sparsesim report`: the report builds, its Markdown and CSV carry the --json numbers, and a real
headless Chromium renders the page with no console errors, no network requests and no blank images."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sparsesim.cli import main
from sparsesim.hw.devices import builtin_devices
from sparsesim.report.fmt import fmt_q, fmt_x, parse_q

WORKLOAD = "resnet18:image=64"
PLANS = "dense,2:4,unstructured:0.9,channel:0.5"


def _two_devices() -> list[str]:
    """One device of each of two families (a GPU and a CPU where the tree has them)."""
    by_family: dict[str, str] = {}
    for d in builtin_devices():
        by_family.setdefault(d.family, Path(d.path).stem)
    order = [f for f in ("gpu", "cpu", "s4", "fpga") if f in by_family] + sorted(set(by_family) - {"gpu", "cpu", "s4", "fpga"})
    return [by_family[f] for f in order[:2]]


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("report")
    devices = _two_devices()
    rc, stdout, stderr = _cli("report", WORKLOAD, "--devices", ",".join(devices), "--plans", PLANS,
                              "--out", str(out), "--json")
    assert rc == 0, stderr
    return out, json.loads(stdout)


def test_report_writes_every_part(report):
    out, doc = report
    for name in ("index.html", "report.md", "summary.csv", "layers.csv.gz", "why_no_speedup.csv", "fallbacks.csv",
                 "provenance.csv", "serving.csv"):
        assert (out / name).is_file(), name
    pngs = sorted((out / "images").glob("*.png"))
    assert len(pngs) >= 5  # heatmap, time, energy, roofline, serving
    assert set(doc["plans"]) == set(PLANS.split(","))
    assert len(doc["summary"]) == len(doc["devices"]) * len(doc["plans"])
    # one best plan per device, and it is the fastest
    for dev in doc["devices"]:
        rows = [r for r in doc["summary"] if r["device"] == dev]
        best = [r for r in rows if r["best"]]
        assert len(best) == 1
        assert best[0]["speedup_vs_dense"] == max(r["speedup_vs_dense"] for r in rows)
    # the verdict names each device's plan with the best geometric-mean speedup, from the numbers
    for v in doc["verdicts"]:
        rows = [r for r in doc["summary"] if r["device"] == v["device"] and r["plan"] != "dense"]
        top = max(rows, key=lambda r: r["speedup_vs_dense"])  # one workload: geomean = the speedup
        assert v["best_plan"] == top["plan"]
        assert f"{top['speedup_vs_dense']:.2f}x" in v["text"]
        if top["plan"].startswith("channel"):  # and the best plan that keeps every channel
            keep = max((r for r in rows if not r["plan"].startswith("channel")), key=lambda r: r["speedup_vs_dense"])
            assert v["keep_channels_plan"] == keep["plan"]
        else:
            assert v["keep_channels_plan"] is None


def test_csv_carries_the_json_numbers(report):
    out, doc = report
    csv = pd.read_csv(out / "summary.csv")
    assert len(csv) == len(doc["summary"])
    for rec in doc["summary"]:
        row = csv[(csv["device"] == rec["device"]) & (csv["plan"] == rec["plan"])]
        assert len(row) == 1
        for key in ("latency_s", "energy_j", "memory_bytes", "speedup_vs_dense", "energy_vs_dense"):
            assert float(row[key].iloc[0]) == pytest.approx(rec[key], rel=1e-12), (rec["device"], rec["plan"], key)
        assert bool(row["best"].iloc[0]) == rec["best"]
    # the per-op table adds up to the summary
    layers = pd.read_csv(out / "layers.csv.gz")
    for rec in doc["summary"]:
        ops = layers[(layers["device"] == rec["device"]) & (layers["plan"] == rec["plan"])]
        assert ops["latency_s"].sum() == pytest.approx(rec["latency_s"], rel=1e-9)


def _md_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Summary tables of the Markdown page, keyed by workload."""
    tables = {}
    for m in re.finditer(r"^### Summary: (.+)\n\n((?:\|.*\|\n)+)", text, flags=re.M):
        lines = [ln for ln in m.group(2).strip().splitlines()]
        head = [c.strip() for c in lines[0].strip("|").split("|")]
        rows = [dict(zip(head, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]
        tables[m.group(1)] = rows
    return tables


def test_markdown_carries_the_json_numbers(report):
    out, doc = report
    md = (out / "report.md").read_text()
    tables = _md_tables(md)
    assert set(tables) == set(doc["workloads"])
    for wl, rows in tables.items():
        assert len(rows) == sum(r["workload"] == wl for r in doc["summary"])
        for row in rows:
            rec = next(r for r in doc["summary"] if r["workload"] == wl and r["device"] == row["device"]
                       and r["plan"] == row["plan"])
            for col, key in (("latency", "latency_s"), ("speedup vs dense", "speedup_vs_dense"),
                             ("energy", "energy_j"), ("energy vs dense", "energy_vs_dense"), ("memory", "memory_bytes")):
                # four significant digits on the page
                assert parse_q(row[col]) == pytest.approx(rec[key], rel=6e-4), (wl, row["device"], row["plan"], col)
            assert (row["best"] == "★") == rec["best"]
    for v in doc["verdicts"]:
        assert v["text"] in md
    for f in doc["files"]:
        if f.endswith(".png"):
            assert f"]({f})" in md or f.startswith("images/search")


@pytest.mark.parametrize("value,dim", [(1.234e-3, "time"), (9.99e-7, "time"), (2.5, "energy"), (3.2e10, "bytes"),
                                       (12345.0, "bytes"), (0.0421, "energy")])
def test_quantity_format_round_trips(value, dim):
    assert parse_q(fmt_q(value, dim)) == pytest.approx(value, rel=6e-4)
    assert parse_q(fmt_x(value)) == pytest.approx(value, rel=6e-4)


def test_bad_inputs_are_one_line_errors(tmp_path):
    rc, _, err = _cli("report", "gemm:M=64,N=64,K=64", "--devices", _two_devices()[0], "--out", str(tmp_path / "r"),
                      "--search", str(tmp_path / "nowhere"))
    assert rc == 2 and "nowhere" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "v.json"
    bad.write_text("{not json")
    rc, _, err = _cli("report", "gemm:M=64,N=64,K=64", "--devices", _two_devices()[0], "--out", str(tmp_path / "r"),
                      "--validation", str(bad))
    assert rc == 2 and "v.json" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_report_shows_a_search_front_and_a_validation(tmp_path):
    from sparsesim.fidelity.validate import validate

    cpu = next(Path(d.path).stem for d in builtin_devices() if d.family == "cpu")
    rc, out, err = _cli("search", "digits", "--device", cpu, "--target-speedup", "1.5", "--out", str(tmp_path / "s"),
                        "--json")
    assert rc == 0, err
    search = json.loads(out)
    vdoc = validate(cpu, quick=True)  # a named device: no host calibration written as a side effect
    (tmp_path / "v.json").write_text(json.dumps(vdoc))
    rc, out, err = _cli("report", "digits", "--devices", cpu, "--plans", "dense,unstructured:0.9", "--no-serving",
                        "--search", str(tmp_path / "s"), "--validation", str(tmp_path / "v.json"),
                        "--out", str(tmp_path / "r"), "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["searches"][0]["accuracy"] == search["accuracy"]
    assert doc["searches"][0]["speedup_vs_dense"] == search["speedup_vs_dense"]
    r = tmp_path / "r"
    md = (r / "report.md").read_text()
    assert "## Co-design search" in md and "## Fidelity: predicted against measured" in md
    row = next(ln for ln in md.splitlines() if ln.startswith(f"| {search['workload']} | {search['device']} |"))
    assert fmt_x(search["speedup_vs_dense"]) in row and f"{search['accuracy']:.4f}" in row
    front = pd.read_csv(r / "search-0.csv")
    assert len(front) == len(search["front"])
    assert sorted(front["accuracy"]) == pytest.approx(sorted(p["accuracy"] for p in search["front"]))
    assert len([f for f in doc["files"] if f.startswith("images/search-")]) == 3
    assert len(pd.read_csv(r / "validation.csv")) == len(vdoc["rows"])
    for pattern, e in vdoc["summary"].items():
        if e["median_abs_error"] is not None:
            assert f"| {pattern} | {e['metric']} | {e['cases']} | {100 * e['median_abs_error']:.1f}% |" in md


# ----------------------------------------------------------------------------- a real browser

class Chromium:
    """Headless Chromium driven over the DevTools protocol on --remote-debugging-pipe
    (commands in on fd 3, replies out on fd 4, NUL-terminated JSON): no extra packages."""

    FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync")

    def __init__(self, exe: str):
        self.profile = tempfile.mkdtemp(prefix="sparsesim-chromium-")
        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()

        def wire_fds() -> None:
            # move both ends above the low fds first so placing them on 3 and 4 cannot clobber either
            a = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen([exe, *self.FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe",
                                      "about:blank"], preexec_fn=wire_fds, pass_fds=(3, 4),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._recv(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def wait_for(self, event: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e["method"] == event for e in self.events):
            self._recv(deadline)

    def _recv(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\0")
        msg = json.loads(raw)
        if "method" in msg:
            self.events.append(msg)
        return msg

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close", timeout=10)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self._w)
        os.close(self._r)
        shutil.rmtree(self.profile, ignore_errors=True)


def _decode_png(data: bytes) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(data), format="png")


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Debian's chromium is not installed (apt-get install -y chromium; CI installs it)")
def test_chromium_renders_the_page_offline_with_every_image(report):
    out, doc = report
    page = (out / "index.html").resolve()
    html = page.read_text()
    # nothing that could fetch: no scripts, links or remote sources (device sources may cite URLs as text)
    assert not re.search(r"<script|<link|<iframe|<object|@import", html, flags=re.I)
    assert not re.search(r"""(?:src|href)\s*=\s*(?!["']?(?:data:|#))""", html, flags=re.I)
    assert not re.search(r"url\((?!\s*['\"]?data:)", html, flags=re.I)
    browser = Chromium(shutil.which("chromium"))
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            browser.send(f"{domain}.enable", session=s)
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=s)
        browser.send("Page.navigate", {"url": page.as_uri()}, session=s)
        browser.wait_for("Page.loadEventFired")
        images = browser.send("Runtime.evaluate", {"returnByValue": True, "expression": """
            Array.from(document.images).map(i => { i.scrollIntoView(); const r = i.getBoundingClientRect();
              return {w: i.naturalWidth, h: i.naturalHeight, done: i.complete,
                      x: r.left + window.scrollX, y: r.top + window.scrollY, cw: r.width, ch: r.height}; })"""},
            session=s)["result"]["value"]
        n_png = sum(f.endswith(".png") for f in doc["files"])
        assert len(images) == n_png
        for k, im in enumerate(images):
            assert im["done"] and im["w"] > 0 and im["h"] > 0, f"image {k} did not decode: {im}"
            shot = browser.send("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": im["x"], "y": im["y"], "width": im["cw"], "height": im["ch"], "scale": 1}}, session=s)
            pixels = _decode_png(base64.b64decode(shot["data"]))
            assert pixels.std() > 0.01, f"image {k} is blank on screen"
        height = browser.send("Runtime.evaluate", {"expression": "document.documentElement.scrollHeight",
                                                   "returnByValue": True}, session=s)["result"]["value"]
        full = browser.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": 1280, "height": min(height, 4000), "scale": 1}}, session=s)
        assert _decode_png(base64.b64decode(full["data"])).std() > 0.01
        time.sleep(0.3)
        browser.send("Runtime.evaluate", {"expression": "1"}, session=s)  # drain late events
    finally:
        browser.close()
    requests = [e["params"]["request"]["url"] for e in browser.events if e["method"] == "Network.requestWillBeSent"]
    fetched = [u for u in requests if not (u.startswith("data:") or u.startswith("file:") or u == "about:blank")]
    assert fetched == [], f"the page fetched {fetched}"
    errors = [e["params"] for e in browser.events
              if e["method"] == "Runtime.exceptionThrown"
              or (e["method"] == "Runtime.consoleAPICalled" and e["params"].get("type") in ("error", "assert", "warning"))
              or (e["method"] == "Log.entryAdded" and e["params"]["entry"].get("level") in ("error", "warning"))]
    assert errors == [], f"console errors: {errors}"
