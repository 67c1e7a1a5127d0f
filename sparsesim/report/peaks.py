"""Roofline peaks of a device: compute roofs (FLOP/s) and memory slopes (B/s).

Memory slopes are read generically: every device-file field of dimension `bandwidth`. Compute
roofs are every field of dimension `flop_rate` (per dtype: the workload's dtypes), except where
a family's peak is derived from other fields (CPU: cores x lanes x FMA ports x clock; FPGA: PE
array x clock); those families have an accessor below that asks the family module or its fields.
A family module may also export `roofline_peaks(device, dtype) -> [(label, value, kind)]`,
which then wins.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass

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
    hook = _family_hook(device.family)
    roofs: list[Roof] = []
    if hook is not None:
        for dt in sorted(dtypes or {"fp32"}):
            for label, value, kind in hook(device, dt):
                roofs.append(Roof(str(label), float(value), str(kind)))
    else:
        compute = FAMILY_COMPUTE.get(device.family, generic_compute)(device, dtypes)
        roofs = compute + memory_slopes(device)
    out: list[Roof] = []
    for r in roofs:
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


def cpu_compute(device: Device, dtypes: set[str]) -> list[Roof]:
    """Cores x lanes x FMA ports x clock (or the matrix unit), as the CPU model computes it."""
    from sparsesim.cost.families import cpu

    p = device.params
    return [Roof(f"peak {cpu.compute_dtype(p, dt)}", cpu.peak_flops(p, cpu.compute_dtype(p, dt)), "compute")
            for dt in sorted(dtypes or {"fp32"})]


def fpga_compute(device: Device, dtypes: set[str]) -> list[Roof]:
    """The PE array at the dtype it runs the workload in: rows x cols MACs (2 FLOP each) per clock."""
    from sparsesim.cost.common import run_dtype
    from sparsesim.cost.families import fpga

    p = device.params
    roofs = []
    for dt in sorted(dtypes or {p.design_dtype}):
        run, _ = run_dtype(dt, p.dsp_per_mac)
        rows, cols = fpga.array_for(p, run)
        roofs.append(Roof(f"PE array {run}", 2.0 * rows * cols * p.clock, "compute"))
    return roofs


FAMILY_COMPUTE: dict[str, Callable[[Device, set[str]], list[Roof]]] = {
    "cpu": cpu_compute,
    "fpga": fpga_compute,
}


def _family_hook(family: str):
    try:
        mod = importlib.import_module(f"sparsesim.cost.families.{family}")
    except ImportError:
        return None
    return getattr(mod, "roofline_peaks", None)
