"""Speed and memory of whole `sparsesim` runs, before/after measured in one run (issue: speed and scale).

Every figure is a whole process (wall clock and its own peak RSS from wait4), so the ratios are
what a user sees:

- startup: `sparsesim --help` against importing what it imported before the lazy imports
  (torch, pandas, scipy.stats and the costing path), and which heavy modules --help loads now;
- cache: `compare WORKLOAD` cold (a fresh, empty cache directory) against warm (the same
  command again), per workload, with peak RSS of each;
- bulk costing: ops costed per second one by one (every op through the family model, as without
  the memo) against the memoised path (`run.estimate.cost_table`, each distinct op costed once),
  checked to give the same numbers;
- mask building: masks and stats from real weights for the five default plans on a
  268M-parameter MLP, in this process;
- large configs (--large): trace + compare of the 405B-class and MoE recipes on the meta device,
  cold, with peak RSS;
- the default report (--report): `sparsesim report`, cold then warm;
- search: `sparsesim search minilm --device s4-antoum --target-speedup 1.5` from the command
  line, cold (needs the `minilm` extra).

    .venv/bin/python benchmarks/bench_speed.py                       # bert-base, resnet50, llama2-7b/70b
    .venv/bin/python benchmarks/bench_speed.py --workloads resnet50 --devices a100-sxm4-80gb
    .venv/bin/python benchmarks/bench_speed.py --large               # adds the large recipes
    .venv/bin/python benchmarks/bench_speed.py --report              # adds the default report, cold and warm

A loaded shared machine inflates every wall time; the load average is printed with the table.
"Cold" is an empty sparsesim cache, not a first run after install: the package's bytecode is
compiled first (`compile_bytecode`), as pip does at install and as Python itself does on a first
import unless PYTHONDONTWRITEBYTECODE is set (some sandboxes set it, and every process would
then recompile ~200 modules, 0.1-0.25 s of each cold figure).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# targets of the issue (seconds, MB)
HELP_TARGET_S = 0.5
WARM_TARGET_S = 1.0
COLD_TARGET_S = {"bert-base": 5.0, "resnet50": 5.0}
LARGE_TARGET_S, LARGE_TARGET_MB = 30.0, 2048.0
MASKS_TARGET_S = 10.0
REPORT_WARM_TARGET_S, REPORT_COLD_TARGET_S = 15.0, 60.0
SEARCH_TARGET_S = 60.0
SEARCH_ARGS = ("search", "minilm", "--device", "s4-antoum", "--target-speedup", "1.5")
MASK_WIDTH, MASK_LAYERS = 8192, 4  # four 8192x8192 linears: 268M parameters
LARGE = ("llama3-70b", "llama3-405b", "mixtral-8x22b", "deepseek-v3")
BEFORE_IMPORTS = "import torch, pandas, scipy.stats, sparsesim.run.estimate, sparsesim.cli"


def compile_bytecode() -> None:
    """Write sparsesim's bytecode (__pycache__), so a child process reads it as an installed
    package does instead of compiling every module."""
    import compileall

    compileall.compile_dir(str(REPO / "sparsesim"), quiet=1)


def run(argv: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """(wall s, peak RSS MB, exit code, stderr tail) of one child process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    assert p.stderr is not None
    err = p.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t0, usage.ru_maxrss / 1024, p.returncode, err.strip()[-300:]


def sparsesim(*args: str) -> list[str]:
    return [sys.executable, "-m", "sparsesim", *args]


