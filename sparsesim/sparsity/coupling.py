"""Channel coupling: which channels of which weights are removed together, solved from the
traced dataflow (`sparsesim.tracing.dataflow`), never from module names.

The dataflow's facts are solved with a union-find over atoms: "eq" merges two atoms into one
class; "prod"/"cat" refine a class into factors or pieces (two refinements of one class are
merged into their common refinement: 768 = 12 x 64 seen from q and 768 = 2 x 6 x 64 from a
grouped K/V head); "pin" marks a class (and everything it refines into) as kept whole.

What is pruned. A weight's output channels (its rows) are a tree of classes. A *unit* is a
leaf class of that tree that is not pinned: walking down, a concatenation prunes each piece
(q, k and v of a fused projection each lose heads), a product prunes one factor -- the one
that came from broadcasting if any (query heads within a K/V group under GQA/MQA), else the
outermost (whole heads, not the same dimensions of every head). A unit is pruned only when
every weight that produces it carries a channel pattern and picks it as its own unit (so a
K/V projection whose head_dim is its only factor under MQA keeps it: the query heads pick
their heads), at the largest density among them;
every op that carries the unit's channels then shrinks with it: consumers lose input columns,
attention loses heads, depthwise convolutions lose groups, elementwise ops lose bytes.
Residual streams (a weight's whole output added to a same-shaped tensor), model inputs and
outputs (so LM vocabularies and classifier outputs), embedding vocabularies and channels an op
without a rule touches are pinned, hence never pruned.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from math import prod
from typing import TYPE_CHECKING

from sparsesim.core.errors import PlanError
from sparsesim.core.ir import Workload
from sparsesim.core.lazy import lazy_module
from sparsesim.sparsity.masks import kept_units
from sparsesim.tracing.dataflow import Dataflow, Dim, Dims, WeightFlow

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")


class Channels:
    """The solved dataflow: classes of atoms, their refinements and which are pinned."""

    def __init__(self, flow: Dataflow) -> None:
        self.flow = flow
        self.size = list(flow.sizes)
        self.parent = list(range(len(self.size)))
        self.pinned = [False] * len(self.size)
        self.bcast = [False] * len(self.size)
        self.summed = [False] * len(self.size)
        self.ref: dict[int, tuple[str, tuple[int, ...]]] = {}
        for fact in flow.facts:
            kind = fact[0]
            if kind == "eq":
                self._union(fact[1], fact[2])
            elif kind in ("prod", "cat"):
                self._refine(fact[1], kind, tuple(fact[2]))
            elif kind == "pin":
                self.pinned[self.find(fact[1])] = True
            elif kind == "bcast":
                self.bcast[self.find(fact[1])] = True
            elif kind == "sum":
                self.summed[self.find(fact[1])] = True
        for w in flow.weights.values():  # a weight's whole output added to another: a residual stream
            rows = row_dim(w)
            if len(rows) == 1 and self.summed[self.find(rows[0])]:
                self.pinned[self.find(rows[0])] = True
        self._pin_down()
        self._walked: dict[int, tuple[int, ...]] = {}

    # ------------------------------------------------------------------ union-find
    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def _new(self, size: int) -> int:
        self.size.append(size)
        self.parent.append(len(self.parent))
        self.pinned.append(False)
        self.bcast.append(False)
        self.summed.append(False)
        return len(self.size) - 1

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:  # cannot happen for a sound rule; never prune either
            self.pinned[ra] = self.pinned[rb] = True
            return
        self.parent[rb] = ra
        self.pinned[ra] |= self.pinned[rb]
        self.bcast[ra] |= self.bcast[rb]
        self.summed[ra] |= self.summed[rb]
        r1, r2 = self.ref.pop(ra, None), self.ref.pop(rb, None)
        if r1 is not None:
            self.ref[ra] = r1
            if r2 is not None:
                self._merge(ra, r1, r2)
        elif r2 is not None:
            self.ref[ra] = r2

    def _refine(self, a: int, kind: str, children: tuple[int, ...]) -> None:
        r = self.find(a)
        if r in self.ref:
            self._merge(r, self.ref[r], (kind, children))
        else:
            self.ref[r] = (kind, children)

    def _merge(self, r: int, r1: tuple[str, tuple[int, ...]], r2: tuple[str, tuple[int, ...]]) -> None:
        """Two descriptions of one class: refine both to their common refinement and merge."""
        (k1, c1), (k2, c2) = r1, r2
        if k1 != k2:
            self.pinned[self.find(r)] = True
            return
        if k1 == "cat":
            edges = sorted(set(_cumsum([self.size[c] for c in c1])) | set(_cumsum([self.size[c] for c in c2])))
            p1, p2 = self._split_cat(c1, edges), self._split_cat(c2, edges)
        else:
            s1 = _strides([self.size[c] for c in c1])
            s2 = _strides([self.size[c] for c in c2])
            edges = sorted(set(s1) | set(s2))
            if any(b % a for a, b in pairwise(edges)):
                self.pinned[self.find(r)] = True
                return
            p1, p2 = self._split_prod(c1, edges), self._split_prod(c2, edges)
        for x, y in zip(p1, p2):
            self._union(x, y)

    def _split_cat(self, children: tuple[int, ...], edges: list[int]) -> list[int]:
        out: list[int] = []
        lo = 0
        for c in children:
            hi = lo + self.size[c]
            inner = [e for e in edges if lo < e < hi]
            if inner:
                bounds = [lo, *inner, hi]
                parts = tuple(self._new(b - a) for a, b in pairwise(bounds))
                self._refine(c, "cat", parts)
                out.extend(parts)
            else:
                out.append(c)
            lo = hi
        return out

    def _split_prod(self, children: tuple[int, ...], edges: list[int]) -> list[int]:
        out: list[int] = []
        stride = prod(self.size[c] for c in children)
        for c in children:
            stride //= self.size[c]
            lo, hi = stride, stride * self.size[c]
            inner = [e for e in edges if lo < e < hi]
            if inner:
                bounds = [lo, *inner, hi][::-1]
                parts = tuple(self._new(a // b) for a, b in pairwise(bounds))
                self._refine(c, "prod", parts)
                out.extend(parts)
            else:
                out.append(c)
        return out

    def _pin_down(self) -> None:
        todo = [r for r in range(len(self.size)) if self.parent[r] == r and self.pinned[r]]
        while todo:
            r = todo.pop()
            for c in self.ref.get(r, ("", ()))[1]:
                rc = self.find(c)
                if not self.pinned[rc]:
                    self.pinned[rc] = True
                    todo.append(rc)

    # ------------------------------------------------------------------ units
    def units(self, dim: Dim) -> tuple[int, ...]:
        """The classes pruning removes from a dimension (see module doc)."""
        return self._pick([self.find(a) for a in dim])

    def _walk(self, r: int) -> tuple[int, ...]:
        if r in self._walked:
            return self._walked[r]
        self._walked[r] = ()  # a cycle (never built by sound rules) prunes nothing
        out: tuple[int, ...] = ()
        if not self.pinned[r] and self.size[r] >= 2:
            ref = self.ref.get(r)
            if ref is None:
                out = (r,)
            elif ref[0] == "cat":
                out = tuple(u for c in ref[1] for u in self._walk(self.find(c)))
            else:
                out = self._pick([self.find(c) for c in ref[1]])
        self._walked[r] = out
        return out

    def _pick(self, roots: Sequence[int]) -> tuple[int, ...]:
        cands = [r for r in roots if self._walk(r)]
        if not cands:
            return ()
        pick = next((r for r in cands if self.bcast[r]), cands[0])
        return self._walk(pick)

    def leaves(self, dim: Dim) -> set[int]:
        """Every leaf class under a dimension, pinned or not."""
        out: set[int] = set()
        todo = [self.find(a) for a in dim]
        seen: set[int] = set()
        while todo:
            r = todo.pop()
            if r in seen:
                continue
            seen.add(r)
            ref = self.ref.get(r)
            if ref is None:
                out.add(r)
            else:
                todo.extend(self.find(c) for c in ref[1])
        return out

    # ------------------------------------------------------------------ sizes and masks
    def kept_size(self, dim: Dim, kept: Mapping[int, int]) -> int:
        return prod(self._kept(self.find(a), kept) for a in dim)

    def _kept(self, r: int, kept: Mapping[int, int]) -> int:
        if r in kept:
            return kept[r]
        ref = self.ref.get(r)
        if ref is None:
            return self.size[r]
        vals = [self._kept(self.find(c), kept) for c in ref[1]]
        return sum(vals) if ref[0] == "cat" else prod(vals)

    def keep_mask(self, dim: Dim, keep: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """Which indices of a dimension survive (bool), given each pruned class's kept set."""
        m = torch.ones(1, dtype=torch.bool)
        for a in dim:
            m = (m[:, None] & self._keep(self.find(a), keep)[None, :]).reshape(-1)
        return m

    def _keep(self, r: int, keep: Mapping[int, torch.Tensor]) -> torch.Tensor:
        if r in keep:
            return keep[r]
        ref = self.ref.get(r)
        if ref is None:
            return torch.ones(self.size[r], dtype=torch.bool)
        parts = [self._keep(self.find(c), keep) for c in ref[1]]
        if ref[0] == "cat":
            return torch.cat(parts)
        m = torch.ones(1, dtype=torch.bool)
        for p in parts:
            m = (m[:, None] & p[None, :]).reshape(-1)
        return m

    def coords(self, dim: Dim, unit: int) -> torch.Tensor:
        """Each index of a dimension's position within `unit` (-1 where it has none)."""
        c = torch.full((1,), -1, dtype=torch.long)
        for a in dim:
            c = _outer(c, self._coords(self.find(a), unit))
        return c

    def _coords(self, r: int, unit: int) -> torch.Tensor:
        if r == unit:
            return torch.arange(self.size[r])
        ref = self.ref.get(r)
        if ref is None:
            return torch.full((self.size[r],), -1, dtype=torch.long)
        parts = [self._coords(self.find(c), unit) for c in ref[1]]
        if ref[0] == "cat":
            return torch.cat(parts)
        c = torch.full((1,), -1, dtype=torch.long)
        for p in parts:
            c = _outer(c, p)
        return c


