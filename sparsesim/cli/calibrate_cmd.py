"""`sparsesim calibrate`: time real kernels on this host and fit a CPU device file for it."""

from __future__ import annotations

import argparse
from typing import Any

from sparsesim.cli.common import add_timing_arguments, timing_progress

NAME = "calibrate"
HELP = "measure this CPU (dense GEMM per dtype, bandwidth, CSR/BSR matmuls) and fit a device file for it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="device file to write (default: host.toml in the user config directory, "
                             "e.g. ~/.config/sparsesim/accelerators/, found afterwards as --device host)")
    add_timing_arguments(parser,
                         quick_help="a small grid (a few seconds) for CI; the full grid takes well under a minute",
                         threads_help="torch threads while timing (default 1; recorded in the file)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sparsesim.fidelity.calibrate import calibrate

    progress = timing_progress(args, NAME)
    res = calibrate(args.out, quick=args.quick, threads=args.threads, progress=progress)
    doc = res.summary()
    doc["default_location"] = args.out is None
    return doc


def render(doc: dict[str, Any]) -> str:
    m, f = doc["measured"], doc["fitted"]
    lines = [
        f"wrote {doc['path']}" + ("  (use it as --device host)" if doc.get("default_location") else ""),
        f"  {doc['cpu']}, {doc['threads']} thread(s), {doc['date']}, {doc['cases']} timed cases in {doc['wall_s']} s",
        f"  measured: clock {m['clock_ghz']} GHz (effective), L2 {m['l2_bandwidth_gbs']} GB/s, "
        f"L3 {m['l3_bandwidth_gbs']} GB/s, DRAM {m['dram_bandwidth_gbs']} GB/s, call {m['call_overhead_us']} us",
    ]
    functions = m.get("function_cycles", {})
    if functions:
        lines.append("  measured, cycles an element: " + ", ".join(f"{k} {v:.2f}" for k, v in functions.items()))
    lines.append("  fitted (median |pred/meas - 1| on the fit set in brackets):")
    err = doc["fit_error"]
    tiles, tails = f.get("gemm_tile_m", {}), f.get("gemm_tail_cost", {})
    for dt, eff in f["gemm_efficiency"].items():
        tile = (f", tiles of {tiles[dt]:g} rows (a narrower one {tails[dt]:.2f} of a tile)"
                if dt in tiles and dt in tails else "")
        lines.append(f"    dense {dt}: efficiency {eff:.3f}, half-efficiency M {f['gemm_half_m'][dt]:.2f}{tile}  "
                     f"[{100 * err[dt]:.1f}%]")
    lines.append(f"    csr: {f['sparse_nnz_cycles']:.2f} cycles/nonzero floor, {f['sparse_vector_cycles']:.2f} cycles/vector step, "
                 f"{f['sparse_row_cycles']:.2f} cycles/row step, call {f['sparse_call_overhead_us']:.2f} us"
                 + (f"; one walk up to {f['csr_register_columns']:g} columns, passes of {f['csr_pass_columns']:g} beyond"
                    if f.get("csr_register_columns") else "")
                 + f"  [{100 * err['csr']:.1f}%]")
    values = f.get("bsr_value_cycles", {})
    bsr = ", ".join(f"{k} {values[k]:.2f}+{v:.2f}" if k in values else f"{k} {v:.2f}"
                    for k, v in f["bsr_vector_cycles"].items())
    block = f"{f['bsr_block_cycles']:.2f} cycles/block, " if f["bsr_block_cycles"] else ""  # 0: in the per-value costs
    lines.append(f"    bsr: {block}{f.get('bsr_row_cycles', 0.0):.2f} cycles/row step; "
                 f"per value {'fixed+' if values else ''}cycles/vector step {bsr}"
                 + (f"; steps of {f['bsr_vector_columns']:g} columns, {f['bsr_column_cycles']:.2f} cycles per leftover column"
                    if f.get("bsr_vector_columns") else "")
                 + f"  [{100 * err['bsr']:.1f}%]")
    lines.append("next: sparsesim validate   (predicted vs measured on shapes not used in this fit)")
    return "\n".join(lines)
