"""The runtime stage: what the software that runs a model adds to, or saves from, its kernels.

`fusion.fuse` is a pass over a workload's ops, shared by every hardware family: it groups the
ops a runtime runs as one kernel (elementwise chains, GEMM/conv epilogues). `apply.apply_runtime`
turns a family's per-op Cost into the Cost under the runtime: fused ops lose their own launch
and the DRAM traffic their group keeps on chip, and host dispatch time is charged per op.
The runtimes themselves (eager, compiled, engine) are device-file data: `sparsesim.hw.runtimes`.
"""

from sparsesim.runtime.apply import apply_runtime
from sparsesim.runtime.fusion import OpFusion, fuse

__all__ = ["OpFusion", "apply_runtime", "fuse"]
