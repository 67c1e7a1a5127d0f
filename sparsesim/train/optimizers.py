"""Optimizers as data: state tensors per parameter, FLOPs per parameter, bytes per update.

FLOPs per parameter count the update formula's arithmetic (weight decay included where the
optimizer applies it to the gradient):
  sgd:          w -= lr * (g + wd * w)                                   4
  sgd-momentum: m = mu * m + (g + wd * w);  w -= lr * m                  6
  adam:         m, v moving averages of g and g^2 (7), w -= lr * m / (sqrt(v) + eps) (5)   12
  adamw:        adam plus the decoupled decay w -= lr * wd * w           14
Bytes per parameter, one fused multi-tensor update (torch's `fused=True`): the gradient read;
the weight read and written (with mixed precision: the fp32 master read and written and the
low-precision model copy written); each state read and written, in fp32 with master weights and
in the parameter dtype without.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sparsesim.core.errors import TrainError
from sparsesim.core.ir import Op

MASTER_BYTES = 4  # fp32 master weights and optimizer states under mixed precision


@dataclass(frozen=True)
class Optimizer:
    name: str
    states: int
    flops_per_param: int
    aten: str
    master_weights: bool = False

    def state_bytes(self, param_bytes: float) -> float:
        """Bytes of one state entry (fp32 with master weights, else the parameter dtype)."""
        return MASTER_BYTES if self.master_weights else param_bytes

    def update_bytes(self, param_bytes: float) -> float:
        """Bytes one update moves per parameter value (see the module docstring)."""
        weight = 2 * MASTER_BYTES + param_bytes if self.master_weights else 2 * param_bytes
        return param_bytes + weight + 2 * self.states * self.state_bytes(param_bytes)

    def resident_bytes(self, param_bytes: float) -> tuple[float, float]:
        """(master copy, optimizer states) bytes held per parameter value."""
        master = MASTER_BYTES if self.master_weights else 0.0
        return master, self.states * self.state_bytes(param_bytes)


OPTIMIZERS: dict[str, Optimizer] = {o.name: o for o in (
    Optimizer("sgd", 0, 4, "aten._fused_sgd_.default"),
    Optimizer("sgd-momentum", 1, 6, "aten._fused_sgd_.default"),
    Optimizer("adam", 2, 12, "aten._fused_adam_.default"),
    Optimizer("adamw", 2, 14, "aten._fused_adamw_.default"),
)}


def get_optimizer(name: str, *, master_weights: bool) -> Optimizer:
    o = OPTIMIZERS.get(name.strip().lower())
    if o is None:
        raise TrainError(f"optimizer {name!r} is not one of {', '.join(OPTIMIZERS)}")
    return replace(o, master_weights=master_weights)


def optimizer_op(template: Op, opt: Optimizer, values: float, param_bytes: float) -> tuple[Op, None, str, float]:
    """The fused update over `values` parameter values, as (op, layer, pass, theoretical FLOPs)."""
    n = round(values)
    flops = opt.flops_per_param * n
    op = Op(index=0, kind="elementwise", aten=opt.aten, module="optimizer", call_index=0, dtype=template.dtype,
            input_shapes=((n,),), output_shape=(n,), flops=flops, bytes_moved=round(opt.update_bytes(param_bytes) * n),
            note=f"{opt.name} update" + (" with fp32 master weights" if opt.master_weights else ""))
    return op, None, "optimizer", float(flops)
