"""One cost model per hardware family (GPU, CPU, FPGA, S4-style engine).

Each family's module registers its device-file schema (`hw.devices.register_family`) and its
cost function (`cost.registry.register_cost`) on import. A process imports the families of the
devices it loads, not all of them (`load_family`): costing one FPGA array need not import the
GPU's kernel tables.
"""

from __future__ import annotations

import importlib

# family name (a device file's `family`) -> the module that registers it
FAMILY_MODULES: dict[str, str] = {
    "cpu": "sparsesim.cost.families.cpu",
    "fpga": "sparsesim.cost.families.fpga",
    "gpu": "sparsesim.cost.families.gpu",
    "s4": "sparsesim.cost.families.s4",
}


def load_family(name: str) -> bool:
    """Import the module of built-in family `name` (it registers itself); False when no
    built-in family has that name."""
    module = FAMILY_MODULES.get(name)
    if module is None:
        return False
    importlib.import_module(module)
    return True

