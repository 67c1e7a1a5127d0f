"""Model builders the workload recipes name. Each builder takes plain keyword parameters
(ints, floats, strings; `dtype` as a sparsesim dtype string) and returns
`(model, example_inputs)`, the model in eval mode."""

from __future__ import annotations

import torch

from sparsesim.core.errors import WorkloadError

TORCH_DTYPE = {
    "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64,
}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype a model is built in; only floating types a model can run in."""
    try:
        return TORCH_DTYPE[name]
    except KeyError:
        raise WorkloadError(f"dtype {name!r} cannot build a model; use one of {', '.join(TORCH_DTYPE)}") from None


def check_positive(**params: int | float) -> None:
    """WorkloadError naming the first size parameter below 1 (a batch of 0 traces to nothing)."""
    for key, value in params.items():
        if not value >= 1:
            raise WorkloadError(f"parameter {key}={value}: must be at least 1")


def torch_device(device: str) -> torch.device:
    """The device a model is built on: "cpu" (real weights) or "meta" (shapes only)."""
    if device not in ("cpu", "meta"):
        raise WorkloadError(f"device {device!r}: use 'cpu' (real weights) or 'meta' (shapes only)")
    return torch.device(device)
