"""Profile one whole model's forward pass on an NVIDIA GPU, kernel by kernel, to see where a
measured time the cost model does not reproduce goes (torch.profiler, CUDA activity).

    python benchmarks/gpu_profile.py sam-vit-h --batch 8 --dtype bf16 [--compiled] [--out DIR]

Prints the kernels and the aten ops by GPU time (top 40 each, with input shapes for the ops) and
writes both tables to DIR (MODEL-kernels.txt, MODEL-ops-by-shape.txt; MODEL-compiled-… with
`--compiled`). Models: `sam-vit-h` (transformers' SamVisionModel, random weights)
and `bert-base` (BertModel, eager attention). `--compiled` profiles the model under
torch.compile (mode max-autotune-no-cudagraphs, so the profiler sees each generated kernel rather
than one graph replay) and prints inductor's pattern-matcher counters: whether its attention
rewrite turned the eager-written attention into scaled_dot_product_attention is one of them.
Without a CUDA GPU it exits with status 2.
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


def inductor_counters() -> str:
    """Inductor's pattern-matcher counters after compiling: which rewrites (the attention one
    among them) fired, and how often."""
    from torch._dynamo.utils import counters

    found = {k: v for k, v in counters["inductor"].items() if "pattern" in k or "attention" in k or "fuse" in k}
    return "# inductor counters: " + (", ".join(f"{k}={v}" for k, v in sorted(found.items())) or "none")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--compiled", action="store_true",
                    help="profile under torch.compile and print inductor's pattern-matcher counters")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_profile: no CUDA GPU is visible to torch; nothing profiled", file=sys.stderr)
        return 2
    model, inputs = build(args.model, args.batch, args.dtype)
    runtime = "eager"
    if args.compiled:
        model = torch.compile(model, mode="max-autotune-no-cudagraphs")
        runtime = "compiled (max-autotune-no-cudagraphs)"
    with torch.inference_mode():
        for _ in range(3):
            model(**inputs)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(3):
            model(**inputs)
        torch.cuda.synchronize()
        print(f"# {args.model} batch {args.batch} {args.dtype} on {torch.cuda.get_device_name(0)}: "
              f"{(time.perf_counter() - t0) / 3 * 1e3:.1f} ms per forward ({runtime}, torch {torch.__version__})", flush=True)
        if args.compiled:
            print(inductor_counters(), flush=True)
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts, record_shapes=True) as prof:
            model(**inputs)
            torch.cuda.synchronize()
    kernels, ops = table(prof, by_shape=False), table(prof, by_shape=True)
    print(kernels)
    print(ops)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"{args.model}-compiled" if args.compiled else args.model
        (args.out / f"{stem}-kernels.txt").write_text(kernels)
        (args.out / f"{stem}-ops-by-shape.txt").write_text(ops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
