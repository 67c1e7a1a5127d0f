"""The shrink pass: channel pruning turns ops into smaller dense ops.

Every recorded op kept its call as shapes with the channels each dimension carries
(`sparsesim.tracing.dataflow`). Given a `Cut` (which channels a plan removes), each op's
tensors get their kept sizes and the op's work is recomputed by the same formula registry the
tracer used (`sparsesim.tracing.flops`): a linear layer loses rows and columns, attention
loses heads, a depthwise convolution loses groups, and a GELU between two pruned layers moves
fewer bytes. Cost models then see ordinary dense ops; they never shrink anything themselves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sparsesim.core.ir import GemmShape, Op, Workload
from sparsesim.core.lazy import lazy_module
from sparsesim.sparsity.coupling import Cut
from sparsesim.sparsity.records import LayerSparsity
from sparsesim.tracing.dataflow import OpFlow
from sparsesim.tracing.flops import T, attention_work, classify

if TYPE_CHECKING:
    import torch
    from torch.utils import _pytree as pytree
else:
    torch = lazy_module("torch")
    pytree = lazy_module("torch.utils._pytree")

ATTENTION = "scaled_dot_product_attention"


def shrink(workload: Workload, cut: Cut | None, lone: Mapping[str, LayerSparsity] | None = None) -> Workload:
    """`workload` with every op that carries removed channels replaced by its smaller op
    (the workload itself when nothing is removed). `lone` are channel-pruned weights the
    dataflow does not know (a workload built by hand): their own ops shrink, nothing else."""
    flow = workload.dataflow
    lone = lone or {}
    if (cut is None or cut.empty or flow is None) and not lone:
        return workload
    ops = []
    for op in workload.ops:
        if op.weight is not None and op.weight in lone:
            ops.append(shrink_layer_op(op, lone[op.weight]))
        elif cut is not None and flow is not None and not cut.empty:
            ops.append(_shrunk(op, flow.ops.get(op.index), cut))
        else:
            ops.append(op)
    return replace(workload, ops=tuple(ops))


def _shapes(f: OpFlow) -> list[tuple[int, ...]]:
    return [t.shape for t in pytree.tree_flatten((f.args, f.kwargs, f.out))[0] if isinstance(t, T)]


def _shrunk(op: Op, f: OpFlow | None, cut: Cut) -> Op:
    if f is None:
        return op
    old = _shapes(f)
    n_in = len(op.input_shapes)
    if len(old) != len(f.dims) or tuple(old[:n_in]) != op.input_shapes:
        return op  # the op was edited after tracing: leave it as it is
    new = [cut.shape(d) for d in f.dims]
    if new == old:
        return op
    it = iter(new)
    args, kwargs, out = pytree.tree_map(lambda t: T(next(it), t.itemsize) if isinstance(t, T) else t,
                                 (f.args, f.kwargs, f.out))
    if op.aten == ATTENTION:
        q, k, v, mask = args
        work = attention_work(q, k, v, out, mask, bool(kwargs.get("causal")))
        orig_gemm = op.gemm
    else:
        func = _func(op.aten)
        if work_is_conv(op) and len(args) > 8:
            args = _regroup(args)
        work = classify(func, args, out, dict(kwargs))
        orig_gemm = classify(func, f.args, f.out, dict(f.kwargs)).gemm
    gemm = work.gemm
    if op.gemm is not None and gemm is not None and orig_gemm is not None and orig_gemm != op.gemm:
        # the tracer swapped M and N (a weight on the left: out = W @ x)
        gemm = GemmShape(m=gemm.n, n=gemm.m, k=gemm.k, batch=gemm.batch, groups=gemm.groups)
    weight_shape = op.weight_shape
    if weight_shape is not None and gemm is not None:
        weight_shape = tuple(args[1].shape) if op.conv is not None else (gemm.n, gemm.k)
    return replace(op, input_shapes=tuple(new[:n_in]), output_shape=new[n_in] if len(new) > n_in else op.output_shape,
                   flops=int(work.flops), bytes_moved=int(work.bytes_moved), gemm=gemm if op.gemm else op.gemm,
                   conv=work.conv if op.conv else op.conv, weight_shape=weight_shape)


def work_is_conv(op: Op) -> bool:
    return op.conv is not None


def _regroup(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """A grouped convolution that lost whole groups (a depthwise conv losing channels) runs
    fewer groups: groups = input channels / input channels per group."""
    x, w, transposed, groups = args[0], args[1], args[6], args[8]
    if transposed or groups == 1:
        return args
    per = w.shape[1]
    return (*args[:8], max(1, x.shape[1] // per) if per else groups, *args[9:])


def _func(name: str) -> Any:
    ns, packet, overload = name.split(".")
    return getattr(getattr(getattr(torch.ops, ns), packet), overload)


def shrink_layer_op(op: Op, layer: LayerSparsity | None) -> Op:
    """One weight op alone, as channel pruning of its own weight leaves it: kept rows -> N,
    kept columns -> K (a lone layer whose neighbours are outside the workload, as in a
    kernel benchmark or a workload built by hand). Traced ops are shrunk through the dataflow."""
    g = op.gemm
    if g is None or layer is None or not layer.pattern.spec.shrinks_op:
        return op
    st = layer.stats
    n = math.ceil(g.n * st.kept_rows / st.rows) if st.rows else g.n
    k = math.ceil(g.k * st.kept_cols / st.cols) if st.cols else g.k
    scale = (n * k) / (g.n * g.k) if g.n * g.k else 1.0
    ws = (n, k) if op.weight_shape is not None and len(op.weight_shape) == 2 else op.weight_shape
    return replace(op, gemm=replace(g, n=n, k=k), flops=int(op.flops * scale), weight_shape=ws)
