"""Side by side with SCALE-Sim v3: compute cycles of the same layers on the same systolic arrays.

SCALE-Sim is an optional development tool, never a runtime dependency. Install it into its own
environment (numpy >= 2.4 crashes it):

    python3 -m venv /work/scalesim-venv
    /work/scalesim-venv/bin/pip install scalesim==3.0.0 numpy==2.3.5

and point SCALESIM_PYTHON at that interpreter (default /work/scalesim-venv/bin/python).

    .venv/bin/python benchmarks/scalesim_compare.py           # 128x128 on ResNet-18 + small GEMMs, 32x32 on a subset
    .venv/bin/python benchmarks/scalesim_compare.py --full    # every layer on every array (tens of minutes)
    .venv/bin/python benchmarks/scalesim_compare.py --whole   # whole processes, ResNet-18 on 32x32 WS (minutes)

For each array size and dataflow it runs SCALE-Sim (stall-free CALC bandwidth mode, outputs in
a temporary directory) and sparsesim's FPGA family on the same topology file (`sparsesim.tracing.topology`; a device
file derived from alveo-u250 with the array size and dataflow replaced), and prints per-layer compute cycles of both, their ratio,
and the wall time of both (sparsesim's costing, and reading its device file once per array apart).
Targets: every layer within 2%, the cost model >= 10,000x faster on every configuration.
`--whole` compares whole processes instead: SCALE-Sim on ResNet-18's 20 convolutions on a 32x32
weight-stationary array against `sparsesim estimate` on the same array, given the very topology
file SCALE-Sim read and, apart, ResNet-18 traced from PyTorch (each cold, then warm from the disk
cache; the median of `SPARSESIM_REPEATS` runs of each); target >= 1,000x. It also times two floors no cold sparsesim process can go under: a bare
interpreter, and one importing the modules such an estimate runs (the CLI, the costing path, the
topology reader and the FPGA family; no pandas, numpy or torch, which it does not need).

ResNet-18 convolutions are given to SCALE-Sim with PyTorch's padding folded into the input size:
SCALE-Sim sizes outputs as ceil((H - F + s) / s) and models no padding, so the input is set to
the extent PyTorch's padded convolution actually reads, (out - 1) * s + F, which gives both
tools the same implicit GEMM.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sparsesim.cost.families.fpga import fpga_cost
from sparsesim.cost.families.systolic import conv_output_size
from sparsesim.hw.devices import parse_device_doc
from sparsesim.tracing.topology import load_topology

DEFAULT_SCALESIM_PYTHON = "/work/scalesim-venv/bin/python"
TARGET_RATIO_ERROR = 0.02
TARGET_SPEEDUP = 10_000.0        # the cost model against the simulator, every configuration
TARGET_WHOLE_SPEEDUP = 1_000.0   # whole process against whole process (--whole)
# sparsesim's whole processes (a fraction of a second each, noisy) are timed this many times and
# the median taken; SCALE-Sim's (minutes) once
SPARSESIM_REPEATS = 5
BASE_DEVICE = REPO / "accelerators" / "alveo-u250.toml"


@dataclass(frozen=True)
class Conv:
    name: str
    size: int        # input height = width (before padding)
    kernel: int
    channels: int
    filters: int
    stride: int
    padding: int

    @property
    def out(self) -> int:
        return conv_output_size(self.size, self.kernel, self.stride, self.padding)

    @property
    def folded_input(self) -> int:
        """Input extent PyTorch's padded convolution reads: SCALE-Sim then sizes the same output."""
        return (self.out - 1) * self.stride + self.kernel

    @property
    def gemm(self) -> tuple[int, int, int]:
        return self.out * self.out, self.filters, self.channels * self.kernel * self.kernel


@dataclass(frozen=True)
class Gemm:
    name: str
    m: int
    n: int
    k: int

    @property
    def gemm(self) -> tuple[int, int, int]:
        return self.m, self.n, self.k


