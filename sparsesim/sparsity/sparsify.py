"""Sparsify: a traced Workload and a Plan -> a SparseWorkload (and `apply_plan`, which puts
the same masks into a model's weights).

Each linear/conv weight gets its plan pattern. Channel patterns are decided first, for the
whole model at once, through the traced dataflow (`sparsesim.sparsity.coupling`): which
channels are removed follows from every weight that produces or reads them, so q, k and v
lose the same heads, a layer's consumers lose the matching input columns, attention loses the
heads and LM heads and classifiers keep their outputs. The shrink pass
(`sparsesim.sparsity.shrink`) then turns every op that carries removed channels into its
smaller dense op; the SparseWorkload holds those ops. A weight that lost rows or columns is
recorded as a channel pattern (a smaller dense matrix) unless it has a finer pattern of its
own (2:4, unstructured, block), which is then built on the kept submatrix. A weight whose
channel pattern removes nothing (every channel of it is pinned: a residual stream, an output
head) is dense. Masks are built from the real weights (or taken from the plan and checked);
on the meta device, or without a model, stats are analytic.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sparsesim.core.cache import ContentCache, digest, tensor_state
from sparsesim.core.errors import MaskError, PlanError, SparsesimWarning
from sparsesim.core.ir import DTYPE_BYTES, Op, Workload
from sparsesim.core.lazy import lazy_module
from sparsesim.core.threads import one_thread
from sparsesim.sparsity.coupling import Cut, plan_cut, solve
from sparsesim.sparsity.formats import format_bytes, storage_format
from sparsesim.sparsity.kinds.act import with_activation_sparsity
from sparsesim.sparsity.masks import (
    activation_aware_scores,
    check_mask,
    existing_keep,
    keep_matrix,
    row_bands,
)
from sparsesim.sparsity.patterns import make_pattern
from sparsesim.sparsity.plans import Plan, load_plan
from sparsesim.sparsity.records import (
    DENSE,
    LayerSparsity,
    Pattern,
    SparseWorkload,
    SparsityStats,
)
from sparsesim.sparsity.shrink import shrink
from sparsesim.sparsity.stats import analytic_stats, measure_stats
from sparsesim.tracing.dataflow import Dataflow, WeightFlow
from sparsesim.tracing.flops import packed_weight_bytes

if TYPE_CHECKING:
    import torch
    from torch import nn
else:
    torch = lazy_module("torch")
    nn = lazy_module("torch.nn")

SPARSIFIED_KINDS = ("linear", "conv")
CRITERIA = ("magnitude", "activation")
# Below this sparsity, zeros found in a dense-planned weight are noise (a few exact zeros from
# init, fp16 underflow) that no kernel exploits: the layer stays dense, stats still measured.
FOUND_ZEROS_MIN_SPARSITY = 0.01


@dataclass(frozen=True)
class _Entry:
    """One sparsifiable weight: its module, its stored shape, its N x K matrix shape and which
    stored dimension holds the output channels (1 for transformers' K x N Conv1D and for
    transposed convolutions), so masks are built along the right axis."""

    weight: str
    module: str
    stored: tuple[int, ...]
    rows_dim: int = 0
    # a Mixture-of-Experts expert tensor (E x N x K): channel patterns leave it dense, since an
    # expert's neurons couple its gate/up and down GEMMs through the grouped GEMM, which the
    # traced dataflow does not follow
    grouped: bool = False

    @property
    def rows(self) -> int:
        return self.stored[self.rows_dim]

    @property
    def cols(self) -> int:
        n = 1
        for d in self.stored:
            n *= d
        return n // self.rows if self.rows else 0


def _get_tensor(model: nn.Module, name: str) -> tuple[nn.Module, str, torch.Tensor]:
    """The owning module, local name and effective tensor of a weight (prune-aware)."""
    owner_name, _, local = name.rpartition(".")
    try:
        owner = model.get_submodule(owner_name) if owner_name else model
    except AttributeError:
        raise PlanError(f"layer {name!r}: no such module in the model") from None
    local = local.removesuffix("_orig")
    t = getattr(owner, local, None)
    if not isinstance(t, torch.Tensor):
        t = getattr(owner, local + "_orig", None)
    if not isinstance(t, torch.Tensor):
        raise PlanError(f"layer {name!r}: the model has no such weight")
    return owner, local, t


def _view(t: torch.Tensor, e: _Entry) -> torch.Tensor:
    """A tensor in the weight's stored layout with its output channels first (its own inverse)."""
    return t.transpose(0, 1) if e.rows_dim == 1 and t.dim() >= 2 else t


