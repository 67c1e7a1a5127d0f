"""Per-aten-op formulas: what kind of work an op is, its GEMM shape, FLOPs and bytes moved.

Modelled on torch/utils/flop_counter.py: each formula is a pure function of tensor *shapes*
(passed as `T(shape, itemsize)` records, never real tensors), registered per aten overload
packet by decorator, so every formula is trivially unit-tested and works on the meta device.
The tracer converts the real call into `T`s and asks `formula_for(func)`.

An op with no formula is not dropped: `classify` falls back to the op's torch tags
(pointwise -> elementwise, reduction -> reduction) and then to kind "unknown" with its
input+output bytes. Pure view/metadata ops are a separate list (`is_metadata_op`): they
move no bytes and the tracer skips them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import prod
from typing import TYPE_CHECKING, Any

from sparsesim.core.ir import UNKNOWN, ConvGeometry, GemmShape
from sparsesim.core.lazy import lazy_module
from sparsesim.tracing.opnames import OpName, OpSet, OpTable, aten, quantized

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

# FLOPs charged per element by memory-bound ops (they are bandwidth bound; these only keep
# their FLOP column honest, they never decide latency):
ELEMENTWISE_FLOPS_PER_ELEMENT = 1  # one arithmetic op (or one transcendental) per output element
# layer/batch/rms norm: mean and variance accumulation (2 per element, read once), centre and
# scale (2), affine weight and bias (2) -> 6 per element
NORM_FLOPS_PER_ELEMENT = 6
# softmax: running max (1), subtract (1), exp (1), sum (1), divide (1) -> 5 per element
SOFTMAX_FLOPS_PER_ELEMENT = 5
REDUCTION_FLOPS_PER_ELEMENT = 1  # one add/compare per input element
# weight norm w = g * v / ||v||: square and accumulate (2) for the norm, one scale (1) per element
WEIGHT_NORM_FLOPS_PER_ELEMENT = 3
# bytes of one index of a COO sparse tensor (int64) per dimension
SPARSE_INDEX_BYTES = 8
INT8_BYTES = 1
FP16_BYTES = 2


@dataclass(frozen=True)
class T:
    """A tensor as a formula sees it: shape and bytes per element."""

    shape: tuple[int, ...]
    itemsize: float
    nnz: int | None = None  # stored nonzeros of a torch.sparse (COO) tensor; None when strided

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def nbytes(self) -> int:
        if self.nnz is not None:  # values plus one int64 index per dimension per nonzero
            return int(self.nnz * (self.itemsize + SPARSE_INDEX_BYTES * len(self.shape)))
        return int(self.numel * self.itemsize)


@dataclass(frozen=True)
class OpWork:
    """What a formula says about one aten call."""

    kind: str
    flops: int
    bytes_moved: int
    gemm: GemmShape | None = None
    conv: ConvGeometry | None = None
    note: str = ""
    causal: bool = False  # an attention whose mask is causal (a fused kernel skips the masked tiles)
    masked: bool = False  # an attention given an additive mask or bias tensor (attn_mask)
    transposed: bool = False  # a transposed convolution (its weight is stored Cin x Cout)


Formula = Callable[..., OpWork]
# by name (`tracing.opnames`): torch is imported when the first op is looked up, not here
_REGISTRY: OpTable[Formula] = OpTable()


def register(*packets: OpName) -> Callable[[Formula], Formula]:
    """Register `fn(*args, out=T|tuple[T], **kwargs) -> OpWork` for the given aten packets."""

    def deco(fn: Formula) -> Formula:
        _REGISTRY.add(packets, fn)
        return fn

    return deco


def formula_for(func: Any) -> Formula | None:
    """The formula for an aten overload (looked up by overload, then by its packet)."""
    table = _REGISTRY.table()
    if func in table:
        return table[func]
    packet = getattr(func, "overloadpacket", None)
    return table.get(packet)


def _tensors(x: Any) -> list[T]:
    if isinstance(x, T):
        return [x]
    if isinstance(x, (list, tuple)):
        out: list[T] = []
        for y in x:
            out.extend(_tensors(y))
        return out
    if isinstance(x, dict):
        return _tensors(list(x.values()))
    return []


def io_bytes(args: Sequence[Any], out: Any, kwargs: dict | None = None) -> int:
    """Bytes read (every tensor input) plus bytes written (every tensor output)."""
    ins = _tensors(list(args)) + _tensors(kwargs or {})
    return sum(t.nbytes for t in ins) + sum(t.nbytes for t in _tensors(out))


def _first(out: Any) -> T:
    ts = _tensors(out)
    return ts[0] if ts else T((), 0)


# ---------------------------------------------------------------- matmul-like

def gemm_work(m: int, n: int, k: int, batch: int, nbytes: int, kind: str = "matmul") -> OpWork:
    g = GemmShape(m=m, n=n, k=k, batch=batch)
    return OpWork(kind, 2 * g.macs, nbytes, gemm=g)


@register(aten.mm)
def mm_formula(a: T, b: T, *, out: Any, **_: Any) -> OpWork:
    m, k = a.shape
    k2, n = b.shape
    assert k == k2, (a.shape, b.shape)
    return gemm_work(m, n, k, 1, io_bytes([a, b], out))


@register(aten.addmm)
def addmm_formula(bias: T, a: T, b: T, *, out: Any, **_: Any) -> OpWork:
    m, k = a.shape
    _k, n = b.shape
    return gemm_work(m, n, k, 1, io_bytes([bias, a, b], out))


@register(aten.bmm)
def bmm_formula(a: T, b: T, *, out: Any, **_: Any) -> OpWork:
    bt, m, k = a.shape
    _b, _k, n = b.shape
    return gemm_work(m, n, k, bt, io_bytes([a, b], out))


@register(aten.baddbmm)
def baddbmm_formula(bias: T, a: T, b: T, *, out: Any, **_: Any) -> OpWork:
    bt, m, k = a.shape
    _b, _k, n = b.shape
    return gemm_work(m, n, k, bt, io_bytes([bias, a, b], out))


def grouped_mm_work(a: T, w: T, out: Any) -> OpWork:
    """A Mixture-of-Experts grouped GEMM: (S, K) rows sorted by expert times an (E, K, N) expert
    weight, each row multiplied by its own expert only: 2 S K N FLOPs, not E times that. The
    GEMM shape here treats the S rows as one expert's; the routing (`tracing.routing.routed`)
    splits them over the experts and charges only the touched experts' weights."""
    s, k = a.shape
    e, _, n = w.shape
    g = GemmShape(m=s, n=n, k=k)
    return OpWork("linear", 2 * g.macs, a.nbytes + _first(out).nbytes + w.nbytes // max(1, e), gemm=g)


@register(aten._grouped_mm)
def grouped_mm_formula(a: T, b: T, *args: Any, out: Any, **kwargs: Any) -> OpWork:
    """aten._grouped_mm: 2-D x 3-D is the MoE forward (`grouped_mm_work`); 3-D x 3-D is a bmm;
    other layouts (ragged K, the weight gradient) have no formula yet."""
    if len(a.shape) == 2 and len(b.shape) == 3:
        return grouped_mm_work(a, b, out)
    if len(a.shape) == 3 and len(b.shape) == 3:
        return bmm_formula(a, b, out=out)
    return unknown_work([a, b, *args], out, kwargs)


@register(aten.convolution, aten._convolution)
def conv_formula(x: T, w: T, bias: T | None, stride: Sequence[int], padding: Sequence[int],
                 dilation: Sequence[int], transposed: bool, output_padding: Sequence[int],
                 groups: int, *args: Any, out: Any, **_: Any) -> OpWork:
    """Convolution as an implicit GEMM: M = batch x output pixels, N = Cout/g, K = Cin/g x kernel.

    A transposed convolution is the GEMM of its forward counterpart (M over input pixels),
    as torch's flop counter counts it.
    """
    y = _first(out)
    batch = x.shape[0]
    spatial_nd = len(x.shape) - 2
    in_sp = tuple(x.shape[2:])
    out_sp = tuple(y.shape[2:])
    kernel = tuple(w.shape[2:])
    if transposed:
        cin, cout = w.shape[0], w.shape[1] * groups
        m = batch * prod(in_sp)
    else:
        cout, cin = w.shape[0], w.shape[1] * groups
        m = batch * prod(out_sp)
    n = cout // groups
    k = cin // groups * prod(kernel)
    geom = ConvGeometry(
        in_channels=cin, out_channels=cout, kernel=kernel,
        stride=_tup(stride, spatial_nd), padding=_tup(padding, spatial_nd),
        dilation=_tup(dilation, spatial_nd), groups=groups,
        input_spatial=in_sp, output_spatial=out_sp,
    )
    g = GemmShape(m=m, n=n, k=k, batch=1, groups=groups)
    note = "transposed" if transposed else ""
    return OpWork("conv", 2 * g.macs, io_bytes([x, w, bias], out), gemm=g, conv=geom, note=note,
                  transposed=bool(transposed))


def _tup(v: Sequence[int] | int, nd: int) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * nd
    v = tuple(int(i) for i in v)
    return v * nd if len(v) == 1 and nd > 1 else v


def attention_work(q: T, k: T, v: T, out: Any, mask: T | None = None, causal: bool = False) -> OpWork:
    """Scaled-dot-product attention as one op: GemmShape is QK^T (batch = batch x heads,
    M = Lq, N = Lk, K = head_dim); flops count QK^T and PV. Bytes assume a fused kernel
    (scores never reach memory): Q, K, V, mask in, output out. Grouped-query K/V (fewer
    heads than Q) are read once."""
    *lead, lq, e = q.shape
    lk = k.shape[-2]
    ev = v.shape[-1]
    b = prod(lead)
    g = GemmShape(m=lq, n=lk, k=e, batch=b)
    flops = 2 * b * lq * lk * e + 2 * b * lq * lk * ev
    note = "causal" if causal else ""
    return OpWork("attention", flops, io_bytes([q, k, v, mask], _first(out)), gemm=g, note=note, causal=causal,
                  masked=mask is not None)


@register(aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_flash_attention,
          aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_cudnn_attention,
          aten._scaled_dot_product_attention_math)
def sdpa_aten_formula(q: T, k: T, v: T, *args: Any, out: Any, **kwargs: Any) -> OpWork:
    mask = kwargs.get("attn_mask") or next((a for a in args if isinstance(a, T)), None)
    causal = bool(kwargs.get("is_causal", False)) or any(a is True for a in args[:3])
    return attention_work(q, k, v, out, mask, causal)


@register(aten._sparse_addmm, aten._sparse_mm)
def sparse_addmm_formula(*args: Any, out: Any, **kwargs: Any) -> OpWork:
    """A torch.sparse (COO) matrix times a dense one (torch.sparse.mm / addmm): 2 FLOPs per
    stored nonzero per output column, reading the stored nonzeros and their indices, not a dense
    matrix. With a bias (addmm), plus one add per output element."""
    ts = [a for a in args if isinstance(a, T)]
    sparse = next((t for t in ts if t.nnz is not None), None)
    y = _first(out)
    if sparse is None or sparse.nnz is None or len(y.shape) != 2:
        return unknown_work(args, out)
    n, nnz = y.shape[1], sparse.nnz
    beta = kwargs["beta"] if "beta" in kwargs else (args[3] if len(args) > 3 and not isinstance(args[3], T) else 1)
    bias = ELEMENTWISE_FLOPS_PER_ELEMENT * y.numel if len(ts) == 3 and beta != 0 else 0
    return OpWork("matmul", 2 * nnz * n + bias, io_bytes(args, out),
                  note=f"torch.sparse operand: {nnz} stored nonzeros of {sparse.numel}")


# the weight bytes per element of each packed (dynamically quantised) linear op
PACKED_WEIGHT_BYTES = {"quantized.linear_dynamic": INT8_BYTES, "quantized.linear_dynamic_fp16": FP16_BYTES}


def packed_weight_bytes(aten_name: str) -> int | None:
    """Bytes per weight element of a packed linear op (aten name with or without overload)."""
    return PACKED_WEIGHT_BYTES.get(aten_name.removesuffix(".default"))


def _packed_linear(x: T, out: Any, per_element: int, dtype: str) -> OpWork:
    """A dynamically quantised Linear (torch.ao quantize_dynamic): weights packed in an opaque
    object (int8, or fp16), activations quantised per call. The GEMM is M x N x K with N from the
    output; the packed weight's N x K bytes are read (they are not a Parameter a plan can prune)."""
    y = _first(out)
    k, n = x.shape[-1], y.shape[-1]
    m = x.numel // k if k else 0
    g = GemmShape(m=m, n=n, k=k)
    return OpWork("linear", 2 * g.macs, x.nbytes + y.nbytes + n * k * per_element, gemm=g,
                  note=f"dynamically quantised {dtype} weight (packed, not sparsified by plans)")


@register(quantized.linear_dynamic)
def linear_dynamic_formula(x: T, packed: Any, *args: Any, out: Any, **_: Any) -> OpWork:
    return _packed_linear(x, out, INT8_BYTES, "int8")


@register(quantized.linear_dynamic_fp16)
def linear_dynamic_fp16_formula(x: T, packed: Any, *args: Any, out: Any, **_: Any) -> OpWork:
    return _packed_linear(x, out, FP16_BYTES, "fp16")


def rnn_layer_work(x: T, w_ih: T, w_hh: T, out: Any) -> tuple[OpWork, OpWork]:
    """One LSTM layer (aten.mkldnn_rnn_layer) as two GEMMs against its two weights: the input
    projection of every step at once (M = steps x batch, N = gates x hidden, K = input) and the
    recurrent projection, one GEMM per step (M = batch, N = gates x hidden, K = hidden, repeated
    `steps` times, one after another). FLOPs are those of the two GEMMs (as torch's flop counter
    counts the mm/addmm of an unfused RNN); the gate nonlinearities are memory-bound and charged
    as bytes of the recurrent op. The input comes steps first whatever the module's batch_first."""
    steps, batch = x.shape[0], x.shape[1]
    gates_h, k_in = w_ih.shape
    hidden = w_hh.shape[1]
    g_in = GemmShape(m=steps * batch, n=gates_h, k=k_in)
    g_rec = GemmShape(m=batch, n=gates_h, k=hidden, batch=steps)
    y = _first(out)
    proj = T((steps * batch, gates_h), x.itemsize)
    inp = OpWork("linear", 2 * g_in.macs, x.nbytes + w_ih.nbytes + proj.nbytes, gemm=g_in,
                 note="LSTM input projection, all steps at once")
    rec = OpWork("linear", 2 * g_rec.macs, w_hh.nbytes + 2 * proj.nbytes + y.nbytes, gemm=g_rec,
                 note=f"LSTM recurrent projection: {steps} sequential steps")
    return inp, rec


# ---------------------------------------------------------------- memory-bound ops

def _memory(kind: str, flops_per_element: int, counted: T, nbytes: int) -> OpWork:
    return OpWork(kind, flops_per_element * counted.numel, nbytes)


@register(aten.native_layer_norm, aten.native_batch_norm, aten._native_batch_norm_legit,
          aten._native_batch_norm_legit_no_training, aten.native_group_norm, aten._fused_rms_norm,
          aten.layer_norm, aten.rms_norm, aten.group_norm, aten.batch_norm)
def norm_formula(x: T, *args: Any, out: Any, **kwargs: Any) -> OpWork:
    return _memory("norm", NORM_FLOPS_PER_ELEMENT, x, io_bytes([x, *args], _first(out), kwargs))


@register(aten._softmax, aten._log_softmax, aten._safe_softmax, aten.softmax, aten.log_softmax)
def softmax_formula(x: T, *args: Any, out: Any, **_: Any) -> OpWork:
    return _memory("softmax", SOFTMAX_FLOPS_PER_ELEMENT, x, io_bytes([x], out))


@register(aten._embedding_bag, aten._embedding_bag_forward_only, aten.embedding_bag)
def embedding_bag_formula(table: T, indices: T, offsets: T, *args: Any, out: Any, **kwargs: Any) -> OpWork:
    """Gathers only the indexed rows of the table and reduces them per bag (sum/mean/max: one op
    per gathered element), writing one row per bag."""
    y = _first(out)
    dim = table.shape[-1] if table.shape else 0
    gathered = indices.numel * dim
    weights = next((a for a in args if isinstance(a, T)), kwargs.get("per_sample_weights"))
    extra = gathered if isinstance(weights, T) else 0  # per-sample weights: one multiply each
    nbytes = indices.nbytes + offsets.nbytes + int(gathered * table.itemsize) + y.nbytes
    if isinstance(weights, T):
        nbytes += weights.nbytes
    return OpWork("embedding", ELEMENTWISE_FLOPS_PER_ELEMENT * (gathered + extra), nbytes)


@register(aten._weight_norm_interface, aten._weight_norm)
def weight_norm_formula(v: T, g: T, *args: Any, out: Any, **_: Any) -> OpWork:
    """w = g * v / ||v|| (torch.nn.utils.weight_norm), recomputed on every forward."""
    return _memory("elementwise", WEIGHT_NORM_FLOPS_PER_ELEMENT, v, io_bytes([v, g], out))


@register(aten.embedding)
def embedding_formula(table: T, indices: T, *args: Any, out: Any, **_: Any) -> OpWork:
    """Reads the indices and only the gathered rows of the table, writes the output."""
    y = _first(out)
    return OpWork("embedding", 0, indices.nbytes + 2 * y.nbytes)


@register(aten.index_select, aten.gather)
def gather_formula(x: T, dim: int, index: T, *args: Any, out: Any, **_: Any) -> OpWork:
    y = _first(out)
    return OpWork("copy", 0, index.nbytes + 2 * y.nbytes)


@register(aten.index_copy_, aten.index_copy, aten.index_add_, aten.scatter_, aten.scatter)
def scatter_formula(x: T, dim: int, index: T, src: Any, *args: Any, out: Any, **_: Any) -> OpWork:
    """Writes `src` rows into `x`: reads index and source, writes as many bytes (not all of x)."""
    s = src.nbytes if isinstance(src, T) else 0
    return OpWork("copy", 0, index.nbytes + 2 * s)


@register(aten.copy_)
def copy_formula(dst: T, src: T, *args: Any, out: Any, **_: Any) -> OpWork:
    return OpWork("copy", 0, src.nbytes + dst.nbytes)


@register(aten.clone, aten._to_copy, aten.cat, aten.stack, aten.constant_pad_nd, aten.contiguous,
          aten.slice_scatter, aten.select_scatter, aten.repeat, aten._unsafe_index, aten.index,
          aten.flip, aten.roll, aten.tril, aten.triu, aten.masked_fill, aten.masked_fill_,
          aten.index_put_, aten.index_put)
def copy_like_formula(*args: Any, out: Any, **kwargs: Any) -> OpWork:
    return OpWork("copy", 0, io_bytes(args, out, kwargs))


@register(aten.max_pool2d_with_indices, aten.max_pool1d, aten.max_pool2d, aten.avg_pool2d,
          aten._adaptive_avg_pool2d, aten.adaptive_max_pool2d, aten.max_pool3d_with_indices, aten.max_pool3d,
          aten.avg_pool3d, aten.avg_pool1d, aten._adaptive_avg_pool3d, aten.adaptive_max_pool3d,
          aten.adaptive_max_pool1d, aten.max_pool1d_with_indices, aten.mean, aten.sum, aten.amax,
          aten.amin, aten.max, aten.min, aten.var, aten.var_mean, aten.std, aten.argmax,
          aten.argmin, aten.cumsum, aten.prod, aten.any, aten.all, aten.norm,
          aten.linalg_vector_norm, aten.logsumexp, aten.topk, aten.sort, aten.histc, aten.bincount)
def reduction_formula(x: T, *args: Any, out: Any, **kwargs: Any) -> OpWork:
    return _memory("reduction", REDUCTION_FLOPS_PER_ELEMENT, x, io_bytes([x, *args], out, kwargs))


@register(aten.full, aten.zeros, aten.ones, aten.arange, aten.scalar_tensor, aten.fill_, aten.zero_,
          aten.full_like, aten.zeros_like, aten.ones_like, aten.new_full, aten.new_zeros, aten.new_ones,
          aten.rand, aten.randn, aten.randint, aten.rand_like, aten.randn_like, aten.bernoulli_,
          aten.uniform_, aten.normal_, aten.linspace)
def fill_formula(*args: Any, out: Any, **kwargs: Any) -> OpWork:
    """Creation/fill ops write their output and read nothing worth counting."""
    y = _first(out)
    return OpWork("elementwise", 0, y.nbytes)


@register(aten.floor_divide, aten.remainder)
def integer_pointwise_formula(*args: Any, out: Any, **kwargs: Any) -> OpWork:
    """Index arithmetic (a MoE block's token-of-row division): pointwise, untagged by torch."""
    return pointwise_work(args, out, kwargs)


# interpolation (F.interpolate: SAM's relative-position tables, FPN decoders) is memory-bound
# like a pointwise op; each output element blends 2 (linear), 4 (bilinear), 8 (trilinear) or 16
# (bicubic) inputs at a multiply-add each, nearest neighbour copies one
def _upsample(taps: int) -> Formula:
    def formula(*args: Any, out: Any, **kwargs: Any) -> OpWork:
        return _memory("elementwise", max(1, 2 * taps), _first(out), io_bytes(args, out, kwargs))

    return formula


for _op, _taps in ((aten.upsample_linear1d, 2), (aten.upsample_bilinear2d, 4), (aten.upsample_trilinear3d, 8),
                   (aten.upsample_bicubic2d, 16), (aten.upsample_nearest1d, 0), (aten.upsample_nearest2d, 0),
                   (aten.upsample_nearest3d, 0)):
    register(_op)(_upsample(_taps))


def pointwise_work(args: Sequence[Any], out: Any, kwargs: dict | None = None) -> OpWork:
    """Any op torch tags `pointwise`: one FLOP per output element, reads inputs, writes output."""
    return _memory("elementwise", ELEMENTWISE_FLOPS_PER_ELEMENT, _first(out), io_bytes(args, out, kwargs))


def unknown_work(args: Sequence[Any], out: Any, kwargs: dict | None = None) -> OpWork:
    return OpWork(UNKNOWN, 0, io_bytes(args, out, kwargs), note="no formula")


# ---------------------------------------------------------------- metadata ops

# Ops that only create a new view of, or answer a question about, existing storage; they move
# no bytes, so the tracer skips them. Any op torch marks `is_view` (view, t, transpose, permute,
# expand, slice, select, squeeze/unsqueeze, detach, alias, as_strided, split, unbind, ...) is one
# of these; the list adds view-like ops torch does not mark, and allocation without writes.
METADATA_OPS = OpSet({
    aten._unsafe_view, aten._reshape_alias, aten.lift_fresh, aten.lift_fresh_copy, aten.empty,
    aten.empty_strided, aten.empty_like, aten.new_empty, aten.new_empty_strided,
    aten._local_scalar_dense, aten.sym_size, aten.sym_stride, aten.sym_numel, aten.sym_storage_offset,
    aten.is_same_size, aten._assert_async, aten._assert_tensor_metadata, aten.resize_,
    aten.set_, aten.is_nonzero, aten.equal, aten._functional_assert_async, aten.dim, aten.size,
    aten.stride, aten.numel, aten._has_compatible_shallow_copy_type, aten.item,
    # views torch does not tag as such: the unchecked splits of RNN cells, in-place re-strides
    aten.unsafe_split, aten.unsafe_split_with_sizes, aten.unsafe_chunk, aten.transpose_, aten.t_,
    aten.squeeze_, aten.unsqueeze_, aten.as_strided_, aten.swapdims_, aten.swapaxes_,
})


def is_metadata_op(func: Any) -> bool:
    """True for pure view/metadata ops (see METADATA_OPS): they move no bytes and are skipped."""
    if getattr(func, "is_view", False):
        return True
    return getattr(func, "overloadpacket", None) in METADATA_OPS


def classify(func: Any, args: Sequence[Any], out: Any, kwargs: dict | None = None) -> OpWork:
    """The work of one aten call: its registered formula, else torch's tags, else unknown."""
    kwargs = kwargs or {}
    f = formula_for(func)
    if f is not None:
        return f(*args, out=out, **kwargs)
    tags = getattr(func, "tags", ())
    if torch.Tag.pointwise in tags:
        return pointwise_work(args, out, kwargs)
    if torch.Tag.reduction in tags:
        x = next(iter(_tensors(list(args))), _first(out))
        return _memory("reduction", REDUCTION_FLOPS_PER_ELEMENT, x, io_bytes(args, out, kwargs))
    return unknown_work(args, out, kwargs)
