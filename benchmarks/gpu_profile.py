"""Profile one whole model's forward pass on an NVIDIA GPU, kernel by kernel, to see where a
measured time the cost model does not reproduce goes (torch.profiler, CUDA activity).

    python benchmarks/gpu_profile.py sam-vit-h --batch 8 --dtype bf16 [--out DIR]

Prints the kernels and the aten ops by GPU time (top 40 each, with input shapes for the ops) and
writes both tables to DIR. Models: `sam-vit-h` (transformers' SamVisionModel, random weights,
eager) and `bert-base` (BertModel, eager attention). Without a CUDA GPU it exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def build(name: str, batch: int, dtype: str) -> tuple[torch.nn.Module, dict]:
    if name == "sam-vit-h":
        from sparsesim.tracing.models.hf import build_sam_vit_h

        model, inputs = build_sam_vit_h(batch=batch, dtype=dtype, device="cpu")
    elif name == "bert-base":
        from transformers import BertConfig, BertModel

        model = BertModel(BertConfig(attn_implementation="eager")).to(DTYPES[dtype])
        inputs = {"input_ids": torch.randint(0, 30522, (batch, 384))}
    else:
        raise SystemExit(f"gpu_profile: unknown model {name!r} (sam-vit-h, bert-base)")
    return model.cuda().eval(), {k: v.cuda() for k, v in inputs.items()}


def table(prof: torch.profiler.profile, *, by_shape: bool) -> str:
    averages = prof.key_averages(group_by_input_shape=by_shape)
    for key in ("self_device_time_total", "self_cuda_time_total"):
        try:
            return averages.table(sort_by=key, row_limit=40, max_name_column_width=60, max_shapes_column_width=80)
        except (AttributeError, KeyError, ValueError):
            continue
    return averages.table(row_limit=40)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_profile: no CUDA GPU is visible to torch; nothing profiled", file=sys.stderr)
        return 2
    model, inputs = build(args.model, args.batch, args.dtype)
    with torch.inference_mode():
        for _ in range(3):
            model(**inputs)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(3):
            model(**inputs)
        torch.cuda.synchronize()
        print(f"# {args.model} batch {args.batch} {args.dtype} on {torch.cuda.get_device_name(0)}: "
              f"{(time.perf_counter() - t0) / 3 * 1e3:.1f} ms per forward (eager, torch {torch.__version__})", flush=True)
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts, record_shapes=True) as prof:
            model(**inputs)
            torch.cuda.synchronize()
    kernels, ops = table(prof, by_shape=False), table(prof, by_shape=True)
    print(kernels)
    print(ops)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.model}-kernels.txt").write_text(kernels)
        (args.out / f"{args.model}-ops-by-shape.txt").write_text(ops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