def _matrix(t: torch.Tensor, e: _Entry) -> torch.Tensor:
    return _view(t, e).reshape(e.rows, -1)


def _criterion(criterion: str) -> str:
    if criterion not in CRITERIA:
        raise PlanError(f"criterion {criterion!r} is not one of {', '.join(CRITERIA)}")
    return criterion


def layer_record(weight: str, pattern: Pattern, stats: Any, value_bytes: float) -> LayerSparsity:
    """A weight's LayerSparsity from its pattern and stats: storage format and exact bytes."""
    fmt = storage_format(pattern, stats, value_bytes=value_bytes)
    size = format_bytes(fmt, stats, value_bytes=value_bytes, pattern=pattern)
    return LayerSparsity(weight=weight, pattern=pattern, stats=stats, format=fmt, format_bytes=size.total,
                         value_bytes=size.values, metadata_bytes=size.metadata)


# N:M structure recognised in zeros already in a weight, in order of preference (the ratio sparse
# tensor cores run first)
FOUND_NM = ((2, 4), (1, 2), (4, 8))


def _found_zeros_pattern(stats: Any) -> Pattern:
    """Zeros already in a dense-planned weight (pruned by hand, by torch.nn.utils.prune, or a
    2:4 checkpoint) count once they pass FOUND_ZEROS_MIN_SPARSITY: as N:M when every group along
    K conforms (so a 2:4-sparse checkpoint runs on sparse tensor cores), else as unstructured."""
    if 1.0 - stats.density < FOUND_ZEROS_MIN_SPARSITY:
        return DENSE
    conforms = dict(stats.nm_conformance)
    for n, m in FOUND_NM:
        if conforms.get((n, m)) and stats.cols % m == 0 and stats.density <= n / m + 1e-9:
            return make_pattern("nm", n=n, m=m)
    return make_pattern("unstructured", round(stats.density, 6))


def _channel_pattern(kept_rows: int, kept_cols: int, e: _Entry) -> Pattern:
    return make_pattern("channel", round(kept_rows * kept_cols / (e.rows * e.cols), 12))


@dataclass(frozen=True)
class _Decision:
    """One weight under the plan: its pattern, its full bool mask in the N x K view (None when fully
    dense or analytic) and the stats the cost models read."""

    pattern: Pattern
    mask: torch.Tensor | None
    stats: SparsityStats


def _unshrunk(p: Pattern) -> Pattern:
    """A channel pattern as dense (keeping any activation sparsity), others as they are."""
    if not p.spec.shrinks_op:
        return p
    return make_pattern("act", p.act) if p.act < 1.0 else DENSE


