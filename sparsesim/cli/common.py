"""Arguments several verbs share, declared once so they read and behave the same everywhere."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any

from sparsesim.core.errors import SparsesimError

WORKLOAD_HELP = "recipe, recipe file, single op or module.path:factory"
DEVICE_HELP = "built-in device name or path to a device .toml"


def add_workload_argument(p: argparse.ArgumentParser, help: str = WORKLOAD_HELP) -> None:
    p.add_argument("workload", help=help)
    p.add_argument("--routing", default="",
                   help="routing of a Mixture-of-Experts recipe's experts: uniform, zipf:A (skewed), measured "
                        "(the real router, real weights only), each optionally +cf:C (capacity factor); "
                        "the same as the recipe parameter routing=...; default: measured with real weights, else uniform")


def workload_spec(args: argparse.Namespace) -> str:
    """The workload spec with --routing folded in as the recipe parameter `routing`."""
    routing = getattr(args, "routing", "")
    if not routing:
        return str(args.workload)
    head, sep, tail = str(args.workload).partition(":")
    return f"{args.workload},routing={routing}" if sep and tail else f"{head}:routing={routing}"


def add_device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", required=True, help=DEVICE_HELP)


def known_kernels() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The kernel names `--kernel` accepts, GPU then CPU, from the families' registries."""
    from sparsesim.cost.families.cpu_kernels import CPU_KERNELS
    from sparsesim.cost.families.gpu_kernels import KERNELS

    return tuple(KERNELS), tuple(CPU_KERNELS)


def add_deployment_arguments(p: argparse.ArgumentParser) -> None:
    """--runtime, --kernel and --dtype: how the model is deployed, beyond the device."""
    from sparsesim.hw.runtimes import RUNTIME_HELP, RUNTIMES
    from sparsesim.tracing.retype import DEPLOY_DTYPES

    p.add_argument("--runtime", default="", choices=("",) + RUNTIMES, metavar="|".join(RUNTIMES),
                   help=f"{RUNTIME_HELP}; default: each device file's default runtime")
    gpu_kernels, cpu_kernels = known_kernels()
    p.add_argument("--kernel", default="",
                   help=f"force one kernel library for the ops it serves (GPU: {', '.join(gpu_kernels)}; "
                        f"CPU: {', '.join(cpu_kernels)}); default: the runtime picks the fastest it offers")
    p.add_argument("--dtype", default="", choices=("",) + DEPLOY_DTYPES, metavar="|".join(DEPLOY_DTYPES),
                   help="deploy the model at this dtype (int8 and fp8 quantise GEMMs and the activations: "
                        "between them under an engine, each linear's input on the fly under eager and compiled; "
                        "int8wo and int4 are weight-only); default: as traced")


def add_cluster_argument(p: argparse.ArgumentParser) -> None:
    """--dask-scheduler of the verbs that cost many (workload, device) cells."""
    p.add_argument("--dask-scheduler", default="", metavar="ADDRESS",
                   help="cost each (workload, device) cell as a task on an existing Dask cluster (needs the "
                        "'cluster' extra; every worker must have sparsesim and the workload's code); the "
                        "results are the same as a local run's")


def deployment(args: argparse.Namespace) -> dict[str, str]:
    """The deployment keyword arguments of the run API, from --runtime/--kernel/--dtype."""
    if args.kernel:
        known = tuple(dict.fromkeys(chain(*known_kernels())))  # a name both families use is listed once
        if args.kernel not in known:
            import difflib

            close = difflib.get_close_matches(args.kernel, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SparsesimError(f"--kernel {args.kernel!r}: unknown kernel (known: {', '.join(known)}){hint}")
    return {"runtime": args.runtime, "kernel": args.kernel, "dtype": args.dtype}


def add_criterion_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--criterion", default="magnitude", help="mask criterion used to build masks")


def add_timing_arguments(p: argparse.ArgumentParser, *, quick_help: str, threads_help: str) -> None:
    """--quick and --threads of the verbs that time real kernels on this host."""
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--threads", type=int, default=1, help=threads_help)


def timing_progress(args: argparse.Namespace, verb: str) -> Callable[[str], None] | None:
    """Check --threads and return the progress printer: a line per timing stage on stderr, shown
    as every progress display is (`sparsesim.core.progress`); None under --json, so the document
    is all that is printed."""
    if args.threads < 1:
        raise SparsesimError(f"{verb} --threads {args.threads}: must be >= 1")
    if getattr(args, "json", False):
        return None
    from sparsesim.core import progress

    return lambda m: progress.note(f"{verb}: {m}")


def user_devices_joining(devices_given: object) -> list[dict[str, str]]:
    """The user's own devices (e.g. the calibrated `host`) that join a comparison because no
    devices were named: said in the output, since they would otherwise join silently."""
    if devices_given:
        return []
    from sparsesim.hw.devices import user_device_files

    return [{"name": name, "path": str(path)} for name, path in user_device_files().items()]


def render_user_devices(joined: list[dict[str, str]]) -> list[str]:
    if not joined:
        return []
    names = ", ".join(d["name"] for d in joined)
    where = str(Path(joined[0]["path"]).parent)
    return [f"including your own device(s) {names} from {where} (name devices with --devices to leave them out)"]


def add_timeout_argument(p: argparse.ArgumentParser) -> None:
    from sparsesim.tracing.guard import DEFAULT_TIMEOUT_S

    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="longest each workload's own code (import, builder or factory, traced forward) may "
                        f"run before it is stopped with an error (default {DEFAULT_TIMEOUT_S:g}; 0: no limit)")


@contextmanager
def user_code_limit(args: argparse.Namespace) -> Iterator[None]:
    """Run a verb with its --timeout as the limit on the user's model code (verbs without the
    option run unbounded); model code that ignores the limit ends the process with one line."""
    if getattr(args, "timeout", None) is None:
        yield
        return
    from sparsesim.tracing.guard import check_timeout, time_limit

    with time_limit(check_timeout(args.timeout), exit_prefix=f"sparsesim {args.verb}: error: "):
        yield


# arguments that change how a document is shown or guarded, not what it holds
# arguments that change how a document is shown or where it is computed, not what it says
_PRESENTATION = frozenset({"verb", "json", "progress", "timeout", "no_cache", "dask_scheduler"})


def document_sources(args: argparse.Namespace, devices: str | None, plans: list[str]) -> tuple[Any, ...] | None:
    """What a costing verb's document is computed from, read without building anything (no torch):
    the workload spec's sources, the devices' files, the plans (a plan file by its bytes) and the
    other arguments. None when one cannot be named (a user factory, an unknown device): not cached.
    With the code version (`core.diskcache.key`) this is the document's cache key."""
    from sparsesim.core.diskcache import named_file
    from sparsesim.hw.devices import device_sources
    from sparsesim.tracing.specs import spec_source

    source = spec_source(workload_spec(args))
    found = device_sources(devices)
    if source is None or found is None:
        return None
    rest = tuple(sorted((k, repr(v)) for k, v in vars(args).items() if k not in _PRESENTATION))
    return source, found, tuple(named_file(p) for p in plans), rest
