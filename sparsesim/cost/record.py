"""The Cost record every hardware family returns. Never a bare float."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

BOUNDS = ("compute", "memory", "overhead")

# What can make an op cost more than its share of dense work: the codes a `Reason` carries, with
# the words a report uses for them. Families emit codes; nobody parses the human `why`.
REASONS: Mapping[str, str] = {
    "fallback": "fallback",
    "not_exploited": "pattern not exploited",
    "memory_bound": "memory bound",
    "overhead_bound": "overhead bound",
    "metadata": "metadata overhead",
    "imbalance": "load imbalance",
    "wave_fill": "wave quantisation",
    "padding": "padding",
    "alignment": "alignment",
    "unsupported": "unsupported pattern",
    # the dense library's kernels for this dtype reach less of the peak than the device's other
    # dtypes' (value: that rate over the usual one), so a sparse kernel can beat them by more
    # than its math alone: a library gap, not a sparsity gain
    "weak_dense_library": "weak dense library",
}


@dataclass(frozen=True)
class Reason:
    """One cause of an op's cost, as data: a code from `REASONS` and, where it has one, its size
    (metadata share of the weight bytes, busiest/mean row, SM share the waves fill, padded/true M
    or the padded/true weight elements a layout stores)."""

    code: str
    value: float = math.nan

    def __post_init__(self) -> None:
        if self.code not in REASONS:
            raise ValueError(f"Reason.code must be one of {tuple(REASONS)}, got {self.code!r}")

    @property
    def label(self) -> str:
        return REASONS[self.code]


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
    # reasons a family states that the other fields do not show (alignment, padding, ...)
    notes: tuple[Reason, ...] = ()

    @property
    def reasons(self) -> tuple[Reason, ...]:
        """Every structured cause of this cost: those the fields show (fallback, bound, metadata
        share, wave fill, imbalance) and the family's `notes`. Derived, so a `replace` of
        `fallback` or `bound` cannot leave them stale."""
        out: list[Reason] = []
        if self.fallback:
            out.append(Reason("fallback"))
        if self.bound in ("memory", "overhead"):
            out.append(Reason(f"{self.bound}_bound"))
        if self.memory_bytes > 0 and self.metadata_bytes > 0:
            out.append(Reason("metadata", self.metadata_bytes / self.memory_bytes))
        if "wave_efficiency" in self.details:
            out.append(Reason("wave_fill", float(self.details["wave_efficiency"])))
        if "imbalance" in self.details:
            out.append(Reason("imbalance", float(self.details["imbalance"])))
        return (*out, *self.notes)

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
