"""The on-disk cache of traces and costed tables: a hit gives the same tables without tracing,
every input that shapes a table is in its key, a bad entry is dropped with a warning, concurrent
writers leave a whole entry, and `sparsesim --help` imports no heavy module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sparsesim.core import diskcache
from sparsesim.core.errors import SparsesimWarning
from sparsesim.run import estimate as est

DEVICES = "a100-sxm4-80gb,xeon-sapphire-rapids"
PLANS = ["dense", "2:4", "unstructured:0.9"]
GEMM = "gemm:M=64,N=128,K=256,dtype=fp16"
META = "llama-tiny:device=meta"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(diskcache.OFF_ENV, raising=False)
    monkeypatch.setenv(diskcache.ROOT_ENV, str(tmp_path / "cache"))
    est.clear_cache()
    yield tmp_path / "cache"
    est.clear_cache()


def _no_tracing(monkeypatch):
    """From here on, tracing anything fails: what is returned must come from the disk cache."""
    import sparsesim.tracing.workloads as wls

    def refuse(spec):
        raise AssertionError(f"traced {spec!r} on a warm run")

    monkeypatch.setattr(wls, "load_workload", refuse)
    est.clear_cache()


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal frames; object columns (tuples of records that may hold NaN, which is never equal to
    itself) compared by their text."""
    objects = [c for c in a.columns if a[c].dtype == object]
    pd.testing.assert_frame_equal(a.drop(columns=objects), b.drop(columns=objects))
    for c in objects:
        assert list(map(repr, a[c])) == list(map(repr, b[c])), c


def _kinds() -> dict[str, int]:
    """Entries per kind: traces and per-op tables (`compare` also keeps its summary alone)."""
    out: dict[str, int] = {}
    for e in diskcache.entries():
        if e.kind == "summary":
            continue
        out[e.kind] = out.get(e.kind, 0) + 1
    return out


def test_hit_gives_identical_tables_without_tracing(cache_dir, monkeypatch):
    cold = est.compare_tables(GEMM, DEVICES, PLANS)
    one = est.estimate(GEMM, "a100-sxm4-80gb", "2:4")  # keyed apart from compare's tables
    assert _kinds() == {"costs": 2}
    _no_tracing(monkeypatch)
    warm = est.compare_tables(GEMM, DEVICES, PLANS)
    _same(cold.per_op, warm.per_op)
    _same(cold.summary, warm.summary)
    _same(one, est.estimate(GEMM, "a100-sxm4-80gb", "2:4"))
    assert (one["plan"] == "2:4").all()


def test_compare_reads_its_summary_back(cache_dir, monkeypatch):
    cold = est.compare(GEMM, DEVICES, PLANS)
    assert {e.kind for e in diskcache.entries()} == {"costs", "summary"}
    for e in diskcache.entries():
        if e.kind == "costs":
            e.path.unlink()  # a hit on the summary needs no per-op table
    _no_tracing(monkeypatch)
    _same(cold, est.compare(GEMM, DEVICES, PLANS))
    with pytest.raises(AssertionError, match="traced"):  # another plan order is another summary
        est.compare(GEMM, DEVICES, PLANS[::-1])


def test_meta_trace_is_cached_without_its_model(cache_dir, monkeypatch):
    cold = est.compare(META, "a100-sxm4-80gb", ["dense", "2:4"])
    assert _kinds() == {"costs": 1, "workload": 1}
    _no_tracing(monkeypatch)
    # a new plan misses the table but finds the trace: analytic stats need only shapes
    warm = est.compare(META, "a100-sxm4-80gb", ["dense", "2:4", "block4x4:0.5"])
    _same(cold.reset_index(drop=True),
                                  warm[warm["plan"].isin(["dense", "2:4"])].reset_index(drop=True))
    assert _kinds() == {"costs": 2, "workload": 1}