class _Decider:
    """Decides each weight's pattern, mask and stats for one plan (see module doc)."""

    def __init__(self, model: nn.Module | None, entries: Mapping[str, _Entry], plan: Plan, criterion: str,
                 norms: Mapping[str, Any], flow: Dataflow | None, real: bool,
                 cache: ContentCache[Any] | None = None) -> None:
        self.model, self.entries, self.plan, self.criterion, self.norms = model, entries, plan, criterion, norms
        self.real, self.cache = real, cache
        self.patterns = {w: _unshrunk(plan.pattern_for(w, e.module)) if e.grouped else plan.pattern_for(w, e.module)
                         for w, e in entries.items()}
        channel = {w: p.density for w, p in self.patterns.items() if p.spec.shrinks_op}
        self.flows: Mapping[str, WeightFlow] = flow.weights if flow is not None else {}
        self.cut: Cut | None = None
        self.lone = {w: d for w, d in channel.items() if w not in self.flows}
        channel = {w: d for w, d in channel.items() if w in self.flows}
        if channel and flow is not None:
            given = {w: self.given(w).any(dim=1) for w in channel if w in plan.masks}
            scores = self.row_energy if real else None
            ch = solve(flow)
            assert ch is not None
            self.cut = plan_cut(ch, channel, scores, given, plan.name)

    def row_energy(self, w: str) -> torch.Tensor:
        """Summed squared scores of each row of `w` (how channels of a unit are ranked); for
        magnitudes a band of rows at a time (no weight-sized temporaries, the same sums)."""
        rows = self.entries[w].rows
        view = self.weight(w).reshape(rows, -1)
        if self.criterion != "magnitude" or not view.is_contiguous():
            return self.scores(w).reshape(rows, -1).pow(2).sum(dim=1)
        out = torch.empty(rows)
        for band in row_bands(rows, view.shape[1]):
            s = view[band].abs().float()
            torch.sum(s * s, dim=1, out=out[band])
        return out

    def measure(self, w: str, mask: torch.Tensor, p: Pattern) -> SparsityStats:
        """Stats of a real mask, through the cache (by the mask's content) when given."""
        if self.cache is None:
            return measure_stats(mask, pattern=p)
        key = ("stats", w, p, tuple(mask.shape), digest(mask != 0))
        return self.cache.get_or_make(key, lambda: measure_stats(mask, pattern=p))

    def existing(self, owner: nn.Module, local: str) -> torch.Tensor | None:
        """Zeros already in a dense-planned weight; with a cache, looked for once per state of
        the tensors (torch counts every in-place write in a tensor's version)."""
        if self.cache is None:
            return existing_keep(owner, local)
        parts = tuple(t for t in (getattr(owner, n, None) for n in (local, local + "_orig", local + "_mask"))
                      if isinstance(t, torch.Tensor))
        key = ("zeros", local, *(tensor_state(t) for t in parts))
        # the entry holds the tensors, so their ids stay theirs while it lives
        return self.cache.get_or_make(key, lambda: (existing_keep(owner, local), parts))[0]

    def weight(self, w: str) -> torch.Tensor:
        assert self.model is not None
        return _view(_get_tensor(self.model, w)[2].detach(), self.entries[w])

    def scores(self, w: str) -> torch.Tensor:
        view = self.weight(w)
        if self.criterion == "magnitude":
            return view.abs().float()
        if w not in self.norms:
            raise PlanError(f"layer {w!r}: no activation norms (trace with measure_activations=True)")
        a = torch.as_tensor(self.norms[w])
        return activation_aware_scores(view, _view(a, self.entries[w]), layer=w)

    def mask_scores(self, w: str) -> torch.Tensor | None:
        """What a mask of `w` is built from: None for magnitudes, which `keep_matrix` takes
        from the weight itself (a band of rows at a time where the kind allows)."""
        return None if self.criterion == "magnitude" else self.scores(w)

    def given(self, w: str) -> torch.Tensor:
        """The plan's own mask for `w` as the N x K bool matrix."""
        e = self.entries[w]
        mask = self.plan.masks[w]
        shape = e.stored
        if tuple(mask.shape) != shape:
            raise MaskError(f"layer {w!r}: mask shape {tuple(mask.shape)} != weight shape {shape}")
        return _matrix(mask, e) != 0

    def decide(self, w: str) -> _Decision:
        e, p = self.entries[w], self.patterns[w]
        wf = self.flows.get(w)
        kr, kc = e.rows, e.cols
        if w in self.lone:
            return self._lone(w, p)
        if self.cut is not None and wf is not None:
            kr, kc = self.cut.rows(wf), self.cut.cols_kept(wf, e.stored)
        if (kr, kc) == (e.rows, e.cols):
            return self._whole(w, DENSE if p.spec.shrinks_op else p)
        own = None if p.spec.is_dense or p.spec.shrinks_op else p
        assert self.cut is not None and wf is not None
        if not self.real:
            if own is None:
                pat = _channel_pattern(kr, kc, e)
                return _Decision(pat, None, analytic_stats(e.rows, e.cols, make_pattern("channel", kr / e.rows),
                                                           kept_cols=kc))
            return _Decision(own, None, analytic_stats(kr, kc, own))
        rows, cols = self.cut.row_mask(wf), self.cut.col_mask(wf, e.stored)
        full = rows[:, None] & cols[None, :]
        if own is None:
            pat = _channel_pattern(kr, kc, e)
            return _Decision(pat, full, self.measure(w, full, pat))
        ri, ci = rows.nonzero().squeeze(1), cols.nonzero().squeeze(1)
        if w in self.plan.masks:
            sub = self.given(w)[ri][:, ci]
            check_mask(sub, own, layer=w)
        else:
            mat = self.weight(w).reshape(e.rows, -1)
            given = self.mask_scores(w)
            sub_scores = None if given is None else given.reshape(e.rows, -1)[ri][:, ci]
            sub = keep_matrix(mat[ri][:, ci], own, scores=sub_scores, layer=w)
        mask = torch.zeros(e.rows, e.cols, dtype=torch.bool)
        mask[ri[:, None], ci[None, :]] = sub
        return _Decision(own, mask, self.measure(w, sub, own))

    def _lone(self, w: str, p: Pattern) -> _Decision:
        """A channel pattern on a weight the dataflow does not know (a workload built by hand):
        the weight is a lone layer, its own rows pruned and nothing else."""
        e = self.entries[w]
        if not self.real:
            if w in self.plan.masks:
                mask = self.given(w)
                check_mask(mask, p, layer=w, shape=(e.rows, e.cols))
                return _Decision(p, None, measure_stats(mask, pattern=p))
            return _Decision(p, None, analytic_stats(e.rows, e.cols, p))
        if w in self.plan.masks:
            mask = self.given(w)
            check_mask(mask, p, layer=w, shape=(e.rows, e.cols))
        else:
            mask = keep_matrix(self.weight(w), p, scores=self.mask_scores(w), layer=w).reshape(e.rows, -1)
        return _Decision(p, mask, self.measure(w, mask, p))

    def _whole(self, w: str, p: Pattern) -> _Decision:
        """A weight channel pruning leaves whole: its own pattern on the full matrix."""
        e = self.entries[w]
        if not self.real:
            if w in self.plan.masks:  # a saved plan's mask is real even when the weights are not
                saved = self.given(w)
                check_mask(saved, p, layer=w, shape=(e.rows, e.cols))
                return _Decision(p, None, measure_stats(saved, pattern=p))
            return _Decision(p, None, analytic_stats(e.rows, e.cols, p))
        mask: torch.Tensor | None = None
        if w in self.plan.masks:
            mask = self.given(w)
            check_mask(mask, p, layer=w, shape=(e.rows, e.cols))
        elif p.spec.is_dense:
            assert self.model is not None
            owner, local, _ = _get_tensor(self.model, w)
            found = self.existing(owner, local)
            mask = None if found is None else _matrix(found, e)
        else:
            mat = self.weight(w)
            mask = keep_matrix(mat, p, scores=self.mask_scores(w), layer=w).reshape(e.rows, -1)
        if mask is None:
            return _Decision(p, None, analytic_stats(e.rows, e.cols, DENSE))  # exact without zeros
        stats = self.measure(w, mask, p)
        if p.spec.is_dense and stats.nnz < stats.size:
            p = dataclasses.replace(_found_zeros_pattern(stats), act=p.act)
        return _Decision(p, mask, stats)


