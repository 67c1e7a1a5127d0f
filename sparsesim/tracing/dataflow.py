"""Channel dataflow: which channels each dimension of each traced tensor carries.

Channel pruning is only sound when every op that touches a pruned channel shrinks with it, so
which layers share channels is read from the tensors the dispatch mode sees, never guessed
from module names. Every tensor dimension is described as a row-major product of *atoms*
(integer ids with a size; a dimension of size 1 has none). Ops record facts about atoms:

- ``("eq", a, b)``: a and b are the same channels (a matmul's contraction, an elementwise
  op's operands, a residual add, attention's heads of q, k and v);
- ``("prod", a, (b, c, ...))``: a is the row-major product of b, c, ... (a view that splits
  768 features into 12 heads x 64, or merges them back);
- ``("cat", a, (b, c, ...))``: a is b, c, ... side by side (a fused qkv output split in
  three, a torch.cat, a slice);
- ``("pin", a)``: a's channels can never be removed (model inputs and outputs, embedding
  tables, an op whose channel use is not modelled -- every op without a rule below);
- ``("bcast", a)``: a came from broadcasting (a K/V head repeated for its group of query
  heads): pruning it removes query heads only;
- ``("sum", a)``: a is a dimension of two same-shaped tensors added together (a residual
  add): where that is a weight's whole output, the channels are a residual stream.

A weight op records which atoms are its output channels (rows) and input channels (columns),
and every recorded op keeps its tensors as shapes (`T`) with their atoms, so the shrink pass
can recompute the op's work with the same formula registry once channels are removed.
`sparsesim.sparsity.coupling` solves the facts; this module only records them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from math import prod
from typing import TYPE_CHECKING, Any

from sparsesim.core.lazy import lazy_module
from sparsesim.tracing.flops import T
from sparsesim.tracing.opnames import OpName, OpTable, aten

if TYPE_CHECKING:
    import torch
    from torch.utils import _pytree as pytree
    from torch.utils import weak
else:
    torch = lazy_module("torch")
    pytree = lazy_module("torch.utils._pytree")
    weak = lazy_module("torch.utils.weak")

Dim = tuple[int, ...]  # atoms whose row-major product is one tensor dimension
Dims = tuple[Dim, ...]  # one entry per tensor dimension
Fact = tuple[Any, ...]


@dataclass(frozen=True)
class OpFlow:
    """One recorded op's call with tensors as `T` shapes, and the atoms of every tensor in
    `tree_flatten((args, kwargs, out))` order."""

    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    out: Any
    dims: tuple[Dims, ...]


@dataclass(frozen=True)
class WeightFlow:
    """A weight's stored dimensions as atoms; `rows_dim` holds its output channels (0 for
    nn.Linear and convolutions, 1 for transformers' K x N Conv1D and transposed convolutions)."""

    dims: Dims
    rows_dim: int


@dataclass(frozen=True)
class Dataflow:
    """Atoms, facts about them, every recorded op's flow (by op index) and every weight's."""

    sizes: tuple[int, ...]
    facts: tuple[Fact, ...]
    ops: Mapping[int, OpFlow]
    weights: Mapping[str, WeightFlow]


def _t(x: Any) -> Any:
    return T(tuple(x.shape), x.element_size()) if isinstance(x, torch.Tensor) else x