def base_env(cache: Path | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1"}
    env.pop("SPARSESIM_NO_CACHE", None)
    if cache is not None:
        env["SPARSESIM_CACHE"] = str(cache)
    return env


def verdict(value: float, target: float | None) -> str:
    return "" if target is None else ("met" if value < target else "NOT met")


def startup(rows: list[tuple[str, ...]]) -> None:
    env = base_env(None)
    before = min(run([sys.executable, "-c", BEFORE_IMPORTS], env)[0] for _ in range(2))
    after = min(run(sparsesim("--help"), env)[0] for _ in range(3))
    code = ("import sys\nfrom sparsesim.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print([m for m in ('torch', 'pandas', 'scipy', 'transformers', 'matplotlib') if m in sys.modules], "
            "file=sys.stderr)")
    heavy = run([sys.executable, "-c", code], env)[3].splitlines()[-1]
    rows.append(("sparsesim --help", f"{after:.2f} s", f"imports before: {before:.2f} s",
                 f"{before / after:.1f}x", f"< {HELP_TARGET_S} s: {verdict(after, HELP_TARGET_S)}; heavy modules: {heavy}"))


def cache(rows: list[tuple[str, ...]], workloads: list[str], devices: str | None) -> None:
    for wl in workloads:
        with tempfile.TemporaryDirectory(prefix="sparsesim-bench-cache-") as tmp:
            env = base_env(Path(tmp))
            argv = sparsesim("compare", wl, *(["--devices", devices] if devices else []))
            cold, cold_mb, rc, err = run(argv, env)
            if rc:
                rows.append((f"compare {wl}", "failed", err, "", ""))
                continue
            warm, warm_mb, rc, err = run(argv, env)
        target = COLD_TARGET_S.get(wl.partition(":")[0])
        rows.append((f"compare {wl}", f"warm {warm:.2f} s, {warm_mb:.0f} MB",
                     f"cold {cold:.2f} s, {cold_mb:.0f} MB", f"{cold / warm:.1f}x time, {cold_mb / warm_mb:.1f}x RSS",
                     f"warm < {WARM_TARGET_S} s: {verdict(warm, WARM_TARGET_S)}"
                     + (f"; cold < {target} s: {verdict(cold, target)}" if target else "")))


def bulk(rows: list[tuple[str, ...]], workload: str, devices: str | None) -> None:
    """In this process: the per-op reference against the memoised costing path."""
    os.environ["SPARSESIM_NO_CACHE"] = "1"
    from sparsesim.cost import estimate_op
    from sparsesim.run import estimate as est
    from sparsesim.runtime import apply_runtime, fuse

    devs = est.resolve_devices(devices)
    prepared = est.prepare(workload, ["dense", "2:4", "unstructured:0.9"])
    n = sum(len(sw.ops) for sw in prepared.sparse.values()) * len(devs)
    t0 = time.perf_counter()
    table = est.cost_table(prepared, devs)
    memo_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    one_by_one = []
    for sw in prepared.sparse.values():
        ctx = est.run_context(sw)
        for dev in devs:
            rt_name, rt = dev.runtime(ctx.runtime)
            fusion = fuse(sw.ops, elementwise=rt.fuse_elementwise, epilogue=rt.fuse_epilogue)
            for op, fu in zip(sw.ops, fusion):
                cost = estimate_op(op, sw.sparsity_of(op), dev, ctx)
                one_by_one.append(apply_runtime(cost, fu, rt, name=rt_name).latency_s)
    ref_s = time.perf_counter() - t0
    same = list(table["latency_s"]) == one_by_one
    rows.append((f"costing {workload}", f"memoised {n / memo_s:,.0f} ops/s", f"one by one {n / ref_s:,.0f} ops/s",
                 f"{ref_s / memo_s:.1f}x", f"{n} op costs, identical latencies: {same}"))


def masks(rows: list[tuple[str, ...]]) -> None:
    """In this process: masks and stats from real weights for the five default plans on a
    268M-parameter MLP (the sparsify stage alone, after one trace, through the cache compare
    shares between plans), one torch thread."""
    os.environ["SPARSESIM_NO_CACHE"] = "1"
    import torch
    from torch import nn

    from sparsesim.run import DEFAULT_PLANS
    from sparsesim.run.estimate import sparsify_cached
    from sparsesim.tracing.tracer import trace

    torch.set_num_threads(1)
    torch.manual_seed(0)
    layers = [m for _ in range(MASK_LAYERS) for m in (nn.Linear(MASK_WIDTH, MASK_WIDTH), nn.ReLU())]
    model = nn.Sequential(*layers[:-1]).eval()
    params = sum(p.numel() for p in model.parameters())
    wl = trace(model, (torch.randn(8, MASK_WIDTH),), name="mlp-268m")
    per_plan = []
    t0 = time.perf_counter()
    for plan in DEFAULT_PLANS:
        t = time.perf_counter()
        sparsify_cached(wl, plan)  # as compare builds them: one cache shared by the plans
        per_plan.append(f"{plan} {time.perf_counter() - t:.1f}")
    wall = time.perf_counter() - t0
    rows.append((f"masks + stats, {params / 1e6:.0f}M-parameter MLP, 5 plans", f"{wall:.1f} s ({', '.join(per_plan)} s)",
                 "", "", f"< {MASKS_TARGET_S:.0f} s: {verdict(wall, MASKS_TARGET_S)}"))


def large(rows: list[tuple[str, ...]], devices: str | None) -> None:
    for wl in LARGE:
        if not (REPO / "workloads" / f"{wl}.toml").is_file():
            rows.append((f"trace+compare {wl}", "no recipe", "", "", ""))
            continue
        with tempfile.TemporaryDirectory(prefix="sparsesim-bench-cache-") as tmp:
            wall, mb, rc, err = run(sparsesim("compare", wl, *(["--devices", devices] if devices else [])),
                                    base_env(Path(tmp)))
        ok = f"< {LARGE_TARGET_S:.0f} s: {verdict(wall, LARGE_TARGET_S)}, < {LARGE_TARGET_MB:.0f} MB: " \
             f"{verdict(mb, LARGE_TARGET_MB)}"
        rows.append((f"trace+compare {wl}", f"{wall:.1f} s, {mb:.0f} MB" if rc == 0 else f"failed: {err}", "cold", "",
                     ok if rc == 0 else ""))


def report(rows: list[tuple[str, ...]]) -> None:
    """`sparsesim report` on its default workloads and devices, cold (an empty cache) then warm."""
    with tempfile.TemporaryDirectory(prefix="sparsesim-bench-cache-") as tmp:
        env = base_env(Path(tmp) / "cache")
        argv = sparsesim("report", "--out", str(Path(tmp) / "report"))
        cold, cold_mb, rc, err = run(argv, env)
        if rc:
            rows.append(("report (default)", "failed", err, "", ""))
            return
        warm, warm_mb, rc, err = run(argv, env)
    rows.append(("report (default)", f"warm {warm:.1f} s, {warm_mb:.0f} MB", f"cold {cold:.1f} s, {cold_mb:.0f} MB",
                 f"{cold / warm:.1f}x time",
                 f"warm < {REPORT_WARM_TARGET_S:.0f} s: {verdict(warm, REPORT_WARM_TARGET_S)}; "
                 f"cold < {REPORT_COLD_TARGET_S:.0f} s: {verdict(cold, REPORT_COLD_TARGET_S)}"))


def search(rows: list[tuple[str, ...]]) -> None:
    """`sparsesim search minilm --device s4-antoum --target-speedup 1.5` from the command line, a
    whole process with an empty cache (MiniLM's weights need the `minilm` extra)."""
    what = "sparsesim " + " ".join(SEARCH_ARGS)
    with tempfile.TemporaryDirectory(prefix="sparsesim-bench-search-") as tmp:
        wall, mb, rc, err = run(sparsesim(*SEARCH_ARGS, "--out", str(Path(tmp) / "out"), "--quiet"),
                                base_env(Path(tmp) / "cache"))
    if rc:
        rows.append((what, "failed", err, "", ""))
        return
    rows.append((what, f"{wall:.1f} s, {mb:.0f} MB", "cold", "",
                 f"< {SEARCH_TARGET_S:.0f} s: {verdict(wall, SEARCH_TARGET_S)}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="bert-base,resnet50,llama2-7b,llama2-70b", help="comma-separated specs for cold/warm compare")
    ap.add_argument("--devices", default=None, help="comma-separated devices (default: all)")
    ap.add_argument("--bulk-workload", default="llama3-8b", help="workload of the costing-rate figure")
    ap.add_argument("--large", action="store_true", help="also trace and compare the large meta-device recipes")
    ap.add_argument("--report", action="store_true", help="also time the default report, cold and warm (~70 s)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: startup,cache,search,bulk,masks")
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    compile_bytecode()
    rows: list[tuple[str, ...]] = []
    if "startup" not in skip:
        startup(rows)
    if "cache" not in skip:
        cache(rows, [w for w in args.workloads.split(",") if w], args.devices)
    # child processes first: a child forked after the in-process parts (bulk, masks) below would
    # report their peak RSS as its own (ru_maxrss counts the pages it inherits before exec)
    if args.large:
        large(rows, args.devices)
    if args.report:
        report(rows)
    if "search" not in skip:
        search(rows)
    if "bulk" not in skip:
        bulk(rows, args.bulk_workload, args.devices)
    if "masks" not in skip:
        masks(rows)
    load = os.getloadavg()
    print(f"sparsesim speed, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    heads = ("what", "after", "before", "ratio", "target")
    widths = [max(len(str(r[i])) for r in [heads, *rows]) for i in range(len(heads))]
    for r in [heads, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


if __name__ == "__main__":
    main()