def _entries(workload: Workload) -> dict[str, tuple[_Entry, Op]]:
    flows = workload.dataflow.weights if workload.dataflow is not None else {}
    out: dict[str, tuple[_Entry, Op]] = {}
    for op in workload.ops:
        w = op.weight
        if w is None or op.kind not in SPARSIFIED_KINDS or op.weight_shape is None or w in out:
            continue
        info = workload.weights.get(w)
        stored = tuple(info.shape) if info is not None else tuple(op.weight_shape)
        if w in flows:
            rows_dim = flows[w].rows_dim
        else:  # no dataflow: a 2-D weight stored K x N shows it in its traced N x K shape
            rows, cols = op.weight_matrix or (0, 0)
            rows_dim = int(len(stored) == 2 and (op.weight_k_major or (stored == (cols, rows) and rows != cols)))
        out[w] = (_Entry(w, op.module, stored, rows_dim, op.is_grouped), op)
    return out


def packed_linears(workload: Workload) -> dict[str, str]:
    """Weight name -> module of every dynamically quantised Linear the tracer saw. Its weight is
    not a parameter but packed int8 (with scales) inside the module: no mask is built from it."""
    return {f"{op.module}.weight": op.module for op in workload.ops
            if op.weight is None and packed_weight_bytes(op.aten)}


