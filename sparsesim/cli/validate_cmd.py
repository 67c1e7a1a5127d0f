"""`sparsesim validate`: predicted vs measured kernels on this host, on shapes the fit never saw,
plus the published GPU figures through the GPU model."""

from __future__ import annotations

import argparse
import sys
from typing import Any

NAME = "validate"
HELP = "time a grid of dense/CSR/BSR/channel-pruned kernels here and print predicted vs measured with errors"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="host", metavar="host|PATH",
                        help="calibrated CPU device (default: accelerators/host.toml; calibrated "
                             "quickly first, and said so, if it does not exist)")
    parser.add_argument("--quick", action="store_true", help="a small grid (seconds) for CI")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while timing (default 1)")
    parser.add_argument("--no-cases", action="store_true", help="print only the error summary, not every case")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sparsesim.errors import SparsesimError
    from sparsesim.validate import validate

    if args.threads < 1:
        raise SparsesimError(f"validate --threads {args.threads}: must be >= 1")
    quiet = getattr(args, "json", False)
    doc = validate(args.device, quick=args.quick, threads=args.threads,
                   progress=None if quiet else (lambda m: print(f"validate: {m}", file=sys.stderr)))
    doc["show_cases"] = not args.no_cases
    return doc


def render(doc: dict[str, Any]) -> str:
    from sparsesim.validate import render as render_doc

    return render_doc(doc, cases=doc.get("show_cases", True))
