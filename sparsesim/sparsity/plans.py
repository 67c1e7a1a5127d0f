"""Plans: which pattern each weight gets, and turning a traced Workload into a SparseWorkload.

A plan is an ordered list of (glob, pattern) rules matched with fnmatch against a weight's
name (`encoder.layer.0.attention.self.query.weight`) or its module's name
(`encoder.layer.0.attention.self.query`); the first match wins; unmatched weights get the
default (dense unless said otherwise); `exclude` globs force dense. A uniform plan (a bare
pattern string such as `2:4`) applies to every Linear/Conv weight. Only linear and conv ops are
sparsified: embeddings and weightless matmuls stay as they are.

Spellings accepted by `load_plan`:
- a pattern (`2:4`, `unstructured:0.9`, ...): uniform plan
- a TOML file: optional `name`, `default`, `exclude = [...]`, and rules either in a `[rules]`
  table or as top-level `"glob" = "pattern"` lines (order kept)
- a saved plan (`.safetensors` or `.pt`) written by `save_plan`: the rules as metadata plus masks

Coupled channel pruning. Channel pruning makes a smaller dense matrix, and the layer that
consumes the pruned outputs loses the matching input columns. Two couplings are recognised by
module names when all producers carry the same channel pattern:
- attention heads: the q, k and v projections of one block (siblings named q_proj/k_proj/v_proj
  or query/key/value) of a model whose config gives `num_attention_heads` (and
  `num_key_value_heads` for GQA) are pruned in whole heads, together: a unit is one KV head
  with its query heads, scored by the summed squared scores of all their rows. The consumer is
  the output projection (`<block>.o_proj`, `<block>.out_proj`, or `<parent>.output.dense` as
  in BERT/ViT).
- MLP neurons: Llama gate_proj/up_proj -> down_proj, GPT-2 c_fc -> c_proj, fc1 -> fc2, and
  BERT/ViT `<layer>.intermediate.dense` -> `<layer>.output.dense`, one neuron per unit.
The consumer is recorded as a channel pattern whose stats have kept_cols < cols (if it has a
channel pattern of its own its rows are pruned too; a finer own pattern such as 2:4 is kept
and combined with the zeroed columns). For the residual-safe variant of structured LLM
pruning give the consumers `dense` (e.g. `"*.o_proj" = "dense"`, `"*.down_proj" = "dense"`).
Not modelled: other chains (conv -> conv in CNNs, residual streams): there each weight's
channel pruning removes its own output rows only and the next layer keeps all its columns.
A lone q/k/v projection with a channel pattern still prunes in whole heads.
"""

from __future__ import annotations

import fnmatch
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from sparsesim.core.cache import ContentCache, digest, tensor_state
from sparsesim.core.errors import MaskError, PlanError
from sparsesim.sparsity.formats import format_bytes, storage_format
from sparsesim.core.ir import DTYPE_BYTES, Op, Workload
from sparsesim.sparsity.masks import activation_aware_scores, build_mask, check_mask, existing_mask, kept_units
from sparsesim.sparsity.patterns import make_pattern, parse_pattern
from sparsesim.sparsity.records import DENSE, LayerSparsity, Pattern, SparseWorkload
from sparsesim.core.threads import one_thread
from sparsesim.sparsity.stats import analytic_stats, measure_stats

SPARSIFIED_KINDS = ("linear", "conv")
CRITERIA = ("magnitude", "activation")
_PLAN_FORMAT = "sparsesim-plan"
_META_KEY = "sparsesim.plan"
_TOML_KEYS = ("name", "default", "exclude", "rules")
# module-name endings of attention projections that produce per-head rows
_Q_NAMES = ("q_proj", "query", "q")
_K_NAMES = ("k_proj", "key", "k")
_V_NAMES = ("v_proj", "value", "v")