def resnet18_convs() -> list[Conv]:
    """The 20 convolutions of torchvision's ResNet-18 at 224x224 (batch 1)."""
    convs = [Conv("conv1", 224, 7, 3, 64, 2, 3)]
    size, ch = 56, 64
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            stride = 2 if stage > 1 and block == 0 else 1
            cin = ch if block == 0 else width
            convs.append(Conv(f"layer{stage}.{block}.conv1", size, 3, cin, width, stride, 1))
            out = conv_output_size(size, 3, stride, 1)
            convs.append(Conv(f"layer{stage}.{block}.conv2", out, 3, width, width, 1, 1))
            if stride != 1 or cin != width:
                convs.append(Conv(f"layer{stage}.{block}.downsample", size, 1, cin, width, stride, 0))
            size = out
        ch = width
    return convs


SMALL_GEMMS = [Gemm("gemm256", 256, 256, 256), Gemm("bert_qkv_seq128", 128, 768, 768), Gemm("fc_batch64", 64, 1000, 512)]
LARGE_GEMMS = [Gemm("gemm1024", 1024, 1024, 1024), Gemm("bert_ffn_seq128", 128, 768, 3072)]
# the 32x32 default subset: cheap for SCALE-Sim (its run time grows with cycles x array size)
SUBSET_32 = ("layer2.0.downsample", "layer3.0.downsample", "layer4.0.downsample")
SUBSET_32_GEMMS = ("gemm256", "fc_batch64")


CONFIG_TEMPLATE = """[general]
run_name = {run}

[architecture_presets]
ArrayHeight = {rows}
ArrayWidth = {cols}
IfmapSramSzkB = 6144
FilterSramSzkB = 6144
OfmapSramSzkB = 2048
IfmapOffset = 0
FilterOffset = 10000000
OfmapOffset = 20000000
Dataflow = {df}
ReadRequestBuffer = 32
WriteRequestBuffer = 32

[layout]
IfmapCustomLayout = False
FilterCustomLayout = False
IfmapSRAMBankBandwidth = 10
IfmapSRAMBankNum = 10
IfmapSRAMBankPort = 2
FilterSRAMBankBandwidth = 10
FilterSRAMBankNum = 10
FilterSRAMBankPort = 2

[sparsity]
SparsitySupport = false
SparseRep = ellpack_block
OptimizedMapping = false
BlockSize = 8
RandomNumberGeneratorSeed = 40

[run_presets]
InterfaceBandwidth = CALC
UseRamulatorTrace = False
"""

CONV_HEADER = "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\n"
GEMM_HEADER = "Layer, M, N, K,\n"

# runs inside the SCALE-Sim interpreter: one simulation, then its wall time and peak RSS as JSON
DRIVER = r"""
import json, resource, sys, time
from scalesim.scale_sim import scalesim
cfg, topo, layout, gemm, out = sys.argv[1:6]
t = time.perf_counter()
s = scalesim(save_disk_space=True, verbose=False, config=cfg, topology=topo, layout=layout,
             input_type_gemm=gemm == "1")
s.run_scale(top_path=out)
print(json.dumps({"wall_s": time.perf_counter() - t,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def scalesim_python() -> str:
    py = os.environ.get("SCALESIM_PYTHON", DEFAULT_SCALESIM_PYTHON)
    if not Path(py).is_file():
        sys.exit(
            f"SCALE-Sim interpreter not found at {py!r}. Install it in its own environment:\n"
            "  python3 -m venv /work/scalesim-venv && "
            "/work/scalesim-venv/bin/pip install scalesim==3.0.0 numpy==2.3.5\n"
            "or set SCALESIM_PYTHON to a Python that can `import scalesim`."
        )
    return py


def run_scalesim(py: str, workdir: Path, rows: int, cols: int, df: str, layers: list,
                 gemm: bool) -> tuple[list[int], dict, Path]:
    """Run one SCALE-Sim simulation of `layers`; (compute cycles per layer, {wall_s, max_rss_mb},
    the topology file it read: sparsesim reads the same file)."""
    run = f"a{rows}x{cols}_{df}_{'gemm' if gemm else 'conv'}"
    d = workdir / run
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.cfg").write_text(CONFIG_TEMPLATE.format(run=run, rows=rows, cols=cols, df=df))
    layout = d / "layout.csv"
    layout.write_text(CONV_HEADER)  # SCALE-Sim opens it even with custom layouts off
    topo = d / "topology.csv"
    if gemm:
        rows_txt = "".join(f"{g.name}, {g.m}, {g.n}, {g.k},\n" for g in layers)
        topo.write_text(GEMM_HEADER + rows_txt)
    else:
        rows_txt = "".join(
            f"{c.name}, {c.folded_input}, {c.folded_input}, {c.kernel}, {c.kernel}, {c.channels}, {c.filters}, {c.stride},\n"
            for c in layers
        )
        topo.write_text(CONV_HEADER + rows_txt)
    proc = subprocess.run(
        [py, "-c", DRIVER, str(d / "config.cfg"), str(topo), str(layout), "1" if gemm else "0", str(d / "out")],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        sys.exit(f"SCALE-Sim failed on {run} (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    with open(d / "out" / run / "COMPUTE_REPORT.csv") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader)]
        col = header.index("Total Cycles")
        cycles = [int(float(r[col])) for r in reader if r and r[0].strip()]
    if len(cycles) != len(layers):
        sys.exit(f"SCALE-Sim reported {len(cycles)} layers for {run}, expected {len(layers)}")
    return cycles, info, topo


@functools.cache
def array_device(rows: int, cols: int, df: str):
    """The alveo-u250 device file with the array size and dataflow of this comparison."""
    doc = tomllib.loads(BASE_DEVICE.read_text())
    src = "scalesim_compare: the array under comparison"
    doc["pe_rows"] = {"value": rows, "unit": "1", "source": src}
    doc["pe_cols"] = {"value": cols, "unit": "1", "source": src}
    doc["dataflow"] = {"value": {"os": "output_stationary", "ws": "weight_stationary"}[df], "source": src}
    return parse_device_doc(doc, f"{BASE_DEVICE.name} ({rows}x{cols} {df})")


def device_read_s(rows: int, cols: int, df: str) -> float:
    """Seconds to read and check the array's device file (once per array; cached after)."""
    t = time.perf_counter()
    array_device(rows, cols, df)
    return time.perf_counter() - t


