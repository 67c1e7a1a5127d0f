"""Arguments several verbs share, declared once so they read and behave the same everywhere."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from sparsesim.core.errors import SparsesimError

WORKLOAD_HELP = "recipe, recipe file, single op or module.path:factory"
DEVICE_HELP = "built-in device name or path to a device .toml"


def add_workload_argument(p: argparse.ArgumentParser, help: str = WORKLOAD_HELP) -> None:
    p.add_argument("workload", help=help)


def add_device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", required=True, help=DEVICE_HELP)


def add_criterion_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--criterion", default="magnitude", help="mask criterion used to build masks")


def add_timing_arguments(p: argparse.ArgumentParser, *, quick_help: str, threads_help: str) -> None:
    """--quick and --threads of the verbs that time real kernels on this host."""
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--threads", type=int, default=1, help=threads_help)


def timing_progress(args: argparse.Namespace, verb: str) -> Callable[[str], None] | None:
    """Check --threads and return the progress printer (stderr; None under --json, so the
    document is all that is printed)."""
    if args.threads < 1:
        raise SparsesimError(f"{verb} --threads {args.threads}: must be >= 1")
    if getattr(args, "json", False):
        return None
    return lambda m: print(f"{verb}: {m}", file=sys.stderr)
