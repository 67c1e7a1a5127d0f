"""Fidelity of the CPU model on this host: a full calibration, then a full validation on shapes
the fit never saw, with the acceptance targets of the fidelity issue.

    .venv/bin/python benchmarks/bench_fidelity.py [--out PATH] [--threads 1] [--cases] [--json]

Targets: on unseen shapes, median |predicted/measured - 1| <= 15% for dense GEMM latency and
<= 20% for CSR and BSR speedup over dense at densities 0.01-0.5; the CSR-vs-dense crossover
density predicted within a factor of 1.5 (every shape). Also prints the published GPU figures
through the GPU model (median error <= 20%, direction right in every case). Timings use thread
CPU time with one torch thread, so other work on the machine inflates them little; the load
average at the start is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sparsesim.fidelity.calibrate import calibrate
from sparsesim.fidelity.validate import TARGETS, render, validate

GPU_TARGET = 0.20


def targets(doc: dict) -> list[tuple[str, str, bool]]:
    """(target, measured figure, met) for every acceptance target."""
    out = []
    for pat, limit in TARGETS.items():
        s = doc["summary"].get(pat)
        if s is None or s["median_abs_error"] is None:
            out.append((f"{pat} {(pat == 'dense' and 'latency') or 'speedup'} median <= {limit:.0%}", "no cases", False))
            continue
        out.append((f"{pat} {s['metric']} median |err| <= {limit:.0%}",
                    f"{s['median_abs_error']:.1%} (p90 {s['p90_abs_error']:.1%}, {s['cases']} cases)",
                    s["median_abs_error"] <= limit))
    cr = doc["crossover"]
    out.append((f"CSR crossover within {cr['factor']}x on every shape", f"{cr['within_target']}/{cr['total']}",
                cr["within_target"] == cr["total"]))
    g = doc["gpu_published"]
    med = g.get("median_abs_error")
    out.append((f"published GPU median |err| <= {GPU_TARGET:.0%}",
                "-" if med is None else f"{med:.1%} over {g['with_speedup']} measured speedups",
                med is not None and med <= GPU_TARGET))
    out.append(("published GPU direction right in every case", f"{g['direction_right']}/{g['direction_cases']}",
                g["direction_right"] == g["direction_cases"]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="device file to write (default: a temporary file)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cases", action="store_true", help="print every validated case")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "host.toml"
        say = (lambda m: print(f"bench_fidelity: {m}", file=sys.stderr))
        res = calibrate(out, quick=False, threads=args.threads, progress=say)
        doc = validate(str(out), quick=False, threads=args.threads, progress=say)
    doc["calibration"] = res.summary()
    checks = targets(doc)
    doc["targets"] = [{"target": t, "measured": m, "met": ok} for t, m, ok in checks]
    if args.json:
        json.dump(doc, sys.stdout, indent=1)
        print()
        return 0
    c = doc["calibration"]
    print(f"calibration: {c['cases']} cases in {c['wall_s']} s; fit errors (median, fit set): "
          + ", ".join(f"{k} {v:.1%}" for k, v in c["fit_error"].items()))
    print(render(doc, cases=args.cases))
    print()
    print("targets:")
    for t, m, ok in checks:
        print(f"  [{'met' if ok else 'NOT MET'}] {t}: {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
