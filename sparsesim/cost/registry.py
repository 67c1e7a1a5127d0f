"""The family registry: each hardware family's cost function and, where its compute peak is
derived rather than a device-file field, its roofline peaks, under the family name its device
files give (its parameters register with the device loader, `hw.devices.register_family`, from
the same module). Families register on import, when a device of theirs is loaded
(`cost.families.load_family`); `estimate_op`
dispatches one op to its device's family and checks what comes back; `cost.roofline` asks a
family for its peaks."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from sparsesim.core.errors import DeviceFileError, UnsupportedError
from sparsesim.core.ir import Op
from sparsesim.cost.record import ALONE, Cost, RunContext
from sparsesim.hw.devices import Device
from sparsesim.sparsity.records import LayerSparsity

CostFn = Callable[[Op, "LayerSparsity | None", Device, RunContext], Cost]
FAMILY_COST: dict[str, CostFn] = {}
# family -> (device, dtypes) -> [(label, FLOP/s)]: compute peaks derived from other fields
PeakFn = Callable[[Device, "set[str]"], "list[tuple[str, float]]"]
FAMILY_PEAKS: dict[str, PeakFn] = {}


def register_cost(family: str) -> Callable[[CostFn], CostFn]:
    def wrap(fn: CostFn) -> CostFn:
        FAMILY_COST[family] = fn
        return fn

    return wrap


def register_peaks(family: str) -> Callable[[PeakFn], PeakFn]:
    """A family whose compute peak is derived (CPU: cores x lanes x ports x clock; FPGA: the PE
    array) says so here; the others' peaks are their `flop_rate` fields."""

    def wrap(fn: PeakFn) -> PeakFn:
        FAMILY_PEAKS[family] = fn
        return fn

    return wrap


def _ensure_loaded(family: str) -> None:
    """Import the family's module unless its cost function is registered already (a Device made
    in another process and unpickled here may name a family this one has not loaded yet)."""
    if family not in FAMILY_COST:
        from sparsesim.cost.families import load_family

        load_family(family)


def family_peaks(family: str) -> PeakFn | None:
    """The family's derived compute peaks, None when its peaks are `flop_rate` fields."""
    _ensure_loaded(family)
    return FAMILY_PEAKS.get(family)


def estimate_op(op: Op, layer: LayerSparsity | None, device: Device, context: RunContext = ALONE) -> Cost:
    """Cost of one op on one device; `layer` is None for dense or weightless ops; `context`
    says what the whole-model run around the op looks like (default: the op alone)."""
    _ensure_loaded(device.family)
    fn = FAMILY_COST.get(device.family)
    if fn is None:
        raise UnsupportedError(f"device {device.name}: no cost model for family {device.family!r}")
    what = f"{device.path}: the {device.family} cost model on op {op.index} ({op.kind}"
    what += f" {op.module})" if getattr(op, "module", "") else ")"
    try:
        cost = fn(op, layer, device, context)
    except (ArithmeticError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        # the loader checks every field it can alone; a combination it cannot foresee ends here,
        # as one line naming the device file, never a traceback
        raise DeviceFileError(f"{what} failed: {type(e).__name__}: {e} (check this device file's numbers)") from e
    cost = _activation_note(op, device, cost)
    bad = [k for k in ("latency_s", "energy_j") if not (math.isfinite(getattr(cost, k)) and getattr(cost, k) >= 0)]
    if bad:
        raise DeviceFileError(f"{what} gives a {' and '.join(bad)} of "
                              f"{', '.join(str(getattr(cost, k)) for k in bad)} (check this device file's numbers)")
    return cost


def _activation_note(op: Op, device: Device, cost: Cost) -> Cost:
    """Say in the why when an op's input activations are sparse (a ReLU, or an `act:S` plan)
    and the device's kernel computed the zeros anyway; a family that skipped them reports the
    density it used in `details["activation_density_used"]`."""
    if not (op.is_matmul and op.weight is not None and op.activation_density < 1.0):
        return cost
    if cost.details.get("activation_density_used", 1.0) < 1.0:
        return cost
    note = (f"input activations {1.0 - op.activation_density:.0%} zero, not exploited: "
            f"the {device.family} kernel ({cost.kernel or 'dense'}) multiplies the zeros")
    return dataclasses.replace(cost, why=f"{cost.why}; {note}" if cost.why else note)
