"""Model builders the workload recipes name. Each builder takes plain keyword parameters
(ints, floats, strings; `dtype` as a sparsesim dtype string) and returns
`(model, example_inputs)`, the model in eval mode."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sparsesim.core.errors import WorkloadError
from sparsesim.core.lazy import lazy_module

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")  # finding a builder's module (listing recipes) imports no torch

# the floating types a model can be built and run in (torch.<name>)
TORCH_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp64": "float64"}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype a model is built in; only floating types a model can run in."""
    try:
        return getattr(torch, TORCH_DTYPE[name])
    except KeyError:
        raise WorkloadError(f"dtype {name!r} cannot build a model; use one of {', '.join(TORCH_DTYPE)}") from None


def check_positive(**params: int | float) -> None:
    """WorkloadError naming the first size parameter below 1 (a batch of 0 traces to nothing)."""
    for key, value in params.items():
        if not value >= 1:
            raise WorkloadError(f"parameter {key}={value}: must be at least 1")


def check_llama_shape(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int) -> None:
    """WorkloadError for a Llama-architecture shape that cannot be built: a size below 1, or heads
    that do not divide the hidden size, or KV heads that do not divide the heads."""
    check_positive(hidden=hidden, intermediate=intermediate, layers=layers, heads=heads, kv_heads=kv_heads,
                   vocab=vocab)
    if hidden % heads or heads % kv_heads:
        raise WorkloadError(f"hidden={hidden}, heads={heads}, kv_heads={kv_heads}: heads must divide "
                            "hidden and kv_heads must divide heads")


def torch_device(device: str) -> torch.device:
    """The device a model is built on: "cpu" (real weights) or "meta" (shapes only)."""
    if device not in ("cpu", "meta"):
        raise WorkloadError(f"device {device!r}: use 'cpu' (real weights) or 'meta' (shapes only)")
    return torch.device(device)