def sparsesim_cycles(rows: int, cols: int, df: str, topology: Path) -> tuple[list[float], float]:
    """sparsesim's compute cycles of each layer of the topology file SCALE-Sim read, and the
    wall time of costing them all (the device file already read: `device_read_s`)."""
    dev = array_device(rows, cols, df)
    ops = load_topology(str(topology)).ops
    t = time.perf_counter()
    cycles = [fpga_cost(op, None, dev).details["cycles"] for op in ops]
    return cycles, time.perf_counter() - t


def whole_process(py: str, workdir: Path, rows: int, df: str) -> dict:
    """ResNet-18's 20 convolutions on a rows x rows array: SCALE-Sim as one process (its
    interpreter, imports and simulation) against sparsesim as one process on the same array's
    device file, twice: `sparsesim estimate topology.csv` on the very file SCALE-Sim read, and
    `sparsesim estimate resnet18` traced from PyTorch. Each is run cold (an empty cache) and then
    warm (the same command again, read back from the disk cache)."""
    from bench_speed import compile_bytecode  # benchmarks/ is this script's directory

    compile_bytecode()  # what an installed package has: a cold run reads the bytecode
    convs = resnet18_convs()
    t = time.perf_counter()
    _, _, topo = run_scalesim(py, workdir, rows, rows, df, convs, False)
    ss_wall = time.perf_counter() - t
    dev_file = workdir / f"array-{rows}x{rows}-{df}.toml"
    lines = [f'name = "array-{rows}x{rows}-{df}"', 'extends = "alveo-u250"',
             f'pe_rows = {{ value = {rows}, unit = "1", source = "scalesim_compare" }}',
             f'pe_cols = {{ value = {rows}, unit = "1", source = "scalesim_compare" }}',
             f'dataflow = {{ value = "{ {"os": "output_stationary", "ws": "weight_stationary"}[df] }", '
             'source = "scalesim_compare" }']
    dev_file.write_text("\n".join(lines) + "\n")
    out = {"array": f"{rows}x{rows}", "dataflow": df, "scalesim_s": ss_wall}
    for label, workload in (("topology", str(topo)), ("traced", "resnet18:device=meta")):
        argv = [sys.executable, "-m", "sparsesim", "estimate", workload, "--dtype", "int8",
                "--device", str(dev_file), "--quiet"]
        walls: dict[str, list[float]] = {"cold": [], "warm": []}
        for i in range(SPARSESIM_REPEATS):  # each repeat: a fresh cache, cold then warm
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "SPARSESIM_CACHE": str(workdir / f"cache-{label}-{i}"),
                   "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
            env.pop("SPARSESIM_NO_CACHE", None)
            for run in ("cold", "warm"):
                t = time.perf_counter()
                proc = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=REPO)
                walls[run].append(time.perf_counter() - t)
                if proc.returncode != 0:
                    sys.exit(f"sparsesim failed: {proc.stderr[-1500:]}")
        for run, ws in walls.items():
            wall = sorted(ws)[len(ws) // 2]
            out[f"{label}_{run}_s"] = wall
            out[f"{label}_{run}_all_s"] = ws
            out[f"{label}_{run}_speedup"] = ss_wall / wall
    for label, code in FLOORS.items():
        out[f"floor_{label}_s"] = floor_s(code)
        out[f"floor_{label}_speedup"] = ss_wall / out[f"floor_{label}_s"]
    return out


# what any cold sparsesim process pays before it reads its input: the interpreter, and the
# interpreter importing the modules a printed estimate of a topology file runs
FLOORS = {"interpreter": "pass",
          "imports": "import sparsesim.cli.estimate_cmd, sparsesim.run.estimate, sparsesim.tracing.topology, "
                     "sparsesim.cost.families.fpga"}


def floor_s(code: str, repeats: int = 3) -> float:
    """Median wall time of a fresh interpreter running `code`."""
    walls = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
        walls.append(time.perf_counter() - t)
    return sorted(walls)[len(walls) // 2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="every layer on every array, plus large GEMMs (tens of minutes)")
    ap.add_argument("--keep", metavar="DIR", help="write SCALE-Sim's inputs and outputs here instead of a temp dir")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--whole", action="store_true",
                    help="only the whole-process comparison: ResNet-18 on a 32x32 weight-stationary array "
                         "(SCALE-Sim takes minutes)")
    args = ap.parse_args(argv)
    py = scalesim_python()
    if args.whole:
        with tempfile.TemporaryDirectory(prefix="scalesim_whole_") as tmp:
            w = whole_process(py, Path(tmp), 32, "ws")
        if args.json:
            print(json.dumps(w, indent=2))
        else:
            print(f"ResNet-18 on a {w['array']} {w['dataflow']} array, whole process against whole process "
                  f"(target >= {TARGET_WHOLE_SPEEDUP:,.0f}x); SCALE-Sim {w['scalesim_s']:.1f} s; "
                  f"load average {os.getloadavg()[0]:.1f}")
            for label, what in (("topology", "the same topology file"), ("traced", "resnet18 traced from PyTorch")):
                for run in ("cold", "warm"):
                    x = w[f"{label}_{run}_speedup"]
                    runs = ", ".join(f"{v:.2f}" for v in w[f"{label}_{run}_all_s"])
                    print(f"  sparsesim, {what}, {run}: {w[f'{label}_{run}_s']:.2f} s = {x:,.0f}x "
                          f"({'met' if x >= TARGET_WHOLE_SPEEDUP else 'NOT met'}; median of {runs} s)")
            for label, what in (("interpreter", "an interpreter alone"),
                                ("imports", "an interpreter importing the modules the estimate runs")):
                print(f"  floor: {what}: {w[f'floor_{label}_s']:.2f} s = {w[f'floor_{label}_speedup']:,.0f}x")
        return 0

    convs = resnet18_convs()
    gemms = SMALL_GEMMS + (LARGE_GEMMS if args.full else [])
    plan = []
    for rows, df in ((128, "os"), (128, "ws"), (32, "os"), (32, "ws")):
        if args.full or rows == 128:
            plan.append((rows, df, convs, gemms))
        else:
            plan.append((rows, df, [c for c in convs if c.name in SUBSET_32],
                         [g for g in gemms if g.name in SUBSET_32_GEMMS]))

    tmp = None
    if args.keep:
        workdir = Path(args.keep)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="scalesim_compare_")
        workdir = Path(tmp.name)

    rows_out, configs = [], []
    try:
        for rows, df, cv, gm in plan:
            ss_wall, sp_wall, rss = 0.0, 0.0, 0.0
            read_s = device_read_s(rows, rows, df)
            for layers, gemm in ((cv, False), (gm, True)):
                if not layers:
                    continue
                ss, info, topo = run_scalesim(py, workdir, rows, rows, df, layers, gemm)
                sp, wall = sparsesim_cycles(rows, rows, df, topo)
                ss_wall += info["wall_s"]
                sp_wall += wall
                rss = max(rss, info["max_rss_mb"])
                for layer, a, b in zip(layers, ss, sp):
                    m, n, k = layer.gemm
                    rows_out.append({"array": f"{rows}x{rows}", "dataflow": df, "layer": layer.name,
                                     "M": m, "N": n, "K": k, "scalesim_cycles": a, "sparsesim_cycles": b,
                                     "ratio": b / a})
            configs.append({"array": f"{rows}x{rows}", "dataflow": df, "layers": len(cv) + len(gm),
                            "scalesim_wall_s": ss_wall, "sparsesim_wall_s": sp_wall, "device_read_s": read_s,
                            "speedup": ss_wall / sp_wall if sp_wall > 0 else float("inf"),
                            "speedup_with_device_read": ss_wall / (sp_wall + read_s),
                            "scalesim_max_rss_mb": rss})
            if not args.json:
                print(f"... {rows}x{rows} {df}: SCALE-Sim {ss_wall:.1f} s, sparsesim {sp_wall * 1e3:.2f} ms", file=sys.stderr)
    finally:
        if tmp is not None:
            tmp.cleanup()

    worst = max(abs(r["ratio"] - 1) for r in rows_out)
    slowest = min(c["speedup"] for c in configs)
    summary = {"layers_compared": len(rows_out), "max_abs_ratio_error": worst, "min_speedup": slowest,
               "load_average_1min": os.getloadavg()[0], "cpus": os.cpu_count(),
               "cycles_within_2pct": worst <= TARGET_RATIO_ERROR, "speedup_met": slowest >= TARGET_SPEEDUP}
    if args.json:
        print(json.dumps({"layers": rows_out, "configs": configs, "summary": summary}, indent=2))
        return 0
    print(f"{'array':>7} {'df':>2} {'layer':<22} {'M':>6} {'N':>5} {'K':>5} {'SCALE-Sim':>11} {'sparsesim':>11} {'ratio':>7}")
    for r in rows_out:
        print(f"{r['array']:>7} {r['dataflow']:>2} {r['layer']:<22} {r['M']:>6} {r['N']:>5} {r['K']:>5} "
              f"{r['scalesim_cycles']:>11,} {r['sparsesim_cycles']:>11,.0f} {r['ratio']:>7.4f}")
    print()
    print(f"{'array':>7} {'df':>2} {'layers':>6} {'SCALE-Sim s':>12} {'sparsesim s':>12} {'speedup':>10} "
          f"{'+device file s':>15} {'speedup':>10} {'SCALE-Sim RSS MB':>17}")
    for c in configs:
        print(f"{c['array']:>7} {c['dataflow']:>2} {c['layers']:>6} {c['scalesim_wall_s']:>12.2f} "
              f"{c['sparsesim_wall_s']:>12.5f} {c['speedup']:>10,.0f} {c['device_read_s']:>15.5f} "
              f"{c['speedup_with_device_read']:>10,.0f} {c['scalesim_max_rss_mb']:>17,.0f}")
    print()
    print(f"machine: {summary['cpus']} CPUs, 1-minute load average {summary['load_average_1min']:.1f} at the end "
          "(SCALE-Sim's wall time grows with the load; sparsesim's hardly moves)")
    print(f"{len(rows_out)} layers: worst |ratio - 1| = {worst:.2%} (target <= {TARGET_RATIO_ERROR:.0%}: "
          f"{'met' if summary['cycles_within_2pct'] else 'NOT met'}); slowest speedup of the cost model {slowest:,.0f}x "
          f"(target >= {TARGET_SPEEDUP:,.0f}x: {'met' if summary['speedup_met'] else 'NOT met'}; "
          f"{min(c['speedup_with_device_read'] for c in configs):,.0f}x with reading the device file once per array)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
