"""The search space: per prunable unit, the choices a device can exploit.

A unit is either one weight (choices: dense, N:M, unstructured and block patterns at a few
densities) or one coupled channel group (choices: the fraction of its channels kept).

Channel pruning is not a sparse matrix: it makes smaller dense ops, and layers that share a
channel must shrink together. A `ChannelGroup` (the coupling stage's `ChannelSet`) names the
coupled weights:
  * producers: weights whose output rows are the channels (`unit_rows` rows per channel, e.g.
    head_dim rows of the q/k/v projections for one attention head);
  * consumers: weights whose input columns read the channels (a conv's input channels, a linear
    after a flatten, the attention output projection reading each head);
  * attention: attention ops (by module) whose head count shrinks with the group.
The groups come from the traced dataflow (`coupling.channel_sets`), the same sets a uniform
`channel:` plan prunes, so a searched plan and a hand-written one couple the same weights; a
search task may still give its own. Model outputs (logits) and the residual stream are never in
a set: the first is the task's output, the second would tie every block to one choice.
Ops between coupled layers that carry the channels (ReLU, pooling, softmax) are not shrunk in
the cost: they are memory-bound and a small share of the latency.

Which patterns a device exploits is asked of the cost model: a candidate whose Cost comes back
with `fallback=True` (the device runs it dense, or worse) is left out of that unit's choices and
listed in `SearchSpace.dropped` with the model's reason.

A plan in the space is a choice: {unit name: choice label}. `settings` turns it into what each
weight ends up with (its own pattern and the kept fractions of its rows and columns).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from sparsesim.core.errors import SearchError, SparsesimError
from sparsesim.core.ir import Op
from sparsesim.sparsity.coupling import ChannelSet
from sparsesim.sparsity.records import DENSE, Pattern

# Kept fractions offered per pattern family. Five levels span "light" (75 %) to "aggressive"
# (10 %) pruning; finer grids multiply the per-layer sensitivity measurements linearly.
DEFAULT_DENSITIES = (0.75, 0.5, 0.3, 0.2, 0.1)
# Channel groups keep more: removing whole channels costs far more accuracy per weight.
DEFAULT_CHANNEL_DENSITIES = (0.875, 0.75, 0.5, 0.25)
# N:M ratios offered (2:4 is what sparse tensor cores run; 1:4 and 2:8 where engines skip more).
DEFAULT_NM = ((2, 4), (1, 4))
# Block shape offered (the BSR block the GPU/CPU/FPGA models know best).
DEFAULT_BLOCK = (4, 4)
PRUNABLE_KINDS = ("linear", "conv")


# a coupled channel set as `sparsesim.sparsity.coupling.channel_sets` finds it in the dataflow:
# the search prunes exactly the sets a uniform channel plan prunes
ChannelGroup = ChannelSet


@dataclass(frozen=True)
class Choice:
    """One option of a unit: a weight pattern, or a channel keep-fraction for a group."""

    label: str
    pattern: Pattern


@dataclass(frozen=True)
class Unit:
    name: str
    kind: str  # "layer" or "group"
    weights: tuple[str, ...]
    choices: tuple[Choice, ...]

    def choice(self, label: str) -> Choice:
        for c in self.choices:
            if c.label == label:
                return c
        raise KeyError(f"unit {self.name}: no choice {label!r}")


@dataclass(frozen=True)
class SearchSpace:
    units: tuple[Unit, ...]
    groups: dict[str, ChannelGroup] = field(default_factory=dict)
    # (unit, candidate label, why it was left out)
    dropped: tuple[tuple[str, str, str], ...] = ()

    @cached_property
    def units_by_name(self) -> dict[str, Unit]:
        return {u.name: u for u in self.units}

    def unit(self, name: str) -> Unit:
        for u in self.units:
            if u.name == name:
                return u
        raise KeyError(name)

    def dense_choice(self) -> dict[str, str]:
        return {u.name: u.choices[0].label for u in self.units}


@dataclass(frozen=True)
class GroupIndex:
    """Which group prunes a weight's rows (producers), its columns (consumers), and an attention
    module's heads; each weight and module in at most one group per role."""

    groups: Mapping[str, ChannelGroup]
    rows: Mapping[str, str]
    cols: Mapping[str, str]
    attention: Mapping[str, str]


