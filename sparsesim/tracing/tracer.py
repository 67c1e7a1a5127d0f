"""Trace a PyTorch model into a `Workload`: every aten op it runs, attributed to its module.

Why a TorchDispatchMode and not torch.fx: fx fails on transformers models, and FlopCounterMode
drops CPU attention. Dispatch sees every aten op that really runs (on real tensors or on the
meta device, where nothing is allocated). Module attribution comes from
`torch.utils.module_tracker.ModuleTracker`, extended here to (a) name modules exactly as
`model.named_modules()` does (the stock tracker names the root by its class) and (b) keep an
ordered call stack with a per-module call index, so the innermost module owns each op and a
module called twice is told apart.

Scaled-dot-product attention is caught one level higher, as the torch function
`F.scaled_dot_product_attention`, and recorded as ONE "attention" op whatever kernel torch
then picks: on CPU it is one aten op (`_scaled_dot_product_flash_attention_for_cpu`), on the
meta device (and for masks the fused kernel cannot take) it decomposes into bmm/softmax, and
those inner ops are not recorded a second time.

Pure view/metadata ops (view, t, transpose, expand, detach, ... see `flops.is_metadata_op`)
move no bytes and are skipped; every other op is recorded, as kind "unknown" when no formula
or tag classifies it.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.module_tracker import ModuleTracker

from sparsesim.core import progress
from sparsesim.core.errors import TraceError, WorkloadError
from sparsesim.core.ir import Op, WeightInfo, Workload
from sparsesim.core.threads import many_threads, one_thread
from sparsesim.tracing import guard
from sparsesim.tracing.dataflow import FlowTracker
from sparsesim.tracing.flops import (
    T,
    attention_work,
    classify,
    grouped_mm_work,
    is_metadata_op,
    packed_weight_bytes,
    rnn_layer_work,
)
from sparsesim.tracing.routing import DEFAULT_ROUTING, Routing, parse_routing, routed, sample_loads

aten = torch.ops.aten

TORCH_DTYPES: Mapping[torch.dtype, str] = {
    torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16", torch.bfloat16: "bf16",
    torch.int8: "int8", torch.uint8: "int8", torch.int32: "int32", torch.int64: "int64",
    torch.bool: "bool",
    **{d: "fp8" for d in (getattr(torch, n, None) for n in (
        "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")) if d is not None},
}
_BY_ITEMSIZE = {1: "int8", 2: "fp16", 4: "fp32", 8: "fp64"}

# grouped GEMMs of Mixture-of-Experts layers: (rows, K) activations sorted by expert times an
# (experts, K, N) weight, with `offs` the cumulative rows per expert; torch's kernel and the
# custom op transformers falls back to where torch's has no kernel (named: it is registered
# only once transformers is imported)
_GROUPED_MM = ("aten._grouped_mm", "transformers.grouped_mm_fallback")


def _is_grouped_mm(func: Any, args: tuple, kwargs: dict) -> bool:
    return str(func.overloadpacket) in _GROUPED_MM and _grouped_operands(args, kwargs) is not None

# aten ops whose operands may be a weight parameter, and where the operands sit in args
_WEIGHT_OPERANDS = {
    aten.mm: (0, 1), aten.addmm: (1, 2), aten.bmm: (0, 1), aten.baddbmm: (1, 2),
    aten.convolution: (0, 1), aten._convolution: (0, 1),
}


# GEMMs and convolutions a CPU runs far more slowly at 16 bits than at 32 (ResNet-50's fp16
# forward: ~20x; no 16-bit GEMM kernels on most hosts): the tracer runs them on fp32 copies and
# rounds the result back, which is what the 16-bit kernels (fp32 accumulation) compute; the ops
# recorded, their dtypes and the activations measured are those of the 16-bit model.
_WIDEN_ON_CPU = frozenset({
    aten.convolution.default, aten._convolution.default, aten.mm.default, aten.addmm.default,
    aten.bmm.default, aten.baddbmm.default,
})
_NARROW_FLOATS = (torch.float16, torch.bfloat16)


# The trace runs on one intra-op thread (`core.threads.one_thread`: most of a forward is small
# ops); a CPU GEMM or convolution of at least this many multiply-adds is worth the process's
# other threads (BERT-base at seq 128: 128 x 768 x 3072 = 30M in each FFN linear; its trace
# 0.55 -> 0.31 s on two cores)
PARALLEL_MIN_MACS = 2**23


def _macs(func: Any, args: tuple) -> int:
    """Multiply-adds of a GEMM or convolution from its operands (a convolution's stride ignored:
    an upper bound, enough for a threshold)."""
    t = [a for a in args if isinstance(a, torch.Tensor)]
    if func in (aten.convolution.default, aten._convolution.default):
        x, w = t[0], t[1]
        return x.numel() // max(x.shape[1], 1) * w.numel() if x.dim() > 1 else 0
    a, b = t[-2], t[-1]
    return a.numel() * b.shape[-1]


def _run_op(func: Any, args: tuple, kwargs: dict, threads: int = 1) -> Any:
    """`func(*args, **kwargs)`; a 16-bit CPU GEMM or convolution computed in fp32 and rounded
    back; a large one on `threads` intra-op threads."""
    if func not in _WIDEN_ON_CPU:
        return func(*args, **kwargs)
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    on_cpu = bool(tensors) and all(t.device.type == "cpu" for t in tensors)
    with many_threads(threads if on_cpu and threads > 1 and _macs(func, args) >= PARALLEL_MIN_MACS else 1):
        if on_cpu and tensors[0].dtype in _NARROW_FLOATS and all(t.dtype == tensors[0].dtype for t in tensors):
            wide = tuple(a.float() if isinstance(a, torch.Tensor) else a for a in args)
            return func(*wide, **kwargs).to(tensors[0].dtype)
        return func(*args, **kwargs)


def dtype_name(dtype: torch.dtype) -> str:
    if dtype in TORCH_DTYPES:
        return TORCH_DTYPES[dtype]
    return _BY_ITEMSIZE.get(dtype.itemsize, "fp32")


class _CallStack(ModuleTracker):
    """ModuleTracker that names modules as `named_modules()` does and keeps an ordered stack
    of (qualified name, call index) for the modules now running."""

    def __init__(self, root: nn.Module) -> None:
        super().__init__()
        for name, mod in root.named_modules():
            self._known_modules[mod] = name
            self._seen_modules.add(mod)
        # modules a library builds inside forward (transformers wraps some functions in throwaway
        # modules) are not the user's: their ops belong to the enclosing module of the model
        self._own = {id(m) for m in root.modules()}
        self.stack: list[tuple[str, int, nn.Module]] = []
        self._calls: dict[str, int] = defaultdict(int)

    def _fw_pre_hook(self, mod: nn.Module, input: Any) -> None:
        super()._fw_pre_hook(mod, input)
        if id(mod) not in self._own:
            return
        name = self._get_mod_name(mod)
        self.stack.append((name, self._calls[name], mod))
        self._calls[name] += 1

    def _fw_post_hook(self, mod: nn.Module, input: Any, output: Any) -> None:
        super()._fw_post_hook(mod, input, output)
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][2] is mod:
                del self.stack[i]
                break

    def current(self) -> tuple[str, int, nn.Module | None]:
        return self.stack[-1] if self.stack else ("", 0, None)


def _strided(tensors: list[torch.Tensor]) -> bool:
    """Whether a tensor operand is a strided view: not contiguous, and not merely broadcast
    (a stride of 0 along an expanded axis reads the same elements again, contiguously)."""
    return any(t.numel() > 1 and not t.is_contiguous() and all(st != 0 for st, n in zip(t.stride(), t.shape) if n > 1)
               for t in tensors)


class _Recorder:
    """Turns aten calls into `Op`s; owns weight attribution and activation measurement."""

    def __init__(self, model: nn.Module, measure: bool) -> None:
        self.calls = _CallStack(model)
        self.moe_blocks: dict[tuple[str, int], int] = {}
        self.last_top_k = 0
        self.measure = measure
        self.ops: list[Op] = []
        self.suppress = 0
        self.param_names: dict[int, str] = {id(p): n for n, p in model.named_parameters()}
        self.params: dict[str, nn.Parameter] = dict(model.named_parameters())
        self.weights: dict[str, WeightInfo] = {}
        self.norms_sq: dict[str, torch.Tensor] = {}
        self.flow = FlowTracker()
        self.on_op: Callable[[int], Any] = lambda n: None  # progress: one more op recorded
        self.threads = torch.get_num_threads()  # the caller's, for large ops (`_run_op`)

    # -- helpers
    def _param_of(self, t: Any, mod: nn.Module | None) -> tuple[str, nn.Parameter, bool] | None:
        """The parameter an operand is (or is a view of) and whether the operand is its
        transpose; on the meta device, where storage cannot be compared, fall back to the owning
        leaf module's `weight` of matching shape."""
        if not isinstance(t, torch.Tensor):
            return None
        if isinstance(t, nn.Parameter) and id(t) in self.param_names:
            return self.param_names[id(t)], t, False
        base = t._base
        if isinstance(base, nn.Parameter) and id(base) in self.param_names:
            flipped = tuple(t.shape) != tuple(base.shape) or t.stride() != base.stride()
            return self.param_names[id(base)], base, flipped
        if mod is not None:
            w = stored_weight(mod)
            if isinstance(w, nn.Parameter) and id(w) in self.param_names and t.dim() == w.dim():
                ts, ws = tuple(t.shape), tuple(w.shape)
                if ts == ws and (t.dim() != 2 or ws[0] != ws[1]):
                    return self.param_names[id(w)], w, False
                if t.dim() == 2 and ts == ws[::-1]:
                    # square and ambiguous: nn.Linear (N x K, used transposed) unless a K x N Conv1D
                    return self.param_names[id(w)], w, type(mod).__name__ != "Conv1D"
        return None

    def _op_dtype(self, args: Any, out: Any) -> str:
        flat = [a for a in tree_flatten(args)[0] if isinstance(a, torch.Tensor)]
        for a in flat:
            if a.is_floating_point():
                return dtype_name(a.dtype)
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        if outs:
            return dtype_name(outs[0].dtype)
        return dtype_name(flat[0].dtype) if flat else "fp32"

    def _add(self, aten_name: str, work: Any, args: Any, out: Any, **extra: Any) -> None:
        name, call_index, _ = self.calls.current()
        tensors = [a for a in tree_flatten(args)[0] if isinstance(a, torch.Tensor)]
        ins = tuple(tuple(a.shape) for a in tensors)
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        note = "; ".join(n for n in (work.note, extra.pop("note", "")) if n)
        self.ops.append(Op(
            index=len(self.ops), kind=extra.pop("kind", work.kind), aten=aten_name, module=name,
            call_index=call_index, dtype=self._op_dtype(args, out), input_shapes=ins,
            output_shape=tuple(outs[0].shape) if outs else (), flops=int(work.flops),
            bytes_moved=int(work.bytes_moved), gemm=extra.pop("gemm", work.gemm), conv=work.conv,
            note=note, causal=getattr(work, "causal", False), masked=getattr(work, "masked", False),
            strided=_strided(tensors), **extra,
        ))
        self.on_op(1)

    # -- entry points
    def on_aten(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        if func.overloadpacket is aten.mkldnn_rnn_layer:
            self.on_rnn_layer(func, args, out)
            return
        if func.overloadpacket is aten.topk and isinstance(out, tuple):
            self.last_top_k = int(out[0].shape[-1]) if out[0].dim() else 0
        if _is_grouped_mm(func, args, kwargs):
            self.on_grouped_mm(func, args, kwargs, out)
            self.flow.record(len(self.ops) - 1, args, kwargs, out)
            return
        work = classify(func, tree_map(_as_t, args), tree_map(_as_t, out), tree_map(_as_t, kwargs))
        extra: dict[str, Any] = {}
        packet = func.overloadpacket
        if packet in _WEIGHT_OPERANDS and work.kind in ("matmul", "conv"):
            extra = self._weight_fields(packet, args, work)
        self._add(str(func), work, (args, kwargs), out, **extra)
        self.flow.record(len(self.ops) - 1, args, kwargs, out)

    def on_rnn_layer(self, func: Any, args: tuple, out: Any) -> None:
        """An LSTM layer (one fused aten op on CPU) as its two weight GEMMs, each with its weight,
        so plans sparsify weight_ih and weight_hh like any Linear."""
        x, w_ih, w_hh = args[0], args[1], args[2]
        works = rnn_layer_work(_as_t(x), _as_t(w_ih), _as_t(w_hh), tree_map(_as_t, out))
        for w, work, operands in zip((w_ih, w_hh), works, ((x, w_ih), (args[5], w_hh))):
            extra: dict[str, Any] = {}
            found = self._param_of(w, None)
            if found is not None:
                name, param, _ = found
                extra = {"weight": name, "weight_shape": tuple(param.shape)}
                self.flow.weight(name, param, 0)  # the fused layer pins its gates: never channel-pruned
                self.weights.setdefault(name, WeightInfo(name=name, shape=tuple(param.shape),
                                                         dtype=dtype_name(param.dtype), on_meta=param.is_meta))
            self._add(str(func), work, operands, out, **extra)

    def on_grouped_mm(self, func: Any, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        """A Mixture-of-Experts grouped GEMM as one op owning the 3-D expert weight, with the rows
        routed to each expert: counted from `offs` when the router really ran, else drawn from
        the default routing model (`sparsesim.tracing.routing`), which `route` can replace."""
        a, w, offs = _grouped_operands(args, kwargs)  # type: ignore[misc]
        _, _, mod = self.calls.current()
        found = self._param_of(w, mod)
        experts = int(w.shape[0])
        rows = int(a.shape[0])
        top_k = _experts_top_k(mod) or self.last_top_k or 1
        extra: dict[str, Any] = {"experts": experts, "top_k": top_k}
        note = "grouped expert GEMM"
        if found is not None:
            name, param, flipped = found
            extra["weight"] = name
            extra["weight_shape"] = tuple(param.shape)
            if not flipped:
                note += "; weight stored K x N"
                extra["weight_k_major"] = True
            self.weights.setdefault(name, WeightInfo(
                name=name, shape=tuple(param.shape), dtype=dtype_name(param.dtype), on_meta=param.is_meta))
        if self.measure and not a.is_meta:
            extra["activation_density"] = _density(a)
            extra["activation_measured"] = True
        work = grouped_mm_work(_as_t(a), _as_t(w), _as_t(out))
        self._add(str(func), work, (args, kwargs), out, note=note, **extra)
        op = self.ops[-1]
        if offs is not None and not offs.is_meta:
            ends = [int(x) for x in offs.tolist()]
            loads = tuple(e - s for s, e in zip([0, *ends[:-1]], ends))
            self.ops[-1] = routed(op, loads, Routing("measured"))
        else:
            block = self.moe_blocks.setdefault(self.calls.current()[:2], len(self.moe_blocks))
            routing = parse_routing(DEFAULT_ROUTING)
            self.ops[-1] = routed(op, sample_loads(routing, experts, top_k, rows // top_k, block), routing)

    def on_attention(self, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        q, k, v = args[:3]
        mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
        causal = bool(kwargs.get("is_causal", args[5] if len(args) > 5 else False))
        t = lambda x: T(tuple(x.shape), x.element_size()) if isinstance(x, torch.Tensor) else None
        tq, tk, tv = t(q), t(k), t(v)
        if tq is None or tk is None or tv is None:
            raise TypeError("scaled_dot_product_attention: query, key and value must be tensors")
        work = attention_work(tq, tk, tv, t(out), t(mask), causal)
        self._add("scaled_dot_product_attention", work, (q, k, v, mask), out)
        self.flow.attention(q, k, v, mask, out)
        self.flow.record(len(self.ops) - 1, (q, k, v, mask), {"causal": causal}, out)

    def _weight_fields(self, packet: Any, args: tuple, work: Any) -> dict[str, Any]:
        _, _, mod = self.calls.current()
        ia, ib = _WEIGHT_OPERANDS[packet]
        a, b = args[ia], args[ib]
        conv = work.kind == "conv"
        found_b = self._param_of(b, mod)
        found_a = None if (found_b or conv) else self._param_of(a, mod)
        if not conv and any(f is not None and f[1].dim() != 2 for f in (found_a, found_b)):
            found_a = found_b = None  # a batched GEMM against a 3-D parameter: not a weight op
        found = found_b or found_a
        if found is None:
            if self.measure and not a.is_meta:
                return {"activation_density": _density(a), "activation_measured": True}
            return {}
        extra: dict[str, Any] = {}
        k_axis_param = 1
        name, param, flipped = found
        act = a if found_b else b
        if conv:
            extra["weight_shape"] = tuple(param.shape)
            self.flow.weight(name, param, 1 if work.transposed else 0)
        else:
            # GEMM operand as K x N (weight on the right) or N x K (weight on the left)
            k_axis_operand = 0 if found_b else 1
            k_axis_param = k_axis_operand if not flipped else 1 - k_axis_operand
            k, n = param.shape[k_axis_param], param.shape[1 - k_axis_param]
            extra["weight_shape"] = (int(n), int(k))
            extra["kind"] = "linear"
            if k_axis_param == 0:
                extra["note"] = "weight stored K x N"
                extra["weight_k_major"] = True
            self.flow.weight(name, param, 1 if k_axis_param == 0 else 0)
            if found_a is not None:  # out = W @ x: rows of activations are x's columns
                g = work.gemm
                extra["gemm"] = type(g)(m=int(act.shape[-1]), n=int(n), k=int(k), batch=g.batch)
        extra["weight"] = name
        self.weights.setdefault(name, WeightInfo(
            name=name, shape=tuple(param.shape), dtype=dtype_name(param.dtype), on_meta=param.is_meta))
        if self.measure and not act.is_meta:
            extra["activation_density"] = _density(act)
            extra["activation_measured"] = True
            sq = _feature_norms_sq(act, param, conv, found_b is not None, work, k_axis_param)
            if sq is not None:
                prev = self.norms_sq.get(name)
                self.norms_sq[name] = sq if prev is None or prev.shape != sq.shape else prev + sq
        return extra


def _grouped_operands(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, Any] | None:
    """(activations, 3-D expert weight, offs) of a MoE grouped GEMM, None for other layouts."""
    a, w = args[0], args[1]
    offs = kwargs.get("offs", args[2] if len(args) > 2 else None)
    if isinstance(a, torch.Tensor) and isinstance(w, torch.Tensor) and a.dim() == 2 and w.dim() == 3:
        return a, w, offs
    return None


def _experts_top_k(mod: nn.Module | None) -> int:
    """Experts per token, as transformers' MoE configs name it (0 when not found)."""
    config = getattr(mod, "config", None)
    return int(getattr(config, "num_experts_per_tok", 0) or 0)


def _meta_grouped_mm(args: tuple, kwargs: dict) -> torch.Tensor:
    """The output of a grouped GEMM on the meta device, whose kernel checks the CUDA kernel's
    bf16-only rule; the shapes do not depend on the dtype."""
    a, w, _ = _grouped_operands(args, kwargs)  # type: ignore[misc]
    dt = kwargs.get("out_dtype") or a.dtype
    return torch.empty(a.shape[0], w.shape[-1], dtype=dt, device="meta")


def _as_t(x: Any) -> Any:
    """A tensor as the formulas see it (shape, bytes per element, stored nonzeros if sparse)."""
    if not isinstance(x, torch.Tensor):
        return x
    if x.layout != torch.strided and not x.is_meta:
        nnz = x._nnz() if x.layout == torch.sparse_coo else x.values().numel()
        return T(tuple(x.shape), x.element_size(), nnz=int(nnz))
    return T(tuple(x.shape), x.element_size())


def _density(x: torch.Tensor) -> float:
    n = x.numel()
    return float(torch.count_nonzero(x).item()) / n if n else 1.0


def _sq_norm(x: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """Accumulated in fp32 at least (fp16 squares overflow); an fp64 input stays fp64 (torch
    refuses to narrow it) and the result is fp32 like every other norm."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.linalg.vector_norm(x, 2, dim=dims, dtype=acc).square_().float()


def _feature_norms_sq(act: torch.Tensor, param: torch.Tensor, conv: bool, weight_right: bool,
                      work: Any, k_axis_param: int) -> torch.Tensor | None:
    """Squared L2 norm of the activation per input feature, shaped to broadcast against the
    parameter as stored (Linear N x K -> 1 x K; GPT-2 Conv1D K x N -> K x 1; conv
    Cout x Cin/g x k.. -> per input channel, per group)."""
    x = act.detach()
    if conv:
        g = work.conv.groups
        cin = x.shape[1]
        per_ch = _sq_norm(x, [d for d in range(x.dim()) if d != 1])  # (Cin,)
        cout, cin_g = param.shape[0], param.shape[1]
        if cin != cin_g * g:
            return None
        s = per_ch.view(g, 1, cin_g).expand(g, cout // g, cin_g).reshape(cout, cin_g)
        return s.reshape(cout, cin_g, *([1] * (param.dim() - 2)))
    if x.dim() != 2 or param.dim() != 2:
        return None
    per_k = _sq_norm(x, [0] if weight_right else [1])  # (K,)
    k = per_k.shape[0]
    return per_k.view(k, 1) if k_axis_param == 0 else per_k.view(1, k)


def stored_weight(mod: nn.Module) -> Any:
    """The parameter a module's computed `weight` comes from: the weight itself, or under
    torch.nn.utils.prune `weight_orig` (weight = weight_orig * mask), under weight_norm `weight_v`
    (weight = g * v / ||v||, the direction a mask prunes), or a parametrization's original."""
    w = getattr(mod, "weight", None)
    if isinstance(w, nn.Parameter):
        return w
    for local in ("weight_orig", "weight_v"):
        w = getattr(mod, local, None)
        if isinstance(w, nn.Parameter):
            return w
    params = getattr(getattr(mod, "parametrizations", None), "weight", None)
    if params is not None:  # torch.nn.utils.parametrizations.weight_norm: original0 = g, original1 = v
        for local in ("original", "original1"):
            w = getattr(params, local, None)
            if isinstance(w, nn.Parameter):
                return w
    return None


class _RecordFault(Exception):
    """sparsesim failed to record an op the forward ran (so the error does not blame the forward)."""

    def __init__(self, op: str) -> None:
        super().__init__(op)
        self.op = op


def _first_line(e: BaseException | None) -> str:
    text = str(e).strip() if e is not None else ""
    return text.splitlines()[0] if text else ""


class _DispatchMode(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # Tracing never runs under torch.compile; the dynamo-disable wrapper torch puts around
        # __torch_dispatch__ otherwise costs a ~2 s import of torch._dynamo on the first op.
        return False

    def __init__(self, rec: _Recorder) -> None:
        super().__init__()
        self.rec = rec

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_grouped_mm(func, args, kwargs) and args[0].is_meta:
            out = _meta_grouped_mm(args, kwargs)
        else:
            out = _run_op(func, args, kwargs, self.rec.threads)
        if self.rec.suppress == 0:
            try:
                self.rec.flow.on_op(func, args, kwargs, out)
                if not is_metadata_op(func):
                    self.rec.on_aten(func, args, kwargs, out)
            except Exception as e:  # the recorder's fault, not the forward's: said so (trace)
                raise _RecordFault(str(func)) from e
        return out


class _AttentionMode(TorchFunctionMode):
    """Records F.scaled_dot_product_attention as one op and hides the aten ops it runs."""

    def __init__(self, rec: _Recorder) -> None:
        super().__init__()
        self.rec = rec

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention or self.rec.suppress:
            return func(*args, **kwargs)
        self.rec.suppress += 1
        try:
            out = func(*args, **kwargs)
        finally:
            self.rec.suppress -= 1
        try:
            self.rec.on_attention(args, kwargs, out)
        except Exception as e:
            raise _RecordFault("scaled_dot_product_attention") from e
        return out


def trace(model: nn.Module, example_inputs: Any, *, name: str = "model",
          measure_activations: bool = True, pin_outputs: bool = True) -> Workload:
    """Run `model` once on `example_inputs` and record every op it executes.

    `example_inputs` is a tuple/list of positional args, a dict of keyword args, or one tensor.
    Runs under no_grad, on one thread (see `sparsesim.core.threads`); the model's train/eval mode
    is left as it is. The workload's `dataflow` says which channels every tensor carries
    (`sparsesim.tracing.dataflow`); the inputs' and, with `pin_outputs`, the outputs' channels
    are never pruned (a one-layer workload passes False: its outputs feed layers outside it).
    On the meta device
    nothing is allocated and activations are not measured (density 1.0, measured False).
    """
    if not isinstance(model, nn.Module):
        raise TraceError(f"{name}: expected a torch.nn.Module, got {type(model).__name__}")
    notes: list[str] = []
    original = _compiled_original(model)
    if original is not None:
        # dynamo would trace into this dispatch mode and fail; the compiled graph runs the same
        # aten ops as the module it was compiled from
        notes.append(f"{name}: a torch.compile'd module; traced its original module "
                     f"({type(original).__name__}), whose ops the compiled graph runs")
        model = original
    args: tuple[Any, ...]
    if isinstance(example_inputs, dict):
        args, kwargs = (), dict(example_inputs)
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    else:
        args, kwargs = (example_inputs,), {}
    rec = _Recorder(model, measure_activations)
    shown = progress.bar(f"trace {name}", unit="op")
    rec.on_op = shown.update

    def at() -> str:
        """The module now running, for a message."""
        where = rec.calls.current()[0] if rec.calls.stack else ""
        return f" in module '{where}'" if where else ""

    # nn.MultiheadAttention / nn.TransformerEncoderLayer take a fused "fast path" under no_grad
    # (one aten op hiding every projection); turn it off so each Linear is seen.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        rec.flow.pin_tensors((args, kwargs))
        with one_thread(), torch.no_grad(), rec.calls, _AttentionMode(rec), _DispatchMode(rec), \
                warnings.catch_warnings():
            # deprecation notices meant for model authors (transformers' past_key_values, ...)
            # say nothing about the user's question; they do not reach the terminal
            for category in (FutureWarning, DeprecationWarning):
                warnings.simplefilter("ignore", category)
            guard.stage(f"tracing the forward of {name}")
            with guard.user_code(lambda: f"{name}: forward{at()} ({guard.source_file(type(model))})"):
                result = model(*args, **kwargs)
        if pin_outputs:
            rec.flow.pin_tensors(_output_tensors(result))
    except (TraceError, WorkloadError):
        raise
    except _RecordFault as e:  # sparsesim's own recording failed, not the user's forward
        cause = e.__cause__
        raise TraceError(f"{name}: sparsesim could not record op {e.op}{at()} "
                         f"({type(cause).__name__}: {_first_line(cause)}); the forward itself ran it: "
                         "please report this with the model") from cause
    except guard.Expired as e:  # the time limit ran out in the forward: say in which module
        raise guard.Expired(f"{e.stage}{at()}") from None
    except Exception as e:  # the user's forward failed: one line naming the model and the error
        raise TraceError(f"{name}: forward raised {type(e).__name__}{at()}: {_first_line(e)}") from e
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        shown.close()
    if not rec.ops:
        raise TraceError(f"{name}: the forward ran no operation to cost (it returns its input unchanged, "
                         f"or only views/reshapes it, or the model is empty: {type(model).__name__} with "
                         f"{sum(1 for _ in model.parameters())} parameters); nothing to estimate")
    norms = {k: v.sqrt() for k, v in rec.norms_sq.items()}
    packed = [op for op in rec.ops if op.weight is None and op.gemm is not None and packed_weight_bytes(op.aten)]
    for op in packed:  # the packed weight is held in memory like any other (its bytes, its dtype)
        wname, g = f"{op.module}.weight", op.gemm
        if g is not None:
            rec.weights.setdefault(wname, WeightInfo(name=wname, shape=(g.n, g.k), on_meta=False,
                                                     dtype=_BY_ITEMSIZE[packed_weight_bytes(op.aten) or 1]))
    if packed:
        notes.append(f"{name}: {len(packed)} dynamically quantised linear(s): costed, but their packed weights "
                     "are not parameters, so plans leave them dense")
    return Workload(name=name, ops=tuple(rec.ops), weights=dict(rec.weights), model=model,
                    activation_norms=norms, input_bytes=held_bytes((args, kwargs)), notes=tuple(notes),
                    dataflow=rec.flow.result())


def _compiled_original(model: nn.Module) -> nn.Module | None:
    """The module a torch.compile'd module (an OptimizedModule) wraps, else None; checked by
    name, so torch._dynamo is not imported just to ask."""
    original = getattr(model, "_orig_mod", None)
    if type(model).__name__ == "OptimizedModule" and isinstance(original, nn.Module):
        return original
    return None


# how deep `held_bytes` looks into objects that are not containers (a KV cache object holds
# per-layer objects holding tensors, under the args tuple and kwargs dict)
_HELD_DEPTH = 6


def held_bytes(obj: Any, depth: int = _HELD_DEPTH, seen: set[int] | None = None) -> int:
    """Bytes of the distinct tensors reachable from `obj` through containers and plain objects'
    attributes (e.g. a transformers KV cache after the forward filled it); meta tensors count by
    shape. Modules are skipped: their parameters are the weights, counted apart."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth < 0 or isinstance(obj, (nn.Module, str, bytes, int, float, bool, type(None))):
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        items: Any = obj.values()
    elif isinstance(obj, (list, tuple, set, frozenset)):
        items = obj
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        items = vars(obj).values()
    else:
        return 0
    return sum(held_bytes(x, depth - 1, seen) for x in items)


def _output_tensors(result: Any) -> list[torch.Tensor]:
    """The tensors a model returns, looking into tuples, lists and dicts (transformers'
    ModelOutput is one); other objects (a KV cache) are state, not results."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, Mapping):
        result = list(result.values())
    if isinstance(result, (list, tuple)):
        return [t for r in result for t in _output_tensors(r)]
    return []