@dataclass(frozen=True)
class Plan:
    """Ordered (glob, Pattern) rules, a default, exclude globs and optional explicit masks."""

    name: str
    rules: tuple[tuple[str, Pattern], ...] = ()
    default: Pattern = DENSE
    exclude: tuple[str, ...] = ()
    masks: Mapping[str, torch.Tensor] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def pattern_for(self, weight: str, module: str = "") -> Pattern:
        """First rule whose glob matches the weight or module name; exclude wins over rules."""
        names = (weight, module) if module else (weight,)
        if any(fnmatch.fnmatchcase(n, g) for g in self.exclude for n in names):
            return DENSE
        for glob, pattern in self.rules:
            if glob in names or any(fnmatch.fnmatchcase(n, glob) for n in names):
                return pattern
        return self.default

    def check_globs(self, layers: Iterable[tuple[str, str]]) -> None:
        """PlanError naming the first rule/exclude glob that matches no (weight, module) pair."""
        layers = list(layers)
        names = {n for pair in layers for n in pair if n}
        for glob in [g for g, _ in self.rules] + list(self.exclude):
            if glob in names:  # an exact name (a saved or searched plan names every weight)
                continue
            if not any(fnmatch.fnmatchcase(w, glob) or (m and fnmatch.fnmatchcase(m, glob)) for w, m in layers):
                shown = ", ".join(w for w, _ in layers[:4]) + (", ..." if len(layers) > 4 else "")
                raise PlanError(f"plan {self.name!r}: glob {glob!r} matches no layer ({len(layers)} layers, e.g. {shown})")
        for name in self.masks:
            if name not in {w for w, _ in layers}:
                raise PlanError(f"plan {self.name!r}: mask for {name!r} names no sparsifiable weight")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rules": [[g, p.label] for g, p in self.rules],
                "default": self.default.label, "exclude": list(self.exclude)}


def uniform_plan(pattern: Pattern | str, *, exclude: Iterable[str] = ()) -> Plan:
    p = parse_pattern(pattern)
    return Plan(name=p.label, default=p, exclude=tuple(exclude))


