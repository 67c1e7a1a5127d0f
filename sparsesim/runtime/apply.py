"""A family's per-op Cost under a runtime: fusion and host dispatch, for every family alike.

The family cost function has already charged the op's own kernels (with the runtime's kernel
launch cost where the family reads it). This step adds what the runtime does around them:

* an op fused into another op's kernel (`OpFusion.role == "fused"`) loses its launch and the
  share of its DRAM traffic its group keeps on chip; a chain head loses its output write;
* on a dataflow engine whose runtime runs epilogues in the MAC pipeline (`epilogue_in_pipeline`)
  a fused epilogue op's on-chip traffic overlaps the GEMM it is fused into: only the DRAM bytes
  it spills (`Cost.details["offchip_s"]`) still take time; its bytes still cost energy;
* the host time the runtime spends dispatching the op (`host_dispatch` per op, plus any extra
  the family reports in `Cost.details["host_s"]`, e.g. a sparse tensor subclass) either hides
  behind the device (`host_overlaps`: the op takes the longer of the two) or adds to it; host
  work the device must wait for (`Cost.details["host_serial_s"]`) adds to it either way.

Pure: (Cost, OpFusion, RuntimeParams) -> Cost. Fusion never raises latency, bytes or energy.
"""

from __future__ import annotations

import dataclasses

from sparsesim.cost.common import bound_of
from sparsesim.cost.record import Cost
from sparsesim.hw.runtimes import RuntimeParams
from sparsesim.runtime.fusion import OpFusion


def apply_runtime(cost: Cost, fusion: OpFusion, runtime: RuntimeParams, *, name: str = "") -> Cost:
    """`cost` as the op costs under `runtime` (named `name` in the why), given its `fusion`."""
    d = dict(cost.details)
    compute = float(d.get("compute_s", 0.0))
    memory = float(d.get("memory_s", 0.0))
    overhead = float(d.get("overhead_s", max(0.0, cost.latency_s - max(compute, memory))))
    if "compute_s" not in d and "memory_s" not in d:
        # a record without the split: its whole latency counts as the term its bound names
        compute = cost.latency_s if cost.bound == "compute" else 0.0
        memory = cost.latency_s if cost.bound == "memory" else 0.0
        overhead = cost.latency_s - max(compute, memory)
    scale = fusion.dram_scale if fusion.role != "alone" else 1.0
    memory *= scale
    if fusion.role == "fused" and fusion.how == "epilogue" and runtime.epilogue_in_pipeline:
        memory = min(memory, float(d.get("offchip_s", memory)) * scale)
    if fusion.role == "fused":
        overhead = 0.0
        if fusion.how == "attention":
            compute = 0.0  # the head's fused attention kernel does this op's arithmetic
    device_s = max(compute, memory) + overhead
    host_s = 0.0 if fusion.role == "fused" else runtime.host_dispatch
    host_s += float(d.get("host_s", 0.0))
    serial_s = 0.0 if fusion.role == "fused" else float(d.get("host_serial_s", 0.0))
    latency = (max(device_s, host_s) if runtime.host_overlaps else device_s + host_s) + serial_s
    if latency == cost.latency_s and scale == 1.0 and fusion.role == "alone" and host_s + serial_s == 0.0:
        return cost
    e_compute = float(d.get("energy_compute_j", 0.0))
    e_memory = float(d.get("energy_memory_j", 0.0)) * scale
    e_meta = float(d.get("energy_metadata_j", 0.0))
    e_static = float(d.get("energy_static_j", 0.0))
    if cost.latency_s > 0:
        e_static *= latency / cost.latency_s
    if not any(k in d for k in ("energy_compute_j", "energy_memory_j", "energy_static_j")):
        energy = cost.energy_j * (latency / cost.latency_s if cost.latency_s > 0 else 1.0)
    else:
        energy = e_compute + e_memory + e_meta + e_static
    bound = bound_of(compute, memory, overhead)
    if serial_s > max(compute, memory, overhead):
        bound = "overhead"
    parts = [cost.why] if cost.why else []
    note = fusion.describe()
    if note:
        parts.append(note)
    if host_s > device_s and runtime.host_overlaps:
        bound = "overhead"
        parts.append(f"{name or 'runtime'} host dispatch {host_s * 1e6:.3g} us exceeds the kernel time "
                     f"{device_s * 1e6:.3g} us: host-bound")
    elif host_s > 0 and not runtime.host_overlaps:
        parts.append(f"{name or 'runtime'} host dispatch +{host_s * 1e6:.3g} us")
    if serial_s > 0:
        parts.append(f"{name or 'runtime'}: +{serial_s * 1e6:.3g} us of host work the device waits for")
    d.update(compute_s=compute, memory_s=memory, overhead_s=latency - max(compute, memory), host_s=host_s,
             device_s=device_s, dram_scale=scale, energy_memory_j=e_memory, energy_static_j=e_static,
             fused_into=float(fusion.group if fusion.role == "fused" else -1))
    util = cost.utilization * (cost.latency_s / latency) if latency > 0 else 0.0
    return dataclasses.replace(
        cost, latency_s=latency, energy_j=energy,
        bytes_by_level={k: v * scale for k, v in cost.bytes_by_level.items()},
        bound=bound, utilization=min(1.0, util), why="; ".join(parts),
        kernel=f"fused ({fusion.how})" if fusion.role == "fused" else cost.kernel, details=d,
    )