def _model_packed_linears(model: nn.Module) -> dict[str, str]:
    """As `packed_linears`, from the modules of an untraced model."""
    return {f"{name}.weight": name for name, mod in model.named_modules()
            if type(mod).__module__.startswith("torch.ao.nn.quantized.dynamic") and hasattr(mod, "_packed_params")}


def warn_packed_left_dense(plan: Plan, packed: Mapping[str, str]) -> None:
    """One warning naming every dynamically quantised Linear the plan would sparsify but leaves
    dense; it names no plan, so it is shown once per process however many plans a comparison or
    a search tries."""
    left = sorted(w for w, m in packed.items() if not plan.pattern_for(w, m).spec.is_dense)
    if not left:
        return
    shown = ", ".join(left[:6]) + (f", ... ({len(left)} in all)" if len(left) > 6 else "")
    warnings.warn(SparsesimWarning(
        f"{len(left)} dynamically quantised linear(s) left dense by the plan(s): {shown} "
        "(torch.ao quantize_dynamic packs their int8 weights into an opaque object, not a parameter a mask "
        "can be built from; sparsify the float model before quantising it)"), stacklevel=3)


def _globbed(layers: Iterable[tuple[str, str]], packed: Mapping[str, str]) -> list[tuple[str, str]]:
    """The (weight, module) pairs a plan's globs may name: packed linears included, so a rule
    naming one is warned about (it is left dense) rather than refused as matching nothing."""
    return list(layers) + list(packed.items())


def sparsify(workload: Workload, plan: Plan | str, *, criterion: str = "magnitude",
             cache: ContentCache[Any] | None = None) -> SparseWorkload:
    """Annotate every linear/conv weight of `workload` with its plan pattern, stats and format,
    and shrink every op channel pruning makes smaller (module doc).

    Zeros and torch.nn.utils.prune masks already in a dense-planned weight show up as
    unstructured. A weight used by several ops is sparsified once. `cache` keeps each mask's
    stats by the mask's content, so sparsifying many plans that share masks (a search)
    measures each mask once.
    """
    with one_thread():
        return _sparsify(workload, plan, criterion, cache)


def _sparsify(workload: Workload, plan: Plan | str, criterion: str,
              cache: ContentCache[Any] | None = None) -> SparseWorkload:
    plan = load_plan(plan)
    _criterion(criterion)
    found = _entries(workload)
    packed = packed_linears(workload)
    plan.check_globs(_globbed(((w, op.module) for w, (_, op) in found.items()), packed))
    warn_packed_left_dense(plan, packed)
    entries = {w: e for w, (e, _) in found.items()}
    model = workload.model
    on_meta = model is None or workload.on_meta or any(
        _get_tensor(model, w)[2].device.type == "meta" for w in entries)
    decider = _Decider(None if on_meta else model, entries, plan, criterion, workload.activation_norms,
                       workload.dataflow, real=not on_meta, cache=cache)
    layers: dict[str, LayerSparsity] = {}
    for w, (_e, op) in found.items():
        info = workload.weights.get(w)
        vb = DTYPE_BYTES[info.dtype] if info is not None and info.dtype in DTYPE_BYTES else op.dtype_bytes
        d = decider.decide(w)
        layers[w] = layer_record(w, d.pattern, d.stats, vb)
    shrunk = shrink(workload, decider.cut, {w: layers[w] for w in decider.lone})
    return SparseWorkload(workload=with_activation_sparsity(shrunk, layers), plan_name=plan.name, layers=layers,
                          dense=workload)


