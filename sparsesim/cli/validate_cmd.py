"""`sparsesim validate`: predicted vs measured kernels on this host, on shapes the fit never saw,
plus the published GPU figures through the GPU model."""

from __future__ import annotations

import argparse
from typing import Any

from sparsesim.cli.common import add_timing_arguments, timing_progress

NAME = "validate"
HELP = "time a grid of dense/CSR/BSR/channel-pruned kernels here and print predicted vs measured with errors"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="host", metavar="host|PATH",
                        help="calibrated CPU device (default: `host`, written by `sparsesim calibrate` to the user config directory; calibrated "
                             "quickly first, and said so, if it does not exist)")
    add_timing_arguments(parser, quick_help="a small grid (seconds) for CI",
                         threads_help="torch threads while timing (default 1)")
    parser.add_argument("--no-cases", action="store_true", help="print only the error summary, not every case")
    parser.add_argument("--published", action="store_true",
                        help="only the published figures (device, runtime, dtype and shape of each case, with its "
                             "source) through the model: predicted vs published, no host timing")
    parser.add_argument("--measured", action="store_true",
                        help="only this project's own GPU measurements (benchmarks/gpu_measure.py, with the GPU and "
                             "date of each run) through the model: predicted vs measured, no host timing")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.published or args.measured:
        from sparsesim.fidelity.validate import gpu_published

        return {"published_only": True, "gpu_published": gpu_published(measured=args.measured),
                "show_cases": not args.no_cases}
    from sparsesim.fidelity.validate import validate

    progress = timing_progress(args, NAME)
    doc = validate(args.device, quick=args.quick, threads=args.threads, progress=progress)
    doc["show_cases"] = not args.no_cases
    return doc


def render(doc: dict[str, Any]) -> str:
    from sparsesim.fidelity.validate import render as render_doc
    from sparsesim.fidelity.validate import render_published

    if doc.get("published_only"):
        return render_published(doc["gpu_published"], cases=doc.get("show_cases", True))

    return render_doc(doc, cases=doc.get("show_cases", True))