def _outer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-major combination of two coordinate vectors: the one that is set wins."""
    aa, bb = a[:, None].expand(len(a), len(b)), b[None, :].expand(len(a), len(b))
    return torch.where(aa >= 0, aa, bb).reshape(-1)


def _cumsum(xs: Sequence[int]) -> list[int]:
    out, s = [0], 0
    for x in xs:
        s += x
        out.append(s)
    return out


def _strides(sizes: Sequence[int]) -> list[int]:
    """Row-major strides of a product's factors, plus its total size."""
    out, s = [1], 1
    for x in reversed(sizes):
        s *= x
        out.append(s)
    return out


# ---------------------------------------------------------------------- one weight's view

def row_dim(w: WeightFlow) -> Dim:
    return w.dims[w.rows_dim]


# ---------------------------------------------------------------------- a plan's cut

@dataclass(frozen=True)
class Cut:
    """What a plan removes: kept channels per pruned class (counts always; index sets when
    built from real weights) and each weight's kept rows and columns."""

    channels: Channels
    kept: Mapping[int, int]
    keep: Mapping[int, torch.Tensor]

    def kept_size(self, dim: Dim) -> int:
        return self.channels.kept_size(dim, self.kept)

    def shape(self, dims: Dims) -> tuple[int, ...]:
        return tuple(self.kept_size(d) for d in dims)

    @cached_property
    def empty(self) -> bool:
        return not self.kept or all(self.kept[u] == self.channels.size[u] for u in self.kept)

    def rows(self, w: WeightFlow) -> int:
        return self.kept_size(row_dim(w))

    def cols_kept(self, w: WeightFlow, stored: Sequence[int]) -> int:
        """Kept columns of the N x K view (input channels times kernel positions)."""
        return self.kept_size(w.dims[1 - w.rows_dim]) * prod(stored[2:])

    def row_mask(self, w: WeightFlow) -> torch.Tensor:
        return self.channels.keep_mask(row_dim(w), self.keep)

    def col_mask(self, w: WeightFlow, stored: Sequence[int]) -> torch.Tensor:
        m = self.channels.keep_mask(w.dims[1 - w.rows_dim], self.keep)
        return m.repeat_interleave(prod(stored[2:])) if len(stored) > 2 else m


