"""Does the run fit in the device's memory? Weights as stored under the plan, the example
inputs (with a KV cache the forward filled) and the largest working set of one op, against the
device file's `memory_capacity`. A run that does not fit is flagged in every result, never
costed silently as if it did."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sparsesim.core.ir import DTYPE_BYTES, Op
from sparsesim.cost.common import UNKNOWN_DTYPE_BYTES
from sparsesim.hw.devices import Device

# the device-file field that holds the memory the model runs from (families without it: unknown)
CAPACITY_FIELD = "memory_capacity"


@dataclass(frozen=True)
class MemoryFit:
    """What the run holds in device memory, and whether it fits (None: the device file gives no
    capacity)."""

    weight_bytes: float
    input_bytes: float
    activation_bytes: float
    capacity_bytes: float | None

    @property
    def need_bytes(self) -> float:
        return self.weight_bytes + self.input_bytes + self.activation_bytes

    @property
    def fits(self) -> bool | None:
        return None if self.capacity_bytes is None else self.need_bytes <= self.capacity_bytes


def device_capacity(device: Device) -> float | None:
    cap = getattr(device.params, CAPACITY_FIELD, None)
    return float(cap) if cap else None


def op_working_bytes(op: Op) -> float:
    """Activations one op holds at once: its non-weight inputs and its output."""
    size = DTYPE_BYTES.get(op.dtype, UNKNOWN_DTYPE_BYTES)
    shapes = list(op.input_shapes)
    if op.weight_shape is not None:  # the weight may come in transposed (mm of x and W^T)
        same = [s for s in shapes if sorted(s) == sorted(op.weight_shape)]
        if same:
            shapes.remove(same[0])
    return size * (sum(math.prod(s) for s in shapes) + math.prod(op.output_shape))


def peak_activation_bytes(ops: tuple[Op, ...] | list[Op]) -> float:
    """The largest one-op working set: ops run one after another, so activations of earlier ops
    are freed (a lower bound on what an allocator holds)."""
    return max((op_working_bytes(op) for op in ops), default=0.0)


def memory_fit(weight_bytes: float, input_bytes: float, activation_bytes: float, device: Device) -> MemoryFit:
    return MemoryFit(float(weight_bytes), float(input_bytes), float(activation_bytes), device_capacity(device))
