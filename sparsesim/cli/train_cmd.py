"""`sparsesim train WORKLOAD --methods dense,gmp,rigl --sparsity 0.9 --distribution erk`: what a whole
training run costs per method and device (FLOPs, time, energy, peak memory) against dense."""

from __future__ import annotations

import argparse
from typing import Any

from sparsesim.cli.common import add_deployment_arguments, add_workload_argument, deployment, workload_spec
from sparsesim.core import textfmt
from sparsesim.core.errors import TrainError

NAME = "train"
HELP = "training cost of dense, dense-to-sparse and sparse-to-sparse methods: FLOPs, time, energy, peak memory"

ROW_FIELDS = ("method", "kind", "storage", "sparsity", "distribution", "global_sparsity", "device", "family", "runtime", "steps",
              "train_flops", "train_flops_vs_dense", "inference_flops", "inference_flops_vs_dense", "flops_executed",
              "time_s", "time_vs_dense", "energy_j", "energy_vs_dense", "peak_memory_bytes", "peak_memory_vs_dense",
              "memory_weights_bytes", "memory_copies_bytes", "memory_master_bytes", "memory_optimizer_bytes",
              "memory_grads_bytes", "memory_activations_bytes", "memory_masks_bytes", "memory_workspace_bytes",
              "memory_top", "peak_segment", "sparse_passes", "fallback_passes", "time_top_segment", "why")
WHY_WIDTH = 110


def add_arguments(p: argparse.ArgumentParser) -> None:
    from sparsesim.train.methods import METHODS
    from sparsesim.train.optimizers import OPTIMIZERS

    add_workload_argument(p, help="recipe (resnet50), recipe file, single op (gemm:M=...,N=...,K=...) or module:factory")
    p.add_argument("--methods", "--method", dest="methods", default="dense",
                   help=f"comma-separated methods: {', '.join(METHODS)} (dense is always costed for the ratios)")
    p.add_argument("--sparsity", default="0.9", help="comma-separated global sparsities (fraction removed)")
    p.add_argument("--distribution", default="uniform",
                   help="comma-separated: uniform, uniform-first-dense, er, erk, or a plan file")
    p.add_argument("--devices", "--device", dest="devices", default=None,
                   help="comma-separated device names or .toml paths (default: every built-in device)")
    p.add_argument("--steps", type=float, default=None, help="training steps of a dense run (else epochs x dataset/batch)")
    p.add_argument("--epochs", type=float, default=None, help="epochs (default: the recipe's [train] table)")
    p.add_argument("--dataset-size", type=int, default=None, help="examples per epoch (default: the recipe's)")
    p.add_argument("--batch", type=int, default=None, help="examples per step (default: the recipe's)")
    p.add_argument("--optimizer", default="sgd-momentum", help=f"one of {', '.join(OPTIMIZERS)}")
    p.add_argument("--master-weights", dest="master_weights", action="store_true", default=None,
                   help="keep fp32 master weights (default: yes for fp16/bf16 models)")
    p.add_argument("--no-master-weights", dest="master_weights", action="store_false")
    p.add_argument("--storage", default="sparse", choices=("sparse", "masked"),
                   help="sparse: sparse kernels and formats where the device has them; masked: dense x 0/1 mask")
    p.add_argument("--checkpoint", action="store_true", help="activation checkpointing (recompute the forward)")
    p.add_argument("--input-grad", action="store_true",
                   help="the model input needs a gradient (a layer cut out of a network)")
    p.add_argument("--step-multiplier", default="1",
                   help="more steps for the sparse methods: a number for all, or method=x,... (e.g. rigl=5,set=2)")
    p.add_argument("--settings", default="",
                   help="method settings, e.g. rigl.every=200,gmp.start=0.1 (see the methods' defaults in --json)")
    add_deployment_arguments(p)


def _floats(text: str, what: str) -> list[float]:
    out = []
    for item in text.split(","):
        if item.strip():
            try:
                out.append(float(item))
            except ValueError:
                raise TrainError(f"--{what} {item.strip()!r} is not a number") from None
    return out


