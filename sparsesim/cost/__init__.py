"""Cost models, one per hardware family: pure functions (op, layer sparsity, device) -> Cost.

Each family module registers its device-file schema with `sparsesim.hw.devices.register_family`
and its cost function in `FAMILY_COST`.
"""

from __future__ import annotations

from typing import Callable

from sparsesim.cost.record import ALONE, Cost, RunContext
from sparsesim.hw.devices import Device
from sparsesim.core.errors import UnsupportedError
from sparsesim.core.ir import Op
from sparsesim.sparsity.records import LayerSparsity

CostFn = Callable[[Op, "LayerSparsity | None", Device, RunContext], Cost]
FAMILY_COST: dict[str, CostFn] = {}


def register_cost(family: str) -> Callable[[CostFn], CostFn]:
    def wrap(fn: CostFn) -> CostFn:
        FAMILY_COST[family] = fn
        return fn

    return wrap


def estimate_op(op: Op, layer: LayerSparsity | None, device: Device, context: RunContext = ALONE) -> Cost:
    """Cost of one op on one device; `layer` is None for dense or weightless ops; `context`
    says what the whole-model run around the op looks like (default: the op alone)."""
    fn = FAMILY_COST.get(device.family)
    if fn is None:
        raise UnsupportedError(f"device {device.name}: no cost model for family {device.family!r}")
    return fn(op, layer, device, context)


# family modules register themselves on import
from sparsesim.cost.families import gpu, cpu, fpga, s4  # noqa: E402,F401

__all__ = ["Cost", "RunContext", "ALONE", "estimate_op", "register_cost", "FAMILY_COST"]