class FlowTracker:
    """Assigns atoms to tensors as ops run (see module doc). Tensors first seen as inputs of
    the model are pinned; parameters, buffers and constants are free (they are sliced with
    whatever channels they meet)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.facts: list[Fact] = []
        self.ops: dict[int, OpFlow] = {}
        self.weights: dict[str, WeightFlow] = {}
        self._dims: weak.WeakIdKeyDictionary = weak.WeakIdKeyDictionary()
        self._products: dict[Dim, int] = {}

    # ------------------------------------------------------------------ atoms
    def atom(self, size: int, *, pin: bool = False, bcast: bool = False) -> int:
        a = len(self.sizes)
        self.sizes.append(int(size))
        if pin:
            self.facts.append(("pin", a))
        if bcast:
            self.facts.append(("bcast", a))
        return a

    def fresh(self, shape: Sequence[int], *, pin: bool = False, bcast: bool = False) -> Dims:
        return tuple((self.atom(s, pin=pin, bcast=bcast),) if s > 1 else () for s in shape)

    def one(self, dim: Dim) -> int | None:
        """The single atom standing for a dimension (a product fact when it has several)."""
        if not dim:
            return None
        if len(dim) == 1:
            return dim[0]
        if dim not in self._products:
            a = self.atom(prod(self.sizes[x] for x in dim))
            self.facts.append(("prod", a, dim))
            self._products[dim] = a
        return self._products[dim]

    def join(self, x: Dim, y: Dim) -> None:
        if x != y and x and y:
            a, b = self.one(x), self.one(y)
            self.facts.append(("eq", a, b))

    def pin(self, dims: Dims) -> None:
        for d in dims:
            for a in d:
                self.facts.append(("pin", a))

    def size(self, dim: Dim) -> int:
        return prod(self.sizes[a] for a in dim)

    def dims(self, t: torch.Tensor) -> Dims:
        d = self._dims.get(t)
        if d is None or len(d) != t.dim() or tuple(self.size(x) for x in d) != tuple(_ones(t.shape)):
            d = self.fresh(t.shape)
            self._dims[t] = d
        return d

    def set(self, t: Any, d: Dims) -> None:
        if isinstance(t, torch.Tensor) and len(d) == t.dim():
            self._dims[t] = d

    def pin_tensors(self, tree: Any) -> None:
        for t in pytree.tree_flatten(tree)[0]:
            if isinstance(t, torch.Tensor):
                self.pin(self.dims(t))

    # ------------------------------------------------------------------ ops
    def on_op(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        rule = _RULES.table().get(func.overloadpacket)
        if rule is None and torch.Tag.pointwise in getattr(func, "tags", ()):
            rule = _pointwise
        if rule is None:
            rule = _unknown
        try:
            rule(self, args, kwargs, out)
        except Exception:  # _Untracked, or arguments a rule did not expect: keep every channel
            _unknown(self, args, kwargs, out)

    def record(self, index: int, args: tuple, kwargs: dict, out: Any) -> None:
        """Keep op `index`'s call as shapes with the atoms of each tensor."""
        flat = pytree.tree_flatten((args, kwargs, out))[0]
        dims = tuple(self.dims(t) for t in flat if isinstance(t, torch.Tensor))
        self.ops[index] = OpFlow(pytree.tree_map(_t, args), pytree.tree_map(_t, kwargs), pytree.tree_map(_t, out), dims)

    def weight(self, name: str, param: torch.Tensor, rows_dim: int) -> None:
        self.weights.setdefault(name, WeightFlow(self.dims(param), rows_dim))

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any, out: torch.Tensor) -> None:
        """F.scaled_dot_product_attention: heads of q, k, v and the output are one set (K/V
        heads repeated per group of query heads under GQA/MQA), q and k share head_dim. The
        per-head dimensions are kept whole: pruning removes heads, not what a head computes."""
        qd, kd, vd = self.dims(q), self.dims(k), self.dims(v)
        lead = len(qd) - 2
        if len(kd) != len(qd) or len(vd) != len(qd):
            raise _Untracked
        for i in range(lead):
            self._heads(qd[i], kd[i], q.shape[i], k.shape[i])
            self._heads(qd[i], vd[i], q.shape[i], v.shape[i])
        self.join(qd[-1], kd[-1])
        self.join(kd[-2], vd[-2])
        self.pin((qd[-1], vd[-1]))
        if isinstance(mask, torch.Tensor):
            scores = qd[:-1] + (kd[-2],)
            _broadcast_join(self, [self.dims(mask)], [tuple(mask.shape)], scores,
                            tuple(q.shape[:-1]) + (k.shape[-2],))
        self.set(out, qd[:-1] + (vd[-1],))

    def _heads(self, qh: Dim, kh: Dim, nq: int, nk: int) -> None:
        if nk == nq:
            self.join(qh, kh)
        elif nk == 1:
            return
        elif nq % nk == 0:  # grouped-query: query head h reads K/V head h // (nq // nk)
            rep = self.atom(nq // nk, bcast=True)
            self.join(qh, tuple(kh) + (rep,))
        else:
            raise _Untracked

    def result(self) -> Dataflow:
        return Dataflow(tuple(self.sizes), tuple(self.facts), dict(self.ops), dict(self.weights))


class _Untracked(Exception):
    """An op whose channel use a rule cannot follow: it falls back to pinning (`_unknown`)."""


def _ones(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(s) if s > 1 else 1 for s in shape)


def _tensors(x: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_flatten(x)[0] if isinstance(t, torch.Tensor)]


# ---------------------------------------------------------------------- rules

Rule = Callable[[FlowTracker, tuple, dict, Any], None]
# by name (`tracing.opnames`): torch is imported when the first op is looked up, not here
_RULES: OpTable[Rule] = OpTable()


def _rule(*packets: OpName) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        _RULES.add(packets, fn)
        return fn

    return deco


def _unknown(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
    """No rule: the op may mix channels in any way, so its inputs keep all of theirs."""
    for t in _tensors((args, kwargs)):
        tr.pin(tr.dims(t))
    for o in _tensors(out):
        tr.set(o, tr.fresh(o.shape, pin=True))


def _fresh_out(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
    """Creation ops: constants, free to be sliced with what they meet."""
    for o in _tensors(out):
        tr.set(o, tr.fresh(o.shape))


_rule(aten.full, aten.zeros, aten.ones, aten.arange, aten.scalar_tensor, aten.empty, aten.empty_strided,
      aten.empty_like, aten.full_like, aten.zeros_like, aten.ones_like, aten.new_full, aten.new_zeros,
      aten.new_ones, aten.new_empty, aten.new_empty_strided, aten.rand, aten.randn, aten.randint,
      aten.rand_like, aten.randn_like, aten.linspace, aten.lift_fresh_copy)(_fresh_out)


@_rule(aten.alias, aten.detach, aten.clone, aten._to_copy, aten.lift_fresh, aten.contiguous, aten.tril,
       aten.triu, aten._softmax, aten._safe_softmax, aten._log_softmax, aten.softmax, aten.log_softmax,
       aten.fill_, aten.zero_, aten.bernoulli_, aten.uniform_, aten.normal_, aten.dropout,
       aten.native_dropout, aten.relu_, aten.gelu_)
def _same(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
    d = tr.dims(args[0])
    for o in _tensors(out):
        if tuple(o.shape) == tuple(args[0].shape):
            tr.set(o, d)
        else:
            tr.set(o, tr.fresh(o.shape, pin=True))


def _broadcast_join(tr: FlowTracker, dims: list[Dims], shapes: list[tuple[int, ...]], out_dims: Dims | None,
                    out_shape: tuple[int, ...]) -> Dims:
    """Join every operand dimension with the output dimension it maps to under broadcasting
    (size-1 operand dimensions carry nothing); returns the output's dims."""
    nd = len(out_shape)
    result: list[Dim | None] = [None] * nd if out_dims is None else list(out_dims)
    for d, s in zip(dims, shapes):
        off = nd - len(s)
        if off < 0:
            raise _Untracked
        for i, (di, si) in enumerate(zip(d, s)):
            j = off + i
            if si == 1 or si != out_shape[j]:
                continue
            if result[j] is None:
                result[j] = di
            else:
                tr.join(result[j], di)  # type: ignore[arg-type]
    return tuple(r if r is not None else tr.fresh((out_shape[j],), pin=True)[0] for j, r in enumerate(result))


def _pointwise(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
    ins = _tensors((args, kwargs))
    outs = _tensors(out)
    if not outs:
        return
    o = outs[0]
    inplace = bool(ins) and ins[0] is o
    base = tr.dims(o) if inplace else None
    d = _broadcast_join(tr, [tr.dims(t) for t in ins], [tuple(t.shape) for t in ins], base, tuple(o.shape))
    for x in outs:
        if tuple(x.shape) == tuple(o.shape):
            tr.set(x, d)


_rule(aten.where, aten.masked_fill, aten.masked_fill_, aten.copy_, aten.clamp, aten.clamp_min,
      aten.clamp_max, aten.pow, aten.mul, aten.mul_, aten.div)(_pointwise)


@_rule(aten.add, aten.add_, aten.sub, aten.sub_)
def _add(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
    """Elementwise; two same-shaped tensors carrying different channels, summed, mark their
    dimensions as a sum (x + f(x) inside an activation function carries the same ones)."""
    a, b = args[0], args[1] if len(args) > 1 else None
    summed = []
    if isinstance(b, torch.Tensor) and tuple(a.shape) == tuple(b.shape):
        summed = [tr.one(x) for x, y in zip(tr.dims(a), tr.dims(b)) if x != y]
    _pointwise(tr, args, kwargs, out)
    for x in summed:
        if x is not None:
            tr.facts.append(("sum", x))


def _reshape(tr: FlowTracker, d: Dims, shape: Sequence[int]) -> Dims:
    """Atoms of a view with a new shape: the same atoms in the same row-major order, regrouped,
    splitting an atom into a product where a new dimension boundary falls inside it."""
    queue = [a for dim in d for a in dim]
    out: list[Dim] = []
    for s in shape:
        if s <= 1:
            out.append(())
            continue
        cur: list[int] = []
        got = 1
        while got < s:
            if not queue:
                raise _Untracked
            a = queue.pop(0)
            sa = tr.sizes[a]
            if s % (got * sa) == 0:
                cur.append(a)
                got *= sa
                continue
            need = s // got
            if s % got or sa % need:
                raise _Untracked
            hi, lo = tr.atom(need), tr.atom(sa // need)
            tr.facts.append(("prod", a, (hi, lo)))
            cur.append(hi)
            queue.insert(0, lo)
            got *= need
        out.append(tuple(cur))
    if queue:
        raise _Untracked
    return tuple(out)


@_rule(aten.view, aten._unsafe_view, aten.reshape, aten._reshape_alias, aten.squeeze, aten.unsqueeze,
       aten.flatten, aten.unflatten, aten.view_as, aten.squeeze_, aten.unsqueeze_)
def _view(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    if x.numel() == 0:
        raise _Untracked
    tr.set(out, _reshape(tr, tr.dims(x), tuple(out.shape)))


@_rule(aten.expand)
def _expand(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
    x, d = args[0], tr.dims(args[0])
    off = out.dim() - x.dim()
    res: list[Dim] = []
    for j, s in enumerate(out.shape):
        i = j - off
        if i >= 0 and x.shape[i] == s:
            res.append(d[i])
        else:
            res.append(tr.fresh((s,), bcast=True)[0])
    tr.set(out, tuple(res))


@_rule(aten.repeat)
def _repeat(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
    x, reps = args[0], list(args[1])
    d = tr.dims(x)
    off = len(reps) - x.dim()
    res: list[Dim] = []
    for j, r in enumerate(reps):
        inner = d[j - off] if j >= off else ()
        res.append(tr.fresh((r,), bcast=True)[0] + inner)
    tr.set(out, tuple(res))


@_rule(aten.permute, aten.transpose, aten.t, aten.numpy_T, aten.swapaxes, aten.movedim)
def _permute(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    d = tr.dims(x)
    n = x.dim()
    if len(args) == 1:  # t / numpy_T
        order = list(range(n))[::-1]
    elif len(args) == 2:  # permute(dims)
        order = [int(i) % n for i in args[1]]
    else:
        a, b = int(args[1]) % n, int(args[2]) % n
        order = list(range(n))
        order[a], order[b] = order[b], order[a]
    tr.set(out, tuple(d[i] for i in order))


def _cut(tr: FlowTracker, dim: Dim, bounds: Sequence[tuple[int, int]]) -> list[Dim]:
    """Pieces [lo, hi) of a dimension, as a concatenation fact on its atom."""
    a = tr.one(dim)
    if a is None:
        return [() for _ in bounds]
    size = tr.sizes[a]
    if len(bounds) == 1 and bounds[0] == (0, size):
        return [dim]
    edges = sorted({0, size, *(b for lh in bounds for b in lh)})
    parts = {(lo, hi): tr.atom(hi - lo) for lo, hi in pairwise(edges)}
    tr.facts.append(("cat", a, tuple(parts.values())))
    # each bound is exactly one part (bounds never overlap); a part of size 1 has no atom in a dim
    return [(parts[b],) if b[1] - b[0] > 1 else () for b in bounds]


def _norm_dim(dim: int, n: int) -> int:
    return int(dim) % n if n else 0


@_rule(aten.slice)
def _slice(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    dim = _norm_dim(args[1] if len(args) > 1 else kwargs.get("dim", 0), x.dim())
    n = x.shape[dim]
    start = args[2] if len(args) > 2 else kwargs.get("start")
    end = args[3] if len(args) > 3 else kwargs.get("end")
    step = args[4] if len(args) > 4 else kwargs.get("step", 1)
    lo, hi, st = slice(start, end, step).indices(n)
    d = tr.dims(x)
    if st != 1:
        raise _Untracked
    piece = _cut(tr, d[dim], [(lo, max(lo, hi))])[0]
    tr.set(out, d[:dim] + (piece,) + d[dim + 1:])


@_rule(aten.split, aten.split_with_sizes, aten.unsafe_split, aten.unsafe_split_with_sizes, aten.unbind)
def _split(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    outs = list(out)
    d = tr.dims(x)
    if outs and all(o.dim() == x.dim() - 1 for o in outs):  # unbind: which slice a tensor is must stay
        dim = _norm_dim(args[1] if len(args) > 1 else kwargs.get("dim", 0), x.dim())
        tr.pin((d[dim],))
        for o in outs:
            tr.set(o, d[:dim] + d[dim + 1:])
        return
    dim = _norm_dim(args[2] if len(args) > 2 else kwargs.get("dim", 0), x.dim())
    bounds, lo = [], 0
    for o in outs:
        bounds.append((lo, lo + o.shape[dim]))
        lo += o.shape[dim]
    for o, piece in zip(outs, _cut(tr, d[dim], bounds)):
        tr.set(o, d[:dim] + (piece,) + d[dim + 1:])


@_rule(aten.select)
def _select(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    dim = _norm_dim(args[1], x.dim())
    d = tr.dims(x)
    tr.pin((d[dim],))  # the selected index must survive
    tr.set(out, d[:dim] + d[dim + 1:])


@_rule(aten.index)
def _index(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
    """x[..., idx, ...] with one 1-D index that is a contiguous range: a slice; else the indexed
    dimension is pinned and the output takes the index's dimensions."""
    x, idx = args[0], list(args[1])
    d = tr.dims(x)
    where = [i for i, t in enumerate(idx) if t is not None]
    if len(where) != 1:
        raise _Untracked
    i = where[0]
    t = idx[i]
    if t.dtype == torch.bool or i >= x.dim():
        raise _Untracked
    n = x.shape[i]
    if t.dim() == 1 and not t.is_meta and t.numel() > 0:
        v = (t.long() % n).tolist()
        if v == list(range(v[0], v[0] + len(v))):
            piece = _cut(tr, d[i], [(v[0], v[0] + len(v))])[0]
            tr.set(out, d[:i] + (piece,) + d[i + 1:])
            return
    tr.pin((d[i],))
    res = d[:i] + tr.dims(t) + d[i + 1:]
    if len(res) == out.dim():
        tr.set(out, res)
    else:
        raise _Untracked


@_rule(aten.cat)
def _cat(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
    ts = [t for t in args[0] if t.numel() > 0 or t.dim() == out.dim()]
    ts = [t for t in ts if t.dim() == out.dim()]
    dim = _norm_dim(args[1] if len(args) > 1 else kwargs.get("dim", 0), out.dim())
    if not ts:
        raise _Untracked
    ds = [tr.dims(t) for t in ts]
    res = list(ds[0])
    for d, _t in zip(ds[1:], ts[1:]):
        for j in range(out.dim()):
            if j != dim:
                tr.join(res[j], d[j])
    parts = [tr.one(d[dim]) for d, t in zip(ds, ts) if t.shape[dim] > 0]
    if any(p is None for p in parts):  # a size-1 piece: it has no atom to be part of the whole
        res[dim] = tr.fresh((out.shape[dim],), pin=True)[0]
        for d in ds:
            tr.pin((d[dim],))
    elif len(parts) == 1:
        res[dim] = (parts[0],)  # type: ignore[assignment]
    else:
        a = tr.atom(out.shape[dim])
        tr.facts.append(("cat", a, tuple(parts)))
        res[dim] = (a,)
    tr.set(out, tuple(res))


@_rule(aten.stack)
def _stack(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
    ts = list(args[0])
    dim = _norm_dim(args[1] if len(args) > 1 else kwargs.get("dim", 0), out.dim())
    ds = [tr.dims(t) for t in ts]
    for d in ds[1:]:
        for a, b in zip(ds[0], d):
            tr.join(a, b)
    tr.set(out, ds[0][:dim] + tr.fresh((out.shape[dim],), pin=True) + ds[0][dim:])


@_rule(aten.mm, aten.bmm, aten.addmm, aten.baddbmm)
def _mm(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
    if len(args) >= 3 and isinstance(args[2], torch.Tensor):  # addmm / baddbmm
        bias, a, b = args[0], args[1], args[2]
    else:
        bias, a, b = None, args[0], args[1]
    da, db = tr.dims(a), tr.dims(b)
    tr.join(da[-1], db[-2])
    if a.dim() == 3:
        tr.join(da[0], db[0])
    res = da[:-1] + (db[-1],)
    if bias is not None:
        res = _broadcast_join(tr, [tr.dims(bias)], [tuple(bias.shape)], res, tuple(out.shape))
    tr.set(out, res)


@_rule(aten.convolution, aten._convolution)
def _conv(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
    x, w, bias = args[0], args[1], args[2]
    transposed, groups = bool(args[6]), int(args[8])
    dx, dw = tr.dims(x), tr.dims(w)
    cin, cout = x.shape[1], out.shape[1]
    if transposed:
        if groups != 1:
            raise _Untracked
        tr.join(dx[1], dw[0])
        ch = dw[1]
    elif groups == 1:
        tr.join(dx[1], dw[1])
        ch = dw[0]
    else:  # channels as (group, channel within the group) on both sides, groups shared
        g = tr.atom(groups)
        gin = (g,) + ((tr.atom(cin // groups),) if cin // groups > 1 else ())
        gout = (tr.atom(groups),) + ((tr.atom(cout // groups),) if cout // groups > 1 else ())
        tr.join(dx[1], gin)
        tr.join(dw[0], gout)
        tr.facts.append(("eq", g, gout[0]))
        tr.join(dw[1], gin[1:])
        ch = dw[0]
    res = (dx[0], ch) + tr.fresh(out.shape[2:])
    if isinstance(bias, torch.Tensor):
        tr.join(tr.dims(bias)[0], ch)
    tr.set(out, res)


@_rule(aten.native_layer_norm, aten.layer_norm, aten.rms_norm, aten._fused_rms_norm)
def _layer_norm(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    d = tr.dims(x)
    nd = len(args[1])
    for p in args[2:4]:
        if isinstance(p, torch.Tensor):
            _broadcast_join(tr, [tr.dims(p)], [tuple(p.shape)], d, tuple(x.shape))
    outs = _tensors(out)
    tr.set(outs[0], d)
    for o in outs[1:]:
        tr.set(o, d[: x.dim() - nd] + ((),) * (o.dim() - (x.dim() - nd)))


@_rule(aten.native_batch_norm, aten._native_batch_norm_legit, aten._native_batch_norm_legit_no_training,
       aten.batch_norm, aten._native_batch_norm_legit_functional)
def _batch_norm(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    d = tr.dims(x)
    for p in args[1:5]:
        if isinstance(p, torch.Tensor) and p.dim() == 1 and x.dim() > 1 and p.shape[0] == x.shape[1]:
            tr.join(tr.dims(p)[0], d[1])
    outs = _tensors(out)
    tr.set(outs[0], d)
    for o in outs[1:]:
        tr.set(o, (d[1],) if o.dim() == 1 and x.dim() > 1 and o.shape[0] == x.shape[1] else tr.fresh(o.shape))


_DIM_AT_2 = (aten.linalg_vector_norm, aten.norm)  # (x, ord, dim, keepdim)


def _reduced(x: torch.Tensor, dims: Any) -> set[int]:
    if dims is None or (isinstance(dims, (list, tuple)) and not dims):
        return set(range(x.dim()))
    if isinstance(dims, int):
        dims = [dims]
    return {_norm_dim(i, x.dim()) for i in dims}


def _reduction_rule(at: int) -> Rule:
    def rule(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
        x = args[0]
        if len(args) > 1 and isinstance(args[1], torch.Tensor):  # max.other / min.other: elementwise
            return _pointwise(tr, args, kwargs, out)
        d = tr.dims(x)
        red = _reduced(x, args[at] if len(args) > at else kwargs.get("dim"))
        for o in _tensors(out):
            if o.dim() == x.dim():
                tr.set(o, tuple(() if i in red else di for i, di in enumerate(d)))
            elif o.dim() == x.dim() - len(red):
                tr.set(o, tuple(di for i, di in enumerate(d) if i not in red))
            else:
                raise _Untracked
    return rule


_rule(aten.mean, aten.sum, aten.amax, aten.amin, aten.var, aten.std, aten.var_mean, aten.std_mean,
      aten.any, aten.all, aten.prod, aten.logsumexp, aten.max, aten.min)(_reduction_rule(1))
_rule(*_DIM_AT_2)(_reduction_rule(2))


def _pool(tr: FlowTracker, args: tuple, kwargs: dict, out: Any, nsp: int) -> None:
    x = args[0]
    d = tr.dims(x)
    keep = x.dim() - nsp  # (batch, channels) or (channels,) stay; pooled spatial dims are new
    for o in _tensors(out):
        if o.dim() != x.dim():
            raise _Untracked
        tr.set(o, d[:keep] + tr.fresh(o.shape[keep:]))


_rule(aten.max_pool1d, aten.avg_pool1d, aten.adaptive_avg_pool1d, aten.adaptive_max_pool1d)(
    lambda tr, a, k, o: _pool(tr, a, k, o, 1))
_rule(aten.max_pool2d_with_indices, aten.max_pool2d, aten.avg_pool2d, aten._adaptive_avg_pool2d,
      aten.adaptive_avg_pool2d, aten.adaptive_max_pool2d)(lambda tr, a, k, o: _pool(tr, a, k, o, 2))
_rule(aten.avg_pool3d, aten.max_pool3d_with_indices, aten._adaptive_avg_pool3d)(
    lambda tr, a, k, o: _pool(tr, a, k, o, 3))


@_rule(aten.constant_pad_nd)
def _pad(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
    x, pad = args[0], list(args[1])
    d = list(tr.dims(x))
    for i in range(len(pad) // 2):
        j = x.dim() - 1 - i
        if pad[2 * i] or pad[2 * i + 1]:
            tr.pin((d[j],))
            d[j] = tr.fresh((out.shape[j],), pin=True)[0]
    tr.set(out, tuple(d))


@_rule(aten.roll, aten.flip)
def _roll(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
    """Rolled or flipped dimensions keep all their channels (positions move)."""
    x = args[0]
    d = tr.dims(x)
    dims = args[-1] if len(args) > 1 else kwargs.get("dims", [])
    dims = [dims] if isinstance(dims, int) else list(dims)
    tr.pin(d if not dims else tuple(d[_norm_dim(i, x.dim())] for i in dims))
    tr.set(out, d)


_SDPA = (aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_flash_attention,
         aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_cudnn_attention,
         aten._scaled_dot_product_attention_math, aten.scaled_dot_product_attention)


@_rule(*_SDPA)
def _sdpa(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
    mask = kwargs.get("attn_mask", next((a for a in args[3:] if isinstance(a, torch.Tensor)), None))
    outs = _tensors(out)
    tr.attention(args[0], args[1], args[2], mask, outs[0])
    for o in outs[1:]:
        tr.set(o, tr.fresh(o.shape))


@_rule(aten.embedding)
def _embedding(tr: FlowTracker, args: tuple, kwargs: dict, out: Any) -> None:
    """A lookup: the table's rows (a vocabulary) are indexed, hence kept; its columns follow."""
    table, idx = args[0], args[1]
    dt = tr.dims(table)
    tr.pin(dt[:1])
    tr.set(out, tr.dims(idx) + (dt[-1],))