def _multipliers(text: str) -> dict[str, float]:
    text = text.strip()
    if "=" not in text:
        return {"*": _floats(text, "step-multiplier")[0]} if text else {}
    out: dict[str, float] = {}
    for item in text.split(","):
        name, eq, value = item.partition("=")
        if not eq:
            raise TrainError(f"--step-multiplier {item!r} is not method=number")
        out[name.strip()] = _floats(value, "step-multiplier")[0]
    return out


def _settings(text: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        method, dot, name = key.strip().partition(".")
        if not eq or not dot:
            raise TrainError(f"--settings {item.strip()!r} is not method.setting=number")
        out.setdefault(method, {})[name] = _floats(value, "settings")[0]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sparsesim.run import results
    from sparsesim.train import TrainConfig, train_tables
    from sparsesim.train.methods import METHODS

    config = TrainConfig(steps=args.steps, epochs=args.epochs, dataset_size=args.dataset_size, batch=args.batch,
                         optimizer=args.optimizer, master_weights=args.master_weights, storage=args.storage,
                         checkpoint=args.checkpoint, input_grad=args.input_grad,
                         step_multiplier=_multipliers(args.step_multiplier), settings=_settings(args.settings),
                         **deployment(args))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    dists = [d.strip() for d in args.distribution.split(",") if d.strip()]
    tables = train_tables(workload_spec(args), methods, _floats(args.sparsity, "sparsity"), dists, args.devices, config)
    s = tables.summary
    return {
        "workload": str(s["workload"].iat[0]) if len(s) else args.workload,
        "steps_dense": float(s.loc[s["method"] == "dense", "steps"].iat[0]) if len(s) else None,
        "optimizer": args.optimizer,
        "storage": args.storage,
        "checkpoint": args.checkpoint,
        "methods": {m: {"kind": METHODS[m].kind, "settings": {**METHODS[m].settings, **config.settings.get(m, {})}}
                    for m in dict.fromkeys(s["method"])},
        "devices": list(dict.fromkeys(s["device"])),
        "rows": results.records(s[list(ROW_FIELDS)]),
        "segments": results.records(tables.segments),
    }


def _fmt_flops(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


# a whole training run reads best in the largest unit it fills at least twice
_DURATIONS = ((86400.0, "d"), (3600.0, "h"), (60.0, "min"))


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit_s, unit in _DURATIONS:
        if seconds >= 2 * unit_s:
            return f"{seconds / unit_s:.3g} {unit}"
    return textfmt.fmt_si(seconds, "s")


def render(doc: dict[str, Any]) -> str:
    head = (f"{doc['workload']}: {doc['steps_dense']:.6g} dense training steps, optimizer {doc['optimizer']}, "
            f"storage {doc['storage']}{', activation checkpointing' if doc['checkpoint'] else ''}; "
            "x dense = relative to dense training on the same device")
    out = [head, ""]
    for dev in doc["devices"]:
        rows = [r for r in doc["rows"] if r["device"] == dev]
        out.append(f"{dev} ({rows[0]['family']}), runtime {rows[0]['runtime']}")
        out.append(textfmt.text_table(
            [(r["method"], "-" if r["sparsity"] is None else f"{r['sparsity']:g}", r["distribution"],
              _fmt_flops(r["train_flops"]), textfmt.fmt_ratio(r["train_flops_vs_dense"]),
              fmt_duration(r["time_s"]), textfmt.fmt_ratio(r["time_vs_dense"]),
              textfmt.fmt_si(r["energy_j"], "J"), textfmt.fmt_ratio(r["energy_vs_dense"]),
              textfmt.fmt_si(r["peak_memory_bytes"], "B"), textfmt.fmt_ratio(r["peak_memory_vs_dense"]),
              textfmt.clip(r["why"], WHY_WIDTH)) for r in rows],
            ("method", "sparsity", "distribution", "train FLOPs", "x dense", "time", "x dense", "energy", "x dense",
             "peak memory", "x dense", "why"),
            indent="  ",
        ))
        out.append("")
    return "\n".join(out).rstrip()
