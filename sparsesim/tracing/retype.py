"""Deploy a traced workload at another dtype: the `--dtype` override (int8, fp8, int4 weight-only, ...).

A model is traced at the dtype it was built in; deployments quantise it. `retype` rewrites the
ops a deployment at `dtype` changes, with their bytes, and the weights' stored dtype (so sparse
formats are sized at the new width: 2:4 metadata is 12.5% of 16-bit values, 25% of 8-bit ones):

* fp32, tf32, fp16, bf16: every floating-point op runs at the dtype;
* int8, fp8: GEMMs and convolutions (linear, conv, matmul) and the elementwise ops between them
  run at the dtype (quantised activations, as TensorRT's int8/fp8 engines run them); norms,
  softmax and attention stay at 16 bits (their reductions need the range);
* int4 and int8wo (weight-only): linear and conv weights are stored at 4 or 8 bits, everything
  else, the activations and the arithmetic stay at 16 bits (`core.ir.WEIGHT_ONLY_DTYPES`).

That int8/fp8 form is a vendor engine's (static scales, 8-bit activations between layers). A
framework runtime that quantises each linear's input on the fly (`dynamic_activation_quant`)
keeps every other op at 16 bits: the cost families take those ops back with `widened`.
"""

from __future__ import annotations

import dataclasses

from sparsesim.core.errors import WorkloadError
from sparsesim.core.ir import (
    ACTIVATION_QUANT_DTYPES,
    DTYPE_BYTES,
    WEIGHT_ONLY_DTYPES,
    Op,
    Workload,
    activation_dtype,
)

DEPLOY_DTYPES = ("fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int8wo", "int4")
FLOAT_DTYPES = ("fp64", "fp32", "tf32", "fp16", "bf16")
# the 16-bit dtype ops that a narrow deployment keeps wide run at
WIDE_DTYPE = "fp16"
FLOAT8 = "fp8"
NARROW_KINDS = ("linear", "conv", "matmul", "elementwise", "copy")
WEIGHT_KINDS = ("linear", "conv")


def retype(workload: Workload, dtype: str, *, deployment: bool = True) -> Workload:
    """`workload` deployed at `dtype` (named `<name>@<dtype>`); raises WorkloadError for a dtype
    sparsesim does not deploy at. `deployment`: a model built wider is deployed at `dtype` (its
    narrowed ops remember their width, `Op.deployed_from`); False for a single op specified at
    `dtype`, whose operands are already at it."""
    if dtype not in DEPLOY_DTYPES:
        raise WorkloadError(f"--dtype {dtype!r}: not a deployment dtype (use one of {', '.join(DEPLOY_DTYPES)})")
    ops = tuple(_op_at(op, dtype, deployment) for op in workload.ops)
    new_w = {op.weight: op.dtype for op in ops if op.weight is not None}
    weights = {name: dataclasses.replace(info, dtype=new_w.get(name, info.dtype))
               for name, info in workload.weights.items()}
    return dataclasses.replace(workload, name=f"{workload.name}@{dtype}", ops=ops, weights=weights,
                               params={**workload.params, "deploy_dtype": dtype})


def op_dtype(op: Op, dtype: str) -> str:
    """The dtype `op` runs at when its model is deployed at `dtype`."""
    if op.dtype not in FLOAT_DTYPES:
        return op.dtype  # integer/bool tensors (indices, masks) keep their type
    if dtype in WEIGHT_ONLY_DTYPES:
        return dtype if op.kind in WEIGHT_KINDS and op.weight is not None else activation_dtype(dtype)
    if dtype in ACTIVATION_QUANT_DTYPES:
        return dtype if op.kind in NARROW_KINDS else WIDE_DTYPE
    return dtype


def float8_training(workload: Workload) -> Workload:
    """`workload` trained in float8 as torchao's Float8Linear trains it: every linear's GEMMs run at
    fp8, their operands cast on each call (`Op.deployed_from` keeps the width the model built them
    in); every other op, and the weights (so the gradients and optimizer state), stay at that width."""
    ops = tuple(_op_at(op, FLOAT8) if op.kind == "linear" and op.weight is not None else op for op in workload.ops)
    return dataclasses.replace(workload, name=f"{workload.name}@{FLOAT8}", ops=ops,
                               params={**workload.params, "train_dtype": FLOAT8})


def widened(op: Op) -> Op:
    """An op an int8/fp8 deployment retyped, back at the width its model built it in: what it
    moves and runs at under a runtime that keeps the activations at the model's width and
    quantises only its linears' inputs (an op the deployment left alone comes back as it is)."""
    if not op.deployed_from:
        return op
    scale = DTYPE_BYTES[op.deployed_from] / DTYPE_BYTES[op.dtype]
    return dataclasses.replace(op, dtype=op.deployed_from, bytes_moved=round(op.bytes_moved * scale), deployed_from="")


def _op_at(op: Op, dtype: str, deployment: bool = True) -> Op:
    new = op_dtype(op, dtype)
    if new == op.dtype:
        return op
    old_b = DTYPE_BYTES[op.dtype]
    new_b = DTYPE_BYTES[activation_dtype(new)]
    bytes_moved = op.bytes_moved * new_b / old_b
    if op.weight is not None and op.weight_shape is not None and new in WEIGHT_ONLY_DTYPES:
        # the weight part of the traffic shrinks to the weight-only width
        w_elems = 1
        for d in op.weight_shape:
            w_elems *= d
        bytes_moved -= w_elems * (new_b - DTYPE_BYTES[new])
    # an int8/fp8 deployment narrows some ops and moves the rest to WIDE_DTYPE: both remember
    # the width the model built them in
    origin = op.dtype if deployment and dtype in ACTIVATION_QUANT_DTYPES else ""
    return dataclasses.replace(op, dtype=new, bytes_moved=round(max(bytes_moved, 0)), deployed_from=origin)