def index_groups(groups: Sequence[ChannelGroup], prunable: Mapping[str, Op], ops: Sequence[Op]) -> GroupIndex:
    """Check the groups against the workload and index them; SearchError naming the first problem."""
    rows: dict[str, str] = {}
    cols: dict[str, str] = {}
    attn: dict[str, str] = {}
    for g in groups:
        if g.channels < 2:
            raise SearchError(f"channel group {g.name}: needs >= 2 channels, got {g.channels}")
        for w in g.producers + g.consumers:
            if w not in prunable:
                raise SearchError(f"channel group {g.name}: {w!r} is not a linear/conv weight of the workload")
        for w in g.producers:
            n_rows = prunable[w].weight_matrix[0]  # type: ignore[index]
            if n_rows != g.channels * g.unit_rows or w in rows:
                raise SearchError(f"channel group {g.name}: producer {w} has {n_rows} rows, not "
                                  f"{g.channels} x {g.unit_rows} (or it is in two groups)")
            rows[w] = g.name
        for w in g.consumers:
            n_cols = prunable[w].weight_matrix[1]  # type: ignore[index]
            if n_cols % g.channels or w in cols:
                raise SearchError(f"channel group {g.name}: consumer {w} has {n_cols} columns, not a "
                                  f"multiple of {g.channels} channels (or it is in two groups)")
            cols[w] = g.name
        for m in g.attention:
            if not any(op.kind == "attention" and op.module == m for op in ops):
                raise SearchError(f"channel group {g.name}: no attention op in module {m!r}")
            attn[m] = g.name
    return GroupIndex({g.name: g for g in groups}, rows, cols, attn)


@dataclass(frozen=True)
class Setting:
    """What one weight ends up with under a choice: its own pattern and the kept fractions of
    its rows (pruned by the group it produces) and columns (by the group it consumes)."""

    pattern: Pattern
    rows: float = 1.0
    cols: float = 1.0

    @property
    def dense(self) -> bool:
        return self.pattern.spec.is_dense and self.rows == 1.0 and self.cols == 1.0


def group_unit(group: str) -> str:
    return f"group:{group}"


def settings(space: SearchSpace, index: GroupIndex, choice: Mapping[str, str]) -> dict[str, Setting]:
    """Every weight of the space's layer units and groups under `choice` (missing units: dense)."""
    by_name = space.units_by_name

    def density(group: str | None) -> float:
        if group is None:
            return 1.0
        return by_name[group_unit(group)].choice(choice.get(group_unit(group), "dense")).pattern.density

    out: dict[str, Setting] = {}
    weights = [u.name for u in space.units if u.kind == "layer"]
    weights += [w for u in space.units if u.kind == "group" for w in u.weights if w not in weights]
    for w in weights:
        unit = by_name.get(w)
        p = unit.choice(choice.get(w, "dense")).pattern if unit is not None else DENSE
        out[w] = Setting(p, density(index.rows.get(w)), density(index.cols.get(w)))
    return out


# (unit/weight, pattern) -> None when the device exploits the pattern there, else why not
Exploits = Callable[[str, Pattern], "str | None"]


def build_space(prunable: Mapping[str, Op], index: GroupIndex, patterns: Sequence[Pattern],
                channel_densities: Sequence[float], exploits: Exploits) -> SearchSpace:
    """Per prunable weight the patterns `exploits` accepts; per group its channel keep-fractions
    (labelled by the nominal level, so uniform plans line up across groups)."""
    units: list[Unit] = []
    dropped: list[tuple[str, str, str]] = []
    for w in prunable:
        choices = [Choice("dense", DENSE)]
        for p in patterns:
            if p.spec.is_dense:
                continue
            try:
                why_not = exploits(w, p)
            except SparsesimError as e:
                why_not = str(e)
            if why_not is None:
                choices.append(Choice(p.label, p))
            else:
                dropped.append((w, p.label, why_not))
        units.append(Unit(w, "layer", (w,), tuple(choices)))
    for g in index.groups.values():
        ch = [Choice("dense", DENSE)]
        seen = {g.channels}
        for d in channel_densities:
            kept = max(1, round(d * g.channels))
            if kept not in seen:
                seen.add(kept)
                ch.append(Choice(group_label(d), Pattern("channel", kept / g.channels)))
        units.append(Unit(group_unit(g.name), "group", g.producers + g.consumers, tuple(ch)))
    return SearchSpace(tuple(units), dict(index.groups), tuple(dropped))


def candidate_patterns(densities: Sequence[float] = DEFAULT_DENSITIES,
                       nm: Sequence[tuple[int, int]] = DEFAULT_NM,
                       block: tuple[int, int] = DEFAULT_BLOCK) -> list[Pattern]:
    """Dense first, then N:M, unstructured and block at each density."""
    from sparsesim.sparsity.patterns import make_pattern

    out = [DENSE]
    out += [make_pattern("nm", n=n, m=m) for n, m in nm]
    out += [make_pattern("unstructured", d) for d in densities]
    out += [make_pattern("block", d, block=block) for d in densities]
    return out


def group_label(density: float) -> str:
    return "dense" if density >= 1.0 else f"channel:{1 - density:g}"


def prunable_ops(ops: Sequence[Op]) -> dict[str, Op]:
    """First op of each linear/conv weight (a weight used twice is pruned once)."""
    out: dict[str, Op] = {}
    for op in ops:
        if op.kind in PRUNABLE_KINDS and op.weight and op.weight_matrix and op.weight not in out:
            out[op.weight] = op
    return out
