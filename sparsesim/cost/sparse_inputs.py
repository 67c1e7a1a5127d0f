"""Sparse input activations as a kernel that skips them sees them (shared by the GPU and CPU
activation-sparse kernels)."""

from __future__ import annotations

from sparsesim.core.ir import Op
from sparsesim.sparsity.records import LayerSparsity


def skippable_inputs(op: Op, layer: LayerSparsity | None) -> bool:
    """A dense weight whose plan makes its inputs sparse (`act:S`): an activation-sparse kernel
    may run it. Zeros a dense plan's ReLU leaves are measured but left to the dense kernels: no
    deployment skips them unless it was built to (thresholds, a transposed weight)."""
    return (layer is not None and layer.pattern.act < 1.0 and layer.pattern.spec.is_dense
            and op.activation_density < 1.0)


def active_input_fraction(density: float, rows: int) -> float:
    """The fraction of input channels at least one of `rows` rows needs when each row keeps a
    fraction `density` of its activations, zeros falling independently: 1 - (1 - density)^rows.
    One row reads `density` of the weight; a batch reads the union, which nears all of it fast."""
    return 1.0 - (1.0 - min(max(density, 0.0), 1.0)) ** max(1, rows)
