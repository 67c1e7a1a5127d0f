"""SCALE-Sim topology files as workloads and plans: read as SCALE-Sim reads them (peers.md),
costed on the FPGA family's PE array cycle for cycle, with bad files named by file and line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sparsesim.core.errors import PlanError, WorkloadError
from sparsesim.cost import estimate_op
from sparsesim.hw.devices import load_device
from sparsesim.run.estimate import compare_tables
from sparsesim.sparsity.plans import load_plan
from sparsesim.tracing.specs import spec_source
from sparsesim.tracing.topology import is_topology, load_topology, read_topology
from sparsesim.tracing.workloads import load_workload

CONV_HEADER = "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\n"
GEMM_HEADER = "Layer, M, N, K,\n"


def fresh_process(lines: tuple[str, ...]) -> list[str]:
    """The stdout lines of `lines` run as a program in a fresh interpreter (which must succeed)."""
    out = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.splitlines()


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_conv_rows_are_scalesims_layers(tmp_path):
    # ResNet's 3x3 64->64 conv on 56x56 with PyTorch's padding folded into the input (58x58),
    # a strided 3x3 sized with SCALE-Sim's ceiling, and a depthwise (DP) row
    f = write(tmp_path, "net.csv", CONV_HEADER
              + "conv3x3, 58, 58, 3, 3, 64, 64, 1,\n"
              + "strided, 8, 8, 3, 3, 4, 16, 2,\n"
              + "dw_DP, 10, 10, 3, 3, 32, 1, 1,\n")
    wl = load_topology(f)
    a, b, dw = wl.ops
    assert (a.gemm.m, a.gemm.n, a.gemm.k) == (3136, 64, 576)
    # ceil((8 - 3 + 2) / 2) = 4 (PyTorch's floor would give 3)
    assert b.output_shape == (1, 16, 4, 4) and b.gemm.m == 16
    # one single-channel layer per channel in SCALE-Sim: one grouped conv here
    assert (dw.gemm.groups, dw.gemm.m, dw.gemm.n, dw.gemm.k) == (32, 64, 1, 9)
    assert dw.weight_shape == (32, 1, 3, 3)
    assert all(op.dtype == "int8" for op in wl.ops) and wl.on_meta
    assert a.flops == 2 * 3136 * 64 * 576
    # OS 128x128: ceil(3136/128) * ceil(64/128) = 25 folds x (128 + 128 + 576 - 2) - 1 (SCALE-Sim: 20749)
    assert estimate_op(a, None, load_device("alveo-u250")).details["cycles"] == 20749


def test_gemm_rows_and_their_nm_column_as_a_plan(tmp_path):
    f = write(tmp_path, "mlp.csv", GEMM_HEADER + "fc1, 128, 768, 3072,\nfc2, 1024, 1024, 1024, 2:4,\n")
    wl = load_topology(f + ":dtype=fp16")
    assert [(op.kind, op.gemm.m, op.gemm.n, op.gemm.k, op.dtype) for op in wl.ops] == [
        ("linear", 128, 768, 3072, "fp16"), ("linear", 1024, 1024, 1024, "fp16")]
    plan = load_plan(f)
    assert plan.pattern_for("fc2.weight", "fc2").label == "2:4"
    assert plan.pattern_for("fc1.weight", "fc1").label == "dense"
    t = compare_tables(f, ["alveo-u250"], [f])
    ops = t.per_op[t.per_op["plan"] == f].set_index("module")
    assert ops.loc["fc2", "pattern"] == "2:4" and ops.loc["fc1", "pattern"] == "dense"
    assert ops.loc["fc2", "latency_s"] < t.per_op[(t.per_op["plan"] == "dense") & (t.per_op["module"] == "fc2")][
        "latency_s"].item()


def test_load_workload_and_the_cli_read_topologies(tmp_path, cli):
    f = write(tmp_path, "g.csv", GEMM_HEADER + "only, 64, 64, 64,\n")
    assert is_topology(f) and is_topology(f + ":dtype=fp16") and not is_topology("gemm:M=1,N=1,K=1")
    assert load_workload(f).ops == load_topology(f).ops
    rc, out, err = cli("--no-cache", "estimate", f, "--device", "alveo-u250")
    assert rc == 0, err
    assert "only" in out and "linear" in out


def test_the_cache_key_is_the_files_content(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("SPARSESIM_CACHE", str(tmp_path / "cache"))
    f = write(tmp_path, "g.csv", GEMM_HEADER + "only, 64, 64, 64,\n")
    before = spec_source(f)
    first = cli("estimate", f, "--device", "alveo-u250", "--json")
    assert cli("estimate", f, "--device", "alveo-u250", "--json") == first  # read back
    Path(f).write_text(GEMM_HEADER + "only, 64, 64, 128,\n")
    assert spec_source(f) != before
    changed = cli("estimate", f, "--device", "alveo-u250", "--json")
    assert changed[0] == 0 and json.loads(changed[1])["ops"][0]["flops"] == 2 * 64 * 64 * 128
    assert spec_source(str(tmp_path / "missing.csv")) is None


@pytest.mark.parametrize("text,match", [
    ("", "empty"),
    ("a, b, c,\nx, 1, 2, 3,\n", "neither SCALE-Sim's convolution header"),
    (GEMM_HEADER, "no layers after the header"),
    (GEMM_HEADER + "fc, 1, 2,\n", "line 2: 3 fields"),
    (GEMM_HEADER + "fc, 1, two, 3,\n", "line 2: N 'two' is not an integer"),
    (GEMM_HEADER + "fc, 1, 0, 3,\n", "line 2: N 0 must be at least 1"),
    (GEMM_HEADER + "fc, 1, 2, 3, 5:4,\n", "line 2: sparsity '5:4' is not an n:m ratio"),
    (GEMM_HEADER + "fc, 1, 2, 3,\nfc, 1, 2, 3,\n", "line 3: layer name 'fc' is repeated"),
    (CONV_HEADER + "c, 4, 4, 5, 5, 3, 8, 1,\n", "filter 5x5 is larger than the input 4x4"),
])
def test_bad_files_are_named_by_file_and_line(tmp_path, text, match):
    f = write(tmp_path, "bad.csv", text)
    with pytest.raises(WorkloadError, match=match) as e:
        read_topology(f)
    assert "bad.csv" in str(e.value)


def test_bad_specs_and_missing_files(tmp_path, cli):
    f = write(tmp_path, "g.csv", GEMM_HEADER + "only, 64, 64, 64,\n")
    with pytest.raises(WorkloadError, match="unknown parameter 'batch'"):
        load_topology(f + ":batch=2")
    with pytest.raises(WorkloadError, match="unknown dtype 'fp7'"):
        load_topology(f + ":dtype=fp7")
    with pytest.raises(PlanError, match="does not exist"):
        load_plan(str(tmp_path / "nope.csv"))
    rc, _, err = cli("--no-cache", "estimate", str(tmp_path / "nope.csv"), "--device", "alveo-u250")
    assert rc == 2 and "nope.csv" in err and "does not exist" in err and "Traceback" not in err


def test_costing_a_topology_imports_no_torch(tmp_path):
    """Reading, estimating, comparing under plans (analytic stats: no weights to mask), tracing
    and simulating a topology file, cold, in a fresh interpreter: torch (over a second to import)
    is never loaded; the pattern kinds, masks, stats and formula registry name it lazily."""
    g = write(tmp_path, "g.csv", GEMM_HEADER + "only, 64, 64, 64,\n")
    c = write(tmp_path, "c.csv", CONV_HEADER + "conv1, 56, 56, 3, 3, 64, 64, 1,\n" + "conv2_DP, 28, 28, 3, 3, 64, 1, 1, 2:4,\n")
    stdout = fresh_process((
        "import sys",
        "from sparsesim.tracing.topology import load_topology",
        f"load_topology({g!r})",
        "print('read', 'torch' in sys.modules)",
        "from sparsesim.cli import main",
        "for argv in (",
        f"    ['--no-cache', 'estimate', {c!r}, '--device', 'alveo-u250', '--quiet'],",
        f"    ['--no-cache', 'estimate', {g!r}, '--device', 'a100-sxm4-80gb', '--plan', '2:4', '--quiet'],",
        f"    ['--no-cache', 'compare', {c!r}, '--devices', 'alveo-u250,a100-sxm4-80gb',",
        f"     '--plans', '2:4,unstructured:0.5,channel:0.5,{c}', '--quiet'],",
        f"    ['--no-cache', 'trace', {c!r}],",
        f"    ['--no-cache', 'simulate', {c!r}, '--device', 'alveo-u250', '--quiet'],",
        "):",
        "    assert main(argv) == 0, argv",
        "    print(argv[1], 'torch' in sys.modules)",
    ))
    loaded = [line for line in stdout if line.endswith((" True", " False"))]
    assert loaded == [f"{verb} False" for verb in ("read", "estimate", "estimate", "compare", "trace", "simulate")], \
        stdout[-20:]


def test_printed_estimate_of_a_topology_needs_no_table_library(tmp_path):
    """The cold process of the SCALE-Sim side by side: an estimate (or a comparison) printed
    from a topology file on an FPGA array imports neither pandas nor numpy nor torch, nor the
    other families' cost models, and prints the numbers the DataFrame path gives."""
    c = write(tmp_path, "c.csv", CONV_HEADER + "conv1, 58, 58, 3, 3, 64, 64, 1,\n"
              + "conv2, 30, 30, 3, 3, 64, 128, 2,\n")
    *doc_lines, loaded = fresh_process((
        "import sys",
        "from sparsesim.cli import main",
        "import contextlib, io",
        "with contextlib.redirect_stdout(io.StringIO()):",
        f"    assert main(['--no-cache', 'compare', {c!r}, '--devices', 'alveo-u250', '--plans', 'dense,2:4']) == 0",
        f"assert main(['--no-cache', 'estimate', {c!r}, '--device', 'alveo-u250', '--dtype', 'int8', '--json']) == 0",
        "heavy = ('numpy', 'pandas', 'torch', 'sparsesim.cost.families.gpu', 'sparsesim.cost.families.cpu',",
        "         'sparsesim.cost.families.s4')",
        "print('loaded:', [m for m in heavy if m in sys.modules])",
    ))
    assert loaded == "loaded: []"
    doc = json.loads("\n".join(doc_lines))
    t = compare_tables(c, ["alveo-u250"], ["dense"], dtype="int8")
    row = t.summary.iloc[0]
    assert doc["totals"]["latency_s"] == pytest.approx(row["latency_s"], rel=1e-12)
    assert doc["totals"]["memory_bytes"] == pytest.approx(row["memory_bytes"], rel=1e-12)
    assert [o["latency_s"] for o in doc["ops"]] == pytest.approx(list(t.per_op["latency_s"]), rel=1e-12)
    assert doc["why"] == row["why"] and doc["bound"] == row["bound"]
