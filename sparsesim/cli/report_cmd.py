"""`sparsesim report`: a hardware comparison report (HTML, Markdown, CSV) for workloads x devices x plans.

With no arguments it runs the main job: the built-in ResNet-50, BERT-base and Llama-2-7B (prefill
and decode, on the meta device) on every built-in device with the five standard plans, written to
a new timestamped directory under reports/ (or --out DIR). `--example` regenerates the committed
example report, reports/default/ of the checkout, instead.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import time
from pathlib import Path
from typing import Any

from sparsesim.cli.common import add_cluster_argument, add_deployment_arguments, deployment, user_devices_joining
from sparsesim.core.errors import SparsesimError

NAME = "report"
HELP = "build a hardware comparison report (HTML + Markdown + CSV) of workloads x devices x plans"
REPORTS_DIR = Path("reports")
EXAMPLE_DIR = "default"  # reports/default/ of the checkout: the committed example


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workloads", nargs="*", metavar="WORKLOAD",
                   help="workload specs (default: resnet50, bert-base, llama2-7b prefill and decode)")
    p.add_argument("--devices", default="", help="comma-separated device names or files (default: every built-in device)")
    p.add_argument("--plans", default="", help="comma-separated plans (default: dense,2:4,unstructured:0.9,block4x4:0.5,channel:0.5)")
    p.add_argument("--out", default=None,
                   help="output directory (default: a new reports/<workloads>-<date>-<time>/ in the current directory)")
    p.add_argument("--example", action="store_true",
                   help="regenerate the committed example report (reports/default/ of the checkout; the default workloads)")
    p.add_argument("--search", action="append", default=[], metavar="DIR", help="a search output directory to include (repeatable)")
    p.add_argument("--validation", default=None, metavar="FILE", help="a `sparsesim validate --json` file to include")
    p.add_argument("--validate", action="store_true", help="run a quick validation on this host and include it")
    p.add_argument("--serving", dest="serving", action="store_true", default=None,
                   help="simulate serving curves (latency vs load) for dense and the best plan (default: on)")
    p.add_argument("--no-serving", dest="serving", action="store_false", help="skip the serving curves")
    p.add_argument("--training", dest="training", action="store_true", default=None,
                   help="cost whole training runs (dense, gmp, static, rigl, 2:4) of the workloads whose recipe "
                        "has a [train] table (default: on)")
    p.add_argument("--no-training", dest="training", action="store_false", help="skip the training section")
    add_deployment_arguments(p)
    add_cluster_argument(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sparsesim.core import progress
    from sparsesim.report import build, render
    from sparsesim.report.fmt import slug
    from sparsesim.report.markdown import MD_TITLE
    from sparsesim.report.outdir import previous_files

    workloads = list(args.workloads) or list(build.DEFAULT_WORKLOADS)
    plans = [p.strip() for p in args.plans.split(",") if p.strip()] or list(build.STANDARD_PLANS)
    if "dense" not in plans:
        plans.insert(0, "dense")
    devices = build.resolve_devices([d.strip() for d in args.devices.split(",") if d.strip()])
    out = output_dir(args, slug("-".join(workloads)) if args.workloads else EXAMPLE_DIR)
    previous_files(out, MD_TITLE)  # a directory that is not a report is refused before any work
    try:  # before the (slow) collection, so an unwritable --out fails at once
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SparsesimError(f"--out {out}: cannot create the report directory ({e.strerror or e})") from None
    serving = True if args.serving is None else args.serving
    training = True if args.training is None else args.training
    total = len(workloads) * len(devices) * len(plans) + len(workloads)
    if serving:
        total += len(workloads) * len(devices) * 2
    command = command_line(args)
    t0 = time.perf_counter()
    with progress.bar("report", total, unit="step") as bar:
        data = build.collect(workloads, devices, plans, serving=serving, training=training, search_dirs=args.search,
                             validation=args.validation, run_validation=args.validate, progress=bar.update,
                             stage=bar.set_description_str, command=command, deploy=deployment(args),
                             dask_scheduler=args.dask_scheduler)
        bar.set_description_str("figures")
        t1 = time.perf_counter()
        try:
            written = render.write_report(data, out, progress=bar.update)
        except OSError as e:  # a full disk: every file is old or new, none half written, none deleted
            raise SparsesimError(f"--out {out}: cannot write the report ({e.strerror or e}); the files already there "
                                 "are whole and the previous report's files were not removed") from None
    data.timings["render"] = time.perf_counter() - t1
    doc: dict[str, Any] = {
        "user_devices": user_devices_joining(args.devices),
        "out": str(out),
        "index": str(out / "index.html"),
        "markdown": str(out / "report.md"),
        "files": written["files"],
        "workloads": data.workloads,
        "devices": data.device_names,
        "plans": data.plans,
        "summary": build.summary_records(data.summary),
        "verdicts": [{k: v for k, v in verdict.items() if k != "plans"} for verdict in written["verdicts"]],
        "wall_s": time.perf_counter() - t0,
    }
    if data.training is not None:
        doc["training"] = build.frame_records(data.training)
    if data.searches:
        doc["searches"] = [{"workload": s.workload, "device": s.device, "source": s.source, **s.chosen}
                           for s in data.searches]
    if data.validation is not None:
        v = data.validation
        doc["validation"] = {"source": v.source, "errors": build.frame_records(v.errors), **v.meta,
                             "gpu_published": v.gpu_summary}
    return doc


def output_dir(args: argparse.Namespace, name: str) -> Path:
    """--out as given; --example: the checkout's reports/default/; otherwise a new timestamped
    directory, so a report never overwrites another (nor the committed example)."""
    if args.example:
        if args.out or args.workloads:
            raise SparsesimError("report --example regenerates reports/default/ with the default workloads: "
                                 "give no workloads and no --out with it")
        from sparsesim.core.packaged import checkout_dir

        root = checkout_dir()
        if root is None:
            raise SparsesimError("report --example: the example report lives in a checkout of sparsesim's "
                                 "repository; this is an installed copy (use --out DIR)")
        return root / REPORTS_DIR / EXAMPLE_DIR
    if args.out:
        return Path(args.out)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = REPORTS_DIR / f"{name}-{stamp}"
    n = 1
    while out.exists():  # two reports in the same second
        n += 1
        out = REPORTS_DIR / f"{name}-{stamp}-{n}"
    return out


def command_line(args: argparse.Namespace) -> str:
    """The command that regenerates this report, as the report prints it."""
    parts = ["sparsesim", "report", *args.workloads]
    for flag, value in (("--devices", args.devices), ("--plans", args.plans), ("--out", args.out),
                        ("--validation", args.validation)):
        if value:
            parts += [flag, str(value)]
    for d in args.search:
        parts += ["--search", str(d)]
    if args.example:
        parts.append("--example")
    if args.validate:
        parts.append("--validate")
    if args.serving is False:
        parts.append("--no-serving")
    if args.training is False:
        parts.append("--no-training")
    return shlex.join(parts)


def render(doc: dict[str, Any]) -> str:
    from sparsesim.cli.common import render_user_devices
    from sparsesim.report.fmt import fmt_x

    lines = render_user_devices(doc.get("user_devices", []))
    plans = doc["plans"]
    for wl in doc["workloads"]:
        rows = [r for r in doc["summary"] if r["workload"] == wl]
        lines.append(f"{wl}: speedup over dense on the same device (* = best plan)")
        width = max([len(d) for d in doc["devices"]] + [6])
        lines.append("  " + "device".ljust(width) + "".join(p.rjust(18) for p in plans))
        for dev in doc["devices"]:
            cells = []
            for p in plans:
                r = next((x for x in rows if x["device"] == dev and x["plan"] == p), None)
                cells.append(("–" if r is None else fmt_x(r["speedup_vs_dense"]) + ("*" if r.get("best") else " ")).rjust(18))
            lines.append("  " + dev.ljust(width) + "".join(cells))
        lines.append("")
    lines.append("Verdict:")
    lines += [f"  {v['text']}" for v in doc["verdicts"]]
    lines.append("")
    lines.append(f"Wrote {doc['index']} (and report.md, {sum(f.endswith('.csv') for f in doc['files'])} CSV tables, "
                 f"{sum(f.endswith('.png') for f in doc['files'])} figures) in {doc['wall_s']:.1f} s.")
    return "\n".join(lines)
