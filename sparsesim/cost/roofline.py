"""Roofline bounds of a device, the cheap rung of the fidelity ladder: compute roofs (FLOP/s) and
memory slopes (B/s).

Memory slopes are read generically: every device-file field of dimension `bandwidth`. Compute
roofs are every field of dimension `flop_rate` (per dtype: the workload's dtypes), except where
a family's peak is derived from other fields (CPU: cores x lanes x FMA ports x clock; FPGA: PE
array x clock): such a family registers its peaks with the family registry (`register_peaks`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sparsesim.cost.registry import family_peaks
from sparsesim.hw.devices import Device

# dtypes a GEMM of the key dtype may run in on matrix units (fp32 GEMMs run as tf32 on GPUs that allow it)
RUNS_AS = {"fp32": ("fp32", "tf32")}


@dataclass(frozen=True)
class Roof:
    label: str
    value: float  # FLOP/s for compute roofs, B/s for memory slopes
    kind: str  # "compute" | "memory"


def device_roofs(device: Device, dtypes: set[str] | None = None) -> list[Roof]:
    """The compute roofs (for the given dtypes) and memory slopes of a device."""
    dtypes = set(dtypes or ())
    derived = family_peaks(device.family)
    compute = ([Roof(label, float(value), "compute") for label, value in derived(device, dtypes)]
               if derived is not None else generic_compute(device, dtypes))
    out: list[Roof] = []
    for r in compute + memory_slopes(device):
        if r.value > 0 and r not in out:
            out.append(r)
    return out


def _fields(device: Device, dim: str):
    for f in dataclasses.fields(device.params):
        if f.metadata.get("dim") == dim:
            yield f.name, getattr(device.params, f.name)


def memory_slopes(device: Device) -> list[Roof]:
    return [Roof(name.replace("_bandwidth", "").replace("_", " "), float(v), "memory")
            for name, v in _fields(device, "bandwidth") if isinstance(v, (int, float)) and v > 0]


def generic_compute(device: Device, dtypes: set[str]) -> list[Roof]:
    """Every flop_rate field; a per-dtype one at the workload's dtypes (all of them if none match)."""
    wanted = {a for dt in dtypes for a in RUNS_AS.get(dt, (dt,))}
    roofs = []
    for name, value in _fields(device, "flop_rate"):
        label = name.replace("_peak", "").replace("_", " ")
        if isinstance(value, dict):
            keys = [k for k in value if k in wanted] or list(value)
            roofs += [Roof(f"{label} {k}", float(value[k]), "compute") for k in keys]
        elif isinstance(value, (int, float)):
            roofs.append(Roof(label, float(value), "compute"))
    return roofs