# solved dataflows by the identity of the (immutable) Dataflow record; an entry leaves with it
_SOLVED: dict[int, Channels] = {}


def solve(flow: Dataflow | None) -> Channels | None:
    """The solved dataflow of a traced workload (solved once per Dataflow record)."""
    if flow is None:
        return None
    hit = _SOLVED.get(id(flow))
    if hit is None or hit.flow is not flow:
        hit = _SOLVED[id(flow)] = Channels(flow)
        weakref.finalize(flow, _SOLVED.pop, id(flow), None)
    return hit


def plan_cut(ch: Channels, densities: Mapping[str, float | None],
             row_scores: Callable[[str], torch.Tensor] | None = None,
             given_rows: Mapping[str, torch.Tensor] | None = None, plan_name: str = "") -> Cut:
    """Decide which channels a plan removes.

    `densities` gives each weight's channel density (None when its pattern is not a channel
    pattern). `row_scores` (of a weight: one score per row of its N x K view) choose which
    channels of a unit stay -- the highest summed score over every producer of the unit;
    without them only the counts are decided (meta device). `given_rows` are rows a plan's
    own masks keep; a unit any of them covers keeps exactly those channels.
    """
    weights = ch.flow.weights
    producers: dict[int, list[str]] = {}
    for name, w in weights.items():
        for leaf in ch.leaves(row_dim(w)):
            producers.setdefault(leaf, []).append(name)
    chosen = {name: set(ch.units(row_dim(w))) for name, w in weights.items()}
    units: dict[int, float] = {}
    for name, d in densities.items():
        if d is None or name not in weights:
            continue
        for u in chosen[name]:
            ds = [densities.get(p) for p in producers[u]]
            if all(x is not None for x in ds) and all(u in chosen[p] for p in producers[u]):
                units[u] = max(x for x in ds if x is not None)
    kept = {u: kept_units(d, ch.size[u]) for u, d in units.items()}
    keep: dict[int, torch.Tensor] = {}
    scored: dict[str, torch.Tensor] = {}
    for u in units:
        given = _given_keep(ch, u, producers[u], weights, given_rows or {}, plan_name)
        if given is not None:
            keep[u] = given
            kept[u] = int(given.sum())
            continue
        if row_scores is None:
            continue
        energy = torch.zeros(ch.size[u], dtype=torch.float64)
        for p in producers[u]:
            if p not in scored:
                scored[p] = row_scores(p).to(torch.float64)
            c = ch.coords(row_dim(weights[p]), u)
            on = c >= 0
            energy.index_add_(0, c[on], scored[p][on])
        m = torch.zeros(ch.size[u], dtype=torch.bool)
        m[energy.topk(kept[u]).indices] = True
        keep[u] = m
    return Cut(ch, kept, keep)


