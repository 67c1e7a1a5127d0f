"""The Cost record every hardware family returns. Never a bare float."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

BOUNDS = ("compute", "memory", "overhead")


@dataclass(frozen=True)
class Cost:
    """Latency, energy and memory of one op on one device, and why.

    `bytes_by_level` maps a memory level (e.g. "dram", "l2", "sram") to bytes moved there.
    `memory_bytes` is the op's weight footprint (values + metadata) on the device.
    `kernel` names what ran ("dense", "2:4 sparse tensor core", "csr", "bsr 4x4", ...);
    `fallback` is True when the requested pattern could not be exploited and a fallback ran,
    and `why` says in words what set the latency (padding, minimum shapes, metadata, imbalance).
    """

    latency_s: float
    energy_j: float
    bytes_by_level: Mapping[str, float]
    memory_bytes: int
    metadata_bytes: int
    bound: str
    utilization: float
    kernel: str
    why: str
    flops_executed: float
    fallback: bool = False
    device: str = ""
    model: str = ""
    details: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.bound not in BOUNDS:
            raise ValueError(f"Cost.bound must be one of {BOUNDS}, got {self.bound!r}")
        if not (self.latency_s >= 0 and self.energy_j >= 0):
            raise ValueError(f"Cost latency/energy must be >= 0, got {self.latency_s}, {self.energy_j}")


@dataclass(frozen=True)
class RunContext:
    """What a whole-model run knows that one op alone does not.

    `model_weight_bytes` is the stored size of all the model's weights under the plan. A cache
    keeps an op's weights between inferences only if the whole model fits in it; otherwise every
    op streams its weights from DRAM. None means the op runs alone, repeated in a loop as a
    micro-benchmark does (calibration, validation): its weights stay wherever they fit.
    `runtime` names the runtime the model runs under ("" = the device file's default) and
    `kernel` a kernel the user forces for the ops it serves ("" = the runtime picks the fastest).
    """

    model_weight_bytes: float | None = None
    runtime: str = ""
    kernel: str = ""


ALONE = RunContext()