def _plan_from_dict(doc: Mapping[str, Any], where: str, masks: Mapping[str, torch.Tensor] | None = None) -> Plan:
    def pat(value: Any, key: str) -> Pattern:
        if not isinstance(value, str):
            raise PlanError(f"{where}: {key!r} must be a pattern string, got {value!r}")
        try:
            return parse_pattern(value)
        except PlanError as e:
            raise PlanError(f"{where}: {key!r}: {e}") from None

    rules_doc = doc.get("rules", {})
    if isinstance(rules_doc, list):  # saved plans keep rules as [glob, pattern] pairs
        rules = tuple((str(g), pat(p, str(g))) for g, p in rules_doc)
    elif isinstance(rules_doc, Mapping):
        rules = tuple((g, pat(p, g)) for g, p in rules_doc.items())
    else:
        raise PlanError(f"{where}: 'rules' must be a table of \"glob\" = \"pattern\"")
    extra = tuple((g, pat(p, g)) for g, p in doc.items() if g not in _TOML_KEYS)
    exclude = doc.get("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(e, str) for e in exclude):
        raise PlanError(f"{where}: 'exclude' must be a list of globs")
    name = doc.get("name", Path(where).stem)
    if not isinstance(name, str):
        raise PlanError(f"{where}: 'name' must be a string")
    default = pat(doc["default"], "default") if "default" in doc else DENSE
    return Plan(name=name, rules=extra + rules, default=default, exclude=tuple(exclude), masks=dict(masks or {}))


def load_plan(spec: str | Plan | Path) -> Plan:
    """A Plan from a pattern string, a TOML plan file or a saved .safetensors/.pt plan."""
    if isinstance(spec, Plan):
        return spec
    text = str(spec)
    path = Path(text)
    if path.suffix == ".toml":
        if not path.is_file():
            raise PlanError(f"plan file {text!r} does not exist")
        try:
            doc = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise PlanError(f"plan file {text!r}: {e}") from None
        except UnicodeDecodeError as e:
            raise PlanError(f"plan file {text!r}: not a UTF-8 text file (byte {e.start})") from None
        except OSError as e:
            raise PlanError(f"plan file {text!r}: cannot read ({e.strerror or e})") from None
        return _plan_from_dict(doc, text)
    if path.suffix in (".safetensors", ".pt"):
        if not path.is_file():
            raise PlanError(f"plan file {text!r} does not exist")
        return _load_saved(path)
    try:
        return uniform_plan(text)
    except PlanError as e:
        raise PlanError(f"plan {text!r} is neither a pattern nor a .toml/.safetensors/.pt plan file: {e}") from None


def _load_saved(path: Path) -> Plan:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if _META_KEY not in meta:
                    raise PlanError(f"plan file '{path}': no {_META_KEY!r} metadata; not written by save_plan")
                masks = {k: f.get_tensor(k) for k in f.keys()}
        except PlanError:
            raise
        except Exception as e:  # safetensors raises its own error types for a corrupt file
            raise PlanError(f"plan file '{path}': not a readable .safetensors file ({_first_line(e)})") from None
        try:
            doc = json.loads(meta[_META_KEY])
        except json.JSONDecodeError as e:
            raise PlanError(f"plan file '{path}': {_META_KEY!r} metadata is not JSON ({e})") from None
    else:
        try:
            blob = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as e:  # a pickle that is not plain data, or a corrupt file
            # torch's own message is a paragraph about weights_only; the type says enough
            raise PlanError(f"plan file '{path}': not readable by torch.load(weights_only=True) "
                            f"({type(e).__name__}); save plans with save_plan") from None
        if not isinstance(blob, dict) or blob.get("format") != _PLAN_FORMAT:
            raise PlanError(f"plan file '{path}': not a plan written by save_plan")
        doc, masks = blob.get("plan"), blob.get("masks", {})
        if not isinstance(masks, Mapping):
            raise PlanError(f"plan file '{path}': 'masks' must map weight names to mask tensors")
        masks = dict(masks)
    if not isinstance(doc, Mapping):
        raise PlanError(f"plan file '{path}': the plan must be a table of rules, got {type(doc).__name__}")
    return _plan_from_dict(doc, str(path), masks)


def _first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (some libraries write paragraphs)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def save_plan(path: str | Path, plan: Plan, masks: Mapping[str, torch.Tensor]) -> Path:
    """Write the plan's rules and `masks` (stored as bool) to .safetensors or .pt."""
    from sparsesim.core.atomic import replacing

    path = Path(path)
    doc = plan.to_dict()
    packed = {k: (v.detach() != 0).contiguous().cpu() for k, v in masks.items()}
    if path.suffix not in (".safetensors", ".pt"):
        raise PlanError(f"plan file '{path}': save as .safetensors or .pt")
    with replacing(path) as tmp:  # atomic: a kill leaves the previous plan file whole
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(packed, str(tmp), metadata={_META_KEY: json.dumps(doc)})
        else:
            torch.save({"format": _PLAN_FORMAT, "version": 1, "plan": doc, "masks": packed}, tmp)
    return path


# ------------------------------------------------------------------ weights and masks -------

@dataclass(frozen=True)
class _Entry:
    """One sparsifiable weight: its module, its N x K matrix shape and whether the stored
    parameter is K x N (transformers' Conv1D), so masks are built along the right axis."""

    weight: str
    module: str
    rows: int
    cols: int
    transposed: bool = False


def _get_tensor(model: nn.Module, name: str) -> tuple[nn.Module, str, torch.Tensor]:
    """The owning module, local name and effective tensor of a weight (prune-aware)."""
    owner_name, _, local = name.rpartition(".")
    try:
        owner = model.get_submodule(owner_name) if owner_name else model
    except AttributeError:
        raise PlanError(f"layer {name!r}: no such module in the model") from None
    if local.endswith("_orig"):
        local = local[: -len("_orig")]
    t = getattr(owner, local, None)
    if not isinstance(t, torch.Tensor):
        t = getattr(owner, local + "_orig", None)
    if not isinstance(t, torch.Tensor):
        raise PlanError(f"layer {name!r}: the model has no such weight")
    return owner, local, t


def _view(t: torch.Tensor, e: _Entry) -> torch.Tensor:
    """A tensor in the weight's stored layout, seen as the N x K matrix (or conv shape)."""
    return t.t() if e.transposed and t.dim() == 2 else t


@dataclass(frozen=True)
class _Coupling:
    """Producers whose output rows are pruned together in `units` (an attention block's q/k/v
    in whole KV-head groups, or an MLP's up/gate projections in neurons), and the consumer
    whose input columns (`consumer_cols` per unit) they feed."""

    producers: tuple[tuple[str, int], ...]  # (weight, rows per unit)
    consumer: str | None
    consumer_cols: int
    pattern: Pattern
    units: int


def _config_heads(model: Any) -> tuple[int | None, int | None]:
    cfg = getattr(model, "config", None)
    heads = getattr(cfg, "num_attention_heads", None)
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    if not isinstance(heads, int) or not isinstance(kv, int) or heads < 1 or kv < 1 or heads % kv:
        return None, None
    return heads, kv


def _role(module: str) -> str | None:
    leaf = module.rpartition(".")[2]
    return "q" if leaf in _Q_NAMES else "k" if leaf in _K_NAMES else "v" if leaf in _V_NAMES else None


def _same_channel(patterns: Mapping[str, Pattern], weights: Iterable[str]) -> Pattern | None:
    pats = {patterns[w] for w in weights}
    p = pats.pop() if len(pats) == 1 else None
    return p if p is not None and p.spec.shrinks_op else None


def _couplings(entries: Mapping[str, _Entry], patterns: Mapping[str, Pattern],
               heads: int | None, kv_heads: int | None) -> list[_Coupling]:
    """Attention blocks and MLPs whose producers all carry the same channel pattern (module doc)."""
    by_module = {e.module: w for w, e in entries.items()}
    out: list[_Coupling] = []
    by_parent: dict[str, dict[str, str]] = {}
    for w, e in entries.items():
        role = _role(e.module)
        if role:
            by_parent.setdefault(e.module.rpartition(".")[0], {})[role] = w
    for parent, roles in by_parent.items() if heads and kv_heads else ():
        pattern = _same_channel(patterns, roles.values())
        if set(roles) != {"q", "k", "v"} or pattern is None:
            continue
        q, k, v = (entries[roles[r]] for r in "qkv")
        if q.rows % heads or k.rows % kv_heads or v.rows % kv_heads:
            continue
        rep = heads // kv_heads
        grand = parent.rpartition(".")[0]
        names = (f"{parent}.o_proj", f"{parent}.out_proj", f"{grand}.output.dense" if grand else "output.dense")
        o = next((by_module[n] for n in names if n in by_module), None)
        if o is not None and entries[o].cols % heads:
            o = None
        out.append(_Coupling(((q.weight, q.rows // kv_heads), (k.weight, k.rows // kv_heads),
                              (v.weight, v.rows // kv_heads)),
                             o, entries[o].cols // kv_heads if o else 0, pattern, kv_heads))
    for producers, consumer in _mlp_pairs(by_module):
        pattern = _same_channel(patterns, producers)
        rows = {entries[w].rows for w in producers}
        if pattern is None or len(rows) != 1 or entries[consumer].cols != next(iter(rows)):
            continue
        out.append(_Coupling(tuple((w, 1) for w in producers), consumer, 1, pattern, next(iter(rows))))
    return out


def _mlp_pairs(by_module: Mapping[str, str]) -> list[tuple[tuple[str, ...], str]]:
    """(producer weights, consumer weight) of MLPs by module names: Llama gate/up -> down,
    GPT-2 c_fc -> c_proj, fc1 -> fc2, BERT/ViT <layer>.intermediate.dense -> <layer>.output.dense."""
    out = []
    for module, w in by_module.items():
        parent, _, leaf = module.rpartition(".")
        pre = f"{parent}." if parent else ""
        if leaf == "down_proj":
            prods = tuple(by_module[pre + n] for n in ("gate_proj", "up_proj") if pre + n in by_module)
        elif leaf in ("c_proj", "fc2"):
            src = pre + ("c_fc" if leaf == "c_proj" else "fc1")
            prods = (by_module[src],) if src in by_module else ()
        elif module.endswith("output.dense") and not module.endswith("attention.output.dense"):
            layer = module[: -len("output.dense")]
            src = f"{layer}intermediate.dense"
            prods = (by_module[src],) if src in by_module else ()
        else:
            prods = ()
        if prods:
            out.append((prods, w))
    return out


def _consumer_pattern(own: Pattern, density: float) -> Pattern:
    """The pattern recorded for the consumer of pruned heads: channel (a smaller dense matrix)
    unless it has a finer pattern of its own, which it keeps."""
    return make_pattern("channel", density) if own.spec.is_dense or own.spec.shrinks_op else own


class _Layers:
    """Decides each weight's pattern and mask (in the N x K view) for one plan and real model."""

    def __init__(self, model: nn.Module, entries: Mapping[str, _Entry], plan: Plan, criterion: str,
                 norms: Mapping[str, Any], cache: ContentCache[Any] | None = None) -> None:
        self.model, self.entries, self.plan, self.criterion, self.norms = model, entries, plan, criterion, norms
        self.cache = cache
        self.patterns = {w: plan.pattern_for(w, e.module) for w, e in entries.items()}
        self.heads, self.kv_heads = _config_heads(model)
        self.decided: dict[str, tuple[Pattern, torch.Tensor | None]] = {}
        for coupling in _couplings(entries, self.patterns, self.heads, self.kv_heads):
            self._couple(coupling)

    def weight(self, w: str) -> torch.Tensor:
        return _view(_get_tensor(self.model, w)[2].detach(), self.entries[w])

    def scores(self, w: str) -> torch.Tensor:
        view = self.weight(w)
        if self.criterion == "magnitude":
            return view.abs().float()
        if w not in self.norms:
            raise PlanError(f"layer {w!r}: no activation norms (trace with measure_activations=True)")
        a = torch.as_tensor(self.norms[w])
        return activation_aware_scores(view, _view(a, self.entries[w]), layer=w)

    def given(self, w: str, pattern: Pattern, group: int = 1) -> torch.Tensor | None:
        """The plan's own mask for `w` in the N x K view, checked against `pattern`."""
        if w not in self.plan.masks:
            return None
        mask = _view(self.plan.masks[w], self.entries[w])
        check_mask(mask, pattern, layer=w, shape=tuple(self.weight(w).shape), group=group)
        return mask

    def _couple(self, c: _Coupling) -> None:
        given = {w: self.given(w, c.pattern, unit) for w, unit in c.producers}
        names = ", ".join(repr(w) for w, _ in c.producers)
        if len({m is None for m in given.values()}) > 1:
            raise PlanError(f"plan {self.plan.name!r}: masks cover only some of {names}; "
                            "they are pruned together, give all or none")
        first, unit_rows = c.producers[0]
        if given[first] is not None:
            rows_kept = given[first].reshape(self.entries[first].rows, -1).any(dim=1)
            keep = rows_kept.reshape(c.units, unit_rows).any(dim=1)
            for w, unit in c.producers:
                if not torch.equal(given[w].reshape(self.entries[w].rows, -1).any(dim=1).reshape(c.units, unit).any(dim=1), keep):
                    raise PlanError(f"plan {self.plan.name!r}: masks of {names} keep different units; "
                                    "they are pruned together")
                self.decided[w] = (c.pattern, given[w])
        else:
            # a unit (KV head with its query heads, or one MLP neuron) is scored by the energy
            # of its rows in every producer
            energy = sum(self.scores(w).reshape(self.entries[w].rows, -1).pow(2).sum(dim=1).reshape(c.units, -1).sum(dim=1)
                         for w, _ in c.producers)
            keep = torch.zeros(c.units, dtype=torch.bool)
            keep[energy.topk(kept_units(c.pattern.density, c.units)).indices] = True
            for w, unit in c.producers:
                shape = self.weight(w).shape
                rows = keep.repeat_interleave(unit)
                self.decided[w] = (c.pattern, rows.reshape(-1, *([1] * (len(shape) - 1))).expand(shape).float())
        if c.consumer is not None:
            self._consumer(c.consumer, keep.repeat_interleave(c.consumer_cols))

    def _consumer(self, o: str, cols: torch.Tensor) -> None:
        e, own = self.entries[o], self.patterns[o]
        mask = self.given(o, own if not own.spec.is_dense else make_pattern("channel", 1.0))
        if mask is None:
            mask = cols[None, :].expand(e.rows, e.cols).float()
            if not own.spec.is_dense:
                own_mask = build_mask(self.weight(o), own, scores=self.scores(o), layer=o)
                mask = mask * own_mask.reshape(e.rows, e.cols)
        density = float(mask.reshape(e.rows, -1).count_nonzero()) / (e.rows * e.cols)
        self.decided[o] = (_consumer_pattern(own, density), mask)

    def decide(self, w: str) -> tuple[Pattern, torch.Tensor | None]:
        """(pattern, mask in the N x K view or None when the weight stays fully dense)."""
        if w in self.decided:
            return self.decided[w]
        pattern = self.patterns[w]
        e = self.entries[w]
        group = _head_rows(e, self.heads, self.kv_heads) if pattern.spec.uses_group else 1
        mask = self.given(w, pattern, group)
        if mask is None and pattern.spec.is_dense:
            owner, local, _ = _get_tensor(self.model, w)
            found = self._existing(owner, local)
            mask = None if found is None else _view(found, e)
        elif mask is None:
            mask = build_mask(self.weight(w), pattern, scores=self.scores(w), layer=w, group=group)
        return pattern, mask


    def _existing(self, owner: nn.Module, local: str) -> torch.Tensor | None:
        """Zeros already in a dense-planned weight; with a cache, looked for once per state of
        the tensors (torch counts every in-place write in a tensor's version)."""
        if self.cache is None:
            return existing_mask(owner, local)
        parts = tuple(t for t in (getattr(owner, n, None) for n in (local, local + "_orig", local + "_mask"))
                      if isinstance(t, torch.Tensor))
        key = ("zeros", local, *(tensor_state(t) for t in parts))
        # the entry holds the tensors, so their ids stay theirs while it lives
        return self.cache.get_or_make(key, lambda: (existing_mask(owner, local), parts))[0]


def _head_rows(e: _Entry, heads: int | None, kv_heads: int | None) -> int:
    """Rows per channel unit: head_dim on a lone q/k/v projection, else one row."""
    role = _role(e.module)
    n = heads if role == "q" else kv_heads if role in ("k", "v") else None
    return e.rows // n if n and e.rows % n == 0 else 1


def _analytic_layers(model: Any, entries: Mapping[str, _Entry], plan: Plan) -> dict[str, tuple[Pattern, Any]]:
    """(pattern, analytic stats) per weight when no real weights exist (meta device)."""
    patterns = {w: plan.pattern_for(w, e.module) for w, e in entries.items()}
    heads, kv_heads = _config_heads(model)
    out: dict[str, tuple[Pattern, Any]] = {}
    for c in _couplings(entries, patterns, heads, kv_heads):
        for w, unit in c.producers:
            e = entries[w]
            out[w] = (c.pattern, analytic_stats(e.rows, e.cols, c.pattern, group=unit))
        if c.consumer is not None:
            e, own = entries[c.consumer], patterns[c.consumer]
            kept_cols = kept_units(c.pattern.density, c.units) * c.consumer_cols
            if own.spec.is_dense or own.spec.shrinks_op:
                st = analytic_stats(e.rows, e.cols, own if own.spec.shrinks_op else make_pattern("channel", 1.0),
                                    kept_cols=kept_cols)
                out[c.consumer] = (_consumer_pattern(own, st.density), st)
    for w, e in entries.items():
        if w not in out:
            p = patterns[w]
            group = _head_rows(e, heads, kv_heads) if p.spec.uses_group else 1
            out[w] = (p, analytic_stats(e.rows, e.cols, p, group=group))
    return out


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


def sparsify(workload: Workload, plan: Plan | str, *, criterion: str = "magnitude",
             cache: ContentCache[Any] | None = None) -> SparseWorkload:
    """Annotate every linear/conv weight of `workload` with its plan pattern, stats and format.

    Masks are built from the real weights in `workload.model` (or taken from the plan and
    checked); on the meta device, or without a model, stats are analytic. Zeros and
    torch.nn.utils.prune masks already in a dense-planned weight show up as unstructured.
    A weight used by several ops is sparsified once. `cache` keeps each weight's record by the
    content of its mask, so sparsifying many plans that share masks (a search) measures each
    mask once.
    """
    with one_thread():
        return _sparsify(workload, plan, criterion, cache)


def _measured_layer(w: str, pattern: Pattern, mask: torch.Tensor | None, rows: int, cols: int, vb: float,
                    cache: ContentCache[Any] | None) -> LayerSparsity:
    """A weight's record from its real mask (None: no zeros), through `cache` when given."""
    def make() -> LayerSparsity:
        p = pattern
        if mask is None:
            stats = analytic_stats(rows, cols, DENSE)  # exact for a weight without zeros
        else:
            stats = measure_stats(mask, pattern=p)
            if p.spec.is_dense and stats.nnz < stats.size:
                p = _found_zeros_pattern(stats)
        return layer_record(w, p, stats, vb)

    if cache is None:
        return make()
    key = (w, pattern, vb, rows, cols, None if mask is None else digest(mask != 0))
    return cache.get_or_make(key, make)


def _sparsify(workload: Workload, plan: Plan | str, criterion: str,
              cache: ContentCache[Any] | None = None) -> SparseWorkload:
    plan = load_plan(plan)
    _criterion(criterion)
    first: dict[str, Op] = {}
    for op in workload.ops:
        if op.weight is not None and op.kind in SPARSIFIED_KINDS and op.weight_shape is not None:
            first.setdefault(op.weight, op)
    plan.check_globs((w, op.module) for w, op in first.items())
    model = workload.model
    entries: dict[str, _Entry] = {}
    for w, op in first.items():
        rows, cols = op.weight_matrix
        info = workload.weights.get(w)
        stored = tuple(info.shape) if info is not None else tuple(op.weight_shape)
        transposed = len(stored) == 2 and ("weight stored K x N" in op.note or (stored == (cols, rows) and rows != cols))
        entries[w] = _Entry(w, op.module, rows, cols, transposed)
    on_meta = model is None or workload.on_meta or any(
        _get_tensor(model, w)[2].device.type == "meta" for w in entries)
    decider = None if on_meta else _Layers(model, entries, plan, criterion, workload.activation_norms, cache)
    analytic = _analytic_layers(model, entries, plan) if on_meta else {}
    layers: dict[str, LayerSparsity] = {}
    for w, op in first.items():
        e = entries[w]
        info = workload.weights.get(w)
        vb = DTYPE_BYTES[info.dtype] if info is not None and info.dtype in DTYPE_BYTES else op.dtype_bytes
        if decider is None:
            pattern, stats = analytic[w]
            if w in plan.masks:  # a saved plan's mask is real even when the weights are not
                mask = _view(plan.masks[w], e)
                stored = tuple(info.shape) if info is not None else tuple(op.weight_shape)
                shape = stored[::-1] if e.transposed else stored
                check_mask(mask, pattern, layer=w, shape=shape)
                stats = measure_stats(mask, pattern=pattern)
        else:
            pattern, mask = decider.decide(w)
            layers[w] = _measured_layer(w, pattern, mask, e.rows, e.cols, vb, cache)
            continue
        layers[w] = layer_record(w, pattern, stats, vb)
    return SparseWorkload(workload=workload, plan_name=plan.name, layers=layers)


# Below this sparsity, zeros found in a dense-planned weight are noise (a few exact zeros from
# init, fp16 underflow) that no kernel exploits: the layer stays dense, stats still measured.
FOUND_ZEROS_MIN_SPARSITY = 0.01


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
            rows, cols = (w.shape[1], w.shape[0]) if conv1d else (w.shape[0], w[0].numel())
            out[name] = _Entry(name, mname, int(rows), int(cols), conv1d)
        elif isinstance(mod, nn.RNNBase):
            for local, w in mod.named_parameters(recurse=False):
                if local.startswith("weight_") and w.dim() == 2:
                    name = names[id(w)]
                    out[name] = _Entry(name, mname, int(w.shape[0]), int(w.shape[1]))
    return out


def apply_plan(model: nn.Module, plan: Plan | str, *, criterion: str = "magnitude",
               activation_norms: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Multiply each planned mask into its weight in place; return the masks (stored layout,
    weight dtype) of every weight that is not fully dense, ready for `save_plan`."""
    plan = load_plan(plan)
    _criterion(criterion)
    entries = _model_entries(model)
    plan.check_globs((w, e.module) for w, e in entries.items())
    for w in entries:
        if _get_tensor(model, w)[2].device.type == "meta":
            raise MaskError(f"layer {w!r}: cannot apply a plan to a weight on the meta device")
    decider = _Layers(model, entries, plan, criterion, activation_norms or {})
    masks: dict[str, torch.Tensor] = {}
    for w, e in entries.items():
        _, mask = decider.decide(w)
        if mask is None:
            continue
        owner, local, _ = _get_tensor(model, w)
        # under torch.nn.utils.prune the stored parameter is <name>_orig; <name> is recomputed
        param = getattr(owner, local + "_orig", None)
        param = param if isinstance(param, torch.Tensor) else getattr(owner, local)
        stored = _view(mask, e).reshape(param.shape).to(param.dtype)
        with torch.no_grad():
            param.mul_(stored)
        masks[w] = stored
    return masks