def _given_keep(ch: Channels, u: int, producers: Sequence[str], weights: Mapping[str, WeightFlow],
                given_rows: Mapping[str, torch.Tensor], plan_name: str) -> torch.Tensor | None:
    have = [p for p in producers if p in given_rows]
    if not have:
        return None
    if len(have) != len(producers):
        names = ", ".join(repr(p) for p in producers)
        raise PlanError(f"plan {plan_name!r}: masks cover only some of {names}; they share channels "
                        "and are pruned together, give all or none")
    out = None
    for p in have:
        c = ch.coords(row_dim(weights[p]), u)
        rows = given_rows[p].reshape(-1)
        k = torch.zeros(ch.size[u], dtype=torch.bool)
        on = c >= 0
        k[c[on][rows[on]]] = True
        if out is None:
            out = k
        elif not torch.equal(out, k):
            names = ", ".join(repr(p) for p in producers)
            raise PlanError(f"plan {plan_name!r}: masks of {names} keep different channels; "
                            "they share channels and are pruned together")
    return out


# ---------------------------------------------------------------------- channel sets

@dataclass(frozen=True)
class ChannelSet:
    """One set of channels pruned together, laid out so each weight keeps or drops contiguous
    blocks: `producers` hold `unit_rows` consecutive rows per channel (head_dim rows for a
    head), `consumers` read `cols // channels` consecutive columns per channel, and the
    `attention` ops (by module) run one head per channel."""

    name: str
    channels: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    unit_rows: int
    attention: tuple[str, ...] = ()