def test_changed_inputs_miss(cache_dir, tmp_path):
    base = est.compare(GEMM, "a100-sxm4-80gb", PLANS)
    est.compare(GEMM, "a100-sxm4-80gb", ["dense", "2:4"])  # another plan list
    est.compare(GEMM, "a100-sxm4-80gb", PLANS, dtype="int8")  # another deployment
    assert _kinds() == {"costs": 3}
    # an edited device file (same name, one number changed) misses and gives its own numbers
    src = REPO / "accelerators" / "a100-sxm4-80gb.toml"
    text = src.read_text()
    dev = tmp_path / "a100-sxm4-80gb.toml"
    dev.write_text(text)
    same = est.compare(GEMM, str(dev), PLANS)
    assert _kinds() == {"costs": 4}
    assert list(same["latency_s"]) == list(base["latency_s"])
    big = "gemm:M=2048,N=8192,K=8192,dtype=fp16"  # on the meta device; compute-bound on the GPU
    base = est.compare(big, str(dev), PLANS)
    assert _kinds() == {"costs": 5, "workload": 1}
    import re

    edited = re.sub(r"(\ndense_gemm_efficiency = \{ value = )([0-9.]+)", r"\g<1>0.40", text, count=1)
    assert edited != text
    dev.write_text(edited)
    slower = est.compare(big, str(dev), PLANS)
    assert _kinds() == {"costs": 6, "workload": 1}
    assert slower["latency_s"].iat[0] > base["latency_s"].iat[0]  # dense, at half the GEMM efficiency
    # another sparsesim version (code or libraries) misses too
    before = diskcache.code_version()
    try:
        diskcache._code_version = "another version"
        est.clear_cache()
        est.compare(GEMM, "a100-sxm4-80gb", PLANS)
    finally:
        diskcache._code_version = before
    assert _kinds() == {"costs": 7, "workload": 1}


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_bad_entry_is_dropped_with_a_warning_and_rebuilt(cache_dir, damage):
    cold = est.compare_tables(GEMM, DEVICES, PLANS).summary
    (entry,) = diskcache.entries()
    data = entry.path.read_bytes()
    if damage == "flip":
        data = data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:]
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = b"not a cache file at all"
    entry.path.write_bytes(data)
    est.clear_cache()
    with pytest.warns(SparsesimWarning, match="corrupt"):
        again = est.compare_tables(GEMM, DEVICES, PLANS).summary
    _same(cold, again)
    (rebuilt,) = diskcache.entries()
    assert diskcache.get(rebuilt.kind, rebuilt.path.stem) is not None  # rewritten whole


def test_unwritable_cache_costs_only_the_entry(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.delenv(diskcache.OFF_ENV, raising=False)
    monkeypatch.setenv(diskcache.ROOT_ENV, str(blocker / "cache"))
    est.clear_cache()
    with pytest.warns(SparsesimWarning, match="cannot write"):
        out = est.compare(GEMM, "a100-sxm4-80gb", PLANS)
    assert len(out) == len(PLANS)


_WRITER = """
import sys
from sparsesim.core import diskcache
value = [sys.argv[1]] * 200_000
for _ in range(15):
    diskcache.put("test", "k" * 32, value)
    got = diskcache.get("test", "k" * 32)
    assert got is not None and len(got) == 200_000 and len(set(got)) == 1, "a torn entry was read"
"""


def test_concurrent_writers_leave_a_whole_entry(cache_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO), diskcache.ROOT_ENV: str(cache_dir)}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, name], env=env, stderr=subprocess.PIPE)
             for name in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    got = diskcache.get("test", "k" * 32)
    assert got is not None and len(got) == 200_000 and got[0] in ("a", "b") and len(set(got)) == 1
    assert not list(cache_dir.rglob("*.tmp*"))  # no temporaries left behind


def test_trim_keeps_the_cache_bounded(cache_dir):
    for i in range(6):
        diskcache.put("test", f"{i:032d}", b"x" * 10_000)
        os.utime(diskcache._path("test", f"{i:032d}"), (i, i))  # entry i used at time i
    assert diskcache.trim(35_000) == 3
    assert [diskcache.get("test", f"{i:032d}") is not None for i in range(6)] == [False] * 3 + [True] * 3


def test_no_cache_and_cache_verb(cache_dir, cli):
    rc, _, err = cli("--no-cache", "compare", GEMM, "--devices", "a100-sxm4-80gb", "--plans", "2:4")
    assert rc == 0, err
    assert diskcache.entries() == [] and diskcache.enabled()
    rc, _, err = cli("compare", GEMM, "--devices", "a100-sxm4-80gb", "--plans", "2:4")
    assert rc == 0, err
    rc, out, _ = cli("cache", "info")
    assert rc == 0 and str(cache_dir) in out and "costs: 1 entries" in out
    rc, out, _ = cli("cache", "clear", "--json")
    assert rc == 0 and '"removed": 2' in out  # the per-op table and the verb's document
    assert diskcache.entries() == []


def test_an_edited_source_changes_the_code_version(tmp_path):
    src = tmp_path / "pkg" / "mod.py"
    src.parent.mkdir()
    src.write_text("A = 1\n")
    os.utime(src, ns=(1_000_000_000, 1_000_000_000))
    before = diskcache.source_stamps(tmp_path)
    assert before == (("pkg/mod.py", 6, 1_000_000_000),)
    src.write_text("A = 2\n")  # the same size, written later
    assert diskcache.source_stamps(tmp_path) != before
    os.utime(src, ns=(1_000_000_000, 1_000_000_000))
    assert diskcache.source_stamps(tmp_path) == before  # stamps, not bytes: as Python's bytecode cache
    src.write_text("A = 22\n")
    os.utime(src, ns=(1_000_000_000, 1_000_000_000))
    assert diskcache.source_stamps(tmp_path) != before  # another size


