"""Cost models, one per hardware family: pure functions (op, layer sparsity, device) -> Cost.

Each family module registers its device-file schema with `sparsesim.hw.devices.register_family`
and its cost function with `sparsesim.cost.registry.register_cost`, when a device of its family
is loaded (`sparsesim.cost.families.load_family`).
"""

from __future__ import annotations

from sparsesim.cost.record import ALONE, Cost, RunContext
from sparsesim.cost.registry import FAMILY_COST, estimate_op, register_cost

__all__ = ["ALONE", "FAMILY_COST", "Cost", "RunContext", "estimate_op", "register_cost"]