def _blocks(coords: torch.Tensor, channels: int) -> int | None:
    """Rows per channel when `coords` is 0,0,..,1,1,..: each channel a contiguous block."""
    n = len(coords)
    if n % channels:
        return None
    per = n // channels
    return per if torch.equal(coords, torch.arange(channels).repeat_interleave(per)) else None


def channel_sets(workload: Workload) -> tuple[ChannelSet, ...]:
    """Every set of channels a uniform channel plan would prune in `workload` (see module doc),
    with its producers, consumers and attention ops; sets whose channels are not contiguous
    blocks of every weight (query heads inside a K/V group, a weight stored K x N) are left out,
    and so is a set that would put a weight in a second set of the same role."""
    ch = solve(workload.dataflow)
    if ch is None:
        return ()
    weights = ch.flow.weights
    chosen = {name: set(ch.units(row_dim(w))) for name, w in weights.items()}
    producers: dict[int, list[str]] = {}
    readers: dict[int, list[str]] = {}
    for name, w in weights.items():
        for leaf in ch.leaves(row_dim(w)):
            producers.setdefault(leaf, []).append(name)
        for leaf in ch.leaves(w.dims[1 - w.rows_dim]):
            readers.setdefault(leaf, []).append(name)
    modules = {op.weight: op.module for op in workload.ops if op.weight}
    attention: dict[int, list[str]] = {}
    for op in workload.ops:
        f = ch.flow.ops.get(op.index)
        if op.kind == "attention" and f is not None and f.dims:
            for leaf in ch.leaves(tuple(a for d in f.dims[0][:-2] for a in d)):
                attention.setdefault(leaf, []).append(op.module)
    out: list[ChannelSet] = []
    taken_rows: set[str] = set()
    taken_cols: set[str] = set()
    names: set[str] = set()
    units = sorted({u for c in chosen.values() for u in c})
    for u in units:
        prods = producers.get(u, [])
        if not prods or not all(u in chosen[p] for p in prods):
            continue
        cons = [c for c in readers.get(u, []) if c not in prods]
        members = prods + cons
        if any(weights[w].rows_dim != 0 for w in members) or taken_rows & set(prods) or taken_cols & set(cons):
            continue
        size = ch.size[u]
        rows = {_blocks(ch.coords(row_dim(weights[p]), u), size) for p in prods}
        cols_ok = all(_blocks(ch.coords(weights[c].dims[1], u), size) is not None for c in cons)
        if len(rows) != 1 or None in rows or not cols_ok:
            continue
        taken_rows.update(prods)
        taken_cols.update(cons)
        name = _common_module([modules.get(p, p) for p in prods])
        while name in names:
            name += "+"
        names.add(name)
        out.append(ChannelSet(name, size, tuple(prods), tuple(cons), rows.pop() or 1,
                              tuple(dict.fromkeys(attention.get(u, [])))))
    return tuple(out)


def _common_module(mods: Sequence[str]) -> str:
    """The longest dotted prefix shared by module names (the block that owns a set)."""
    parts = [m.split(".") for m in mods]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common) or "+".join(mods)