def _model_entries(model: nn.Module) -> dict[str, _Entry]:
    """Every Linear/Conv weight (and transformers' Conv1D, stored K x N) of a model, named as the
    tracer names it (the stored parameter under prune or weight_norm), plus the input and hidden
    weights of RNN/LSTM/GRU layers."""
    from sparsesim.tracing.tracer import stored_weight

    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for mname, mod in model.named_modules():
        conv1d = type(mod).__name__ == "Conv1D"
        if isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)) or conv1d:
            w = stored_weight(mod)
            if w is None or id(w) not in names:
                continue
            name = names[id(w)]
            transposed = bool(getattr(mod, "transposed", False))
            out[name] = _Entry(name, mname, tuple(int(s) for s in w.shape), int(conv1d or transposed))
        elif isinstance(mod, nn.RNNBase):
            for local, w in mod.named_parameters(recurse=False):
                if local.startswith("weight_") and w.dim() == 2:
                    name = names[id(w)]
                    out[name] = _Entry(name, mname, tuple(int(s) for s in w.shape))
    return out


def apply_plan(target: nn.Module | Workload, plan: Plan | str, *, criterion: str = "magnitude",
               activation_norms: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Multiply each planned mask into its weight in place; return the masks (stored layout,
    weight dtype) of every weight that is not fully dense, ready for `save_plan`.

    `target` is a model, or a traced Workload of one (needed for channel patterns: which
    channels are removed together is read from the traced dataflow).
    """
    plan = load_plan(plan)
    _criterion(criterion)
    if isinstance(target, Workload):
        model, flow = target.model, target.dataflow
        entries = {w: e for w, (e, _) in _entries(target).items()}
        norms = activation_norms if activation_norms is not None else target.activation_norms
        packed = packed_linears(target)
    else:
        model, flow, entries, norms = target, None, _model_entries(target), activation_norms or {}
        packed = _model_packed_linears(target)
        if any(plan.pattern_for(w, e.module).spec.shrinks_op for w, e in entries.items()):
            raise PlanError(f"plan {plan.name!r}: channel patterns remove channels shared between layers; "
                            "apply them to a traced workload (apply_plan(trace(model, inputs), plan))")
    if not isinstance(model, nn.Module):
        raise PlanError(f"plan {plan.name!r}: the workload has no model to apply masks to")
    plan.check_globs(_globbed(((w, e.module) for w, e in entries.items()), packed))
    warn_packed_left_dense(plan, packed)
    for w in entries:
        if _get_tensor(model, w)[2].device.type == "meta":
            raise MaskError(f"layer {w!r}: cannot apply a plan to a weight on the meta device")
    decider = _Decider(model, entries, plan, criterion, norms, flow, real=True)
    masks: dict[str, torch.Tensor] = {}
    for w, e in entries.items():
        mask = decider.decide(w).mask
        if mask is None:
            continue
        owner, local, _ = _get_tensor(model, w)
        # under torch.nn.utils.prune the stored parameter is <name>_orig; <name> is recomputed
        param = getattr(owner, local + "_orig", None)
        param = param if isinstance(param, torch.Tensor) else getattr(owner, local)
        shape = tuple(param.shape)
        view_shape = (shape[1], shape[0], *shape[2:]) if e.rows_dim == 1 else shape
        stored = _view(mask.reshape(view_shape), e).to(param.dtype)
        with torch.no_grad():
            param.mul_(stored)
        masks[w] = stored
    return masks