def test_installed_version_reads_what_importlib_metadata_reads():
    from importlib import metadata

    for name in diskcache.LIBRARIES:
        try:
            expected = metadata.version(name)
        except metadata.PackageNotFoundError:
            expected = None
        assert diskcache.installed_version(name) == expected, name
    assert diskcache.installed_version("no_such_distribution_anywhere") is None


def test_help_and_cache_info_import_no_heavy_module():
    code = ("import sys\nfrom sparsesim.cli import main\n"
            "for argv in (['--help'], ['cache', 'info']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "heavy = sorted(m for m in ('torch', 'pandas', 'scipy', 'transformers', 'matplotlib') if m in sys.modules)\n"
            "print('HEAVY', heavy)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, out.stdout[-500:]
    assert "VERB" in out.stdout  # the help was printed


_WARM_CLI = """
import sys
from sparsesim.cli import main
rc = main(sys.argv[1:])
heavy = sorted(m for m in ('torch', 'pandas', 'scipy', 'transformers', 'matplotlib', 'tqdm', 'importlib.metadata')
               if m in sys.modules)
print('HEAVY', heavy, 'RC', rc)
"""


def _cli_process(cache: Path, *argv: str) -> tuple[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), diskcache.ROOT_ENV: str(cache), "HF_HUB_OFFLINE": "1"}
    env.pop(diskcache.OFF_ENV, None)
    out = subprocess.run([sys.executable, "-c", _WARM_CLI, *argv], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    body, _, tail = out.stdout.rpartition("HEAVY")
    assert "RC 0" in tail, out.stdout[-500:]
    return body, "HEAVY" + tail


def test_warm_compare_prints_the_same_without_the_costing_stack(tmp_path):
    """A repeated `compare`/`estimate` reads its document back: the same output, neither torch nor
    pandas imported; an edited device file misses."""
    dev = tmp_path / "gpu.toml"
    dev.write_text((REPO / "accelerators" / "a100-sxm4-80gb.toml").read_text())
    cache = tmp_path / "cache"
    argv = ("compare", GEMM, "--devices", f"{dev},xeon-sapphire-rapids", "--plans", "dense,2:4", "--quiet")
    cold, cold_tail = _cli_process(cache, *argv)
    assert "torch" in cold_tail
    warm, warm_tail = _cli_process(cache, *argv)
    assert warm == cold and "HEAVY []" in warm_tail
    as_json, json_tail = _cli_process(cache, *argv, "--json")  # the same document, another rendering
    assert "HEAVY []" in json_tail and '"speedup_vs_dense"' in as_json
    one = ("estimate", GEMM, "--device", str(dev), "--plan", "2:4", "--quiet")
    _cli_process(cache, *one)
    assert "HEAVY []" in _cli_process(cache, *one)[1]
    dev.write_text(dev.read_text().replace("# NVIDIA", "# an edited comment: the same device", 1))
    assert "HEAVY []" in _cli_process(cache, *argv)[1]  # a comment changes no field
    dev.write_text(dev.read_text().replace("sm_count = { value = 108,", "sm_count = { value = 54,", 1))
    edited, edited_tail = _cli_process(cache, *argv)
    assert "torch" in edited_tail and edited != cold  # recomputed: another device


def test_remembered_replays_the_warnings_of_the_cold_run(cache_dir):
    import warnings

    def make():
        warnings.warn("something to know", SparsesimWarning, stacklevel=1)
        return {"value": 1}

    k = diskcache.key("doc", "test")
    for _ in range(2):
        with pytest.warns(SparsesimWarning, match="something to know"):
            assert diskcache.remembered("doc", k, make, lambda v: isinstance(v, dict)) == {"value": 1}
    assert [e.kind for e in diskcache.entries()] == ["doc"]


def test_warm_report_draws_and_simulates_nothing(cache_dir, monkeypatch):
    """The report's figures and serving curves are read back when their frames are unchanged;
    a changed frame draws again."""
    from sparsesim.report import build, figures, plots

    devs = build.resolve_devices(["a100-sxm4-80gb", "xeon-sapphire-rapids"])
    data = build.collect([GEMM], devs, ["dense", "2:4"], serving=True)
    cold = figures.make_figures(data)

    def refuse(*_a, **_k):
        raise AssertionError("drew or simulated on a warm run")

    monkeypatch.setattr(plots, "png", refuse)
    monkeypatch.setattr(build, "_serving_frame", refuse)
    warm_data = build.collect([GEMM], devs, ["dense", "2:4"], serving=True)
    pd.testing.assert_frame_equal(data.serving, warm_data.serving)
    warm = figures.make_figures(warm_data)
    assert {k: f.data for k, f in warm[GEMM].items()} == {k: f.data for k, f in cold[GEMM].items()}
    changed = build.ReportData(**{**warm_data.__dict__, "plans": ["2:4", "dense"]})
    with pytest.raises(AssertionError, match="drew"):
        figures.make_figures(changed)
