"""One search problem: a real model, its traced workload, a device and an accuracy signal.

It turns a plan given as {unit: choice label} into real masks (built from the real weights,
channel groups kept consistent), applies them to the model to measure accuracy, and asks the
cost model for every op (channel-pruned ops shrunk to the smaller dense op they become) to get
the modeled latency, energy and memory. Per-unit tables for the DP come from the same two
functions with one unit changed at a time.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from sparsesim.hw.devices import Device
from sparsesim.core.errors import SearchError, SparsesimError
from sparsesim.core.ir import DTYPE_BYTES, Op, Workload
from sparsesim.search.accuracy import Evaluate, Fidelity, layer_inputs, masked, reconstruction_error, run_evaluate
from sparsesim.search.dp import LayerTable
from sparsesim.search.space import (
    DEFAULT_CHANNEL_DENSITIES, DEFAULT_DENSITIES, ChannelGroup, Choice, SearchSpace, Unit,
    candidate_patterns, group_label, prunable_ops, shrink_op,
)
from sparsesim.sparsity.records import DENSE, LayerSparsity, Pattern

SIGNALS = ("fidelity", "evaluate", "reconstruction")
# masks kept in memory per process (MiniLM masks are ~1.5 M bools per weight)
MASK_CACHE = 256


def layer_sparsity(weight: str, mask2d: torch.Tensor, pattern: Pattern, value_bytes: float) -> LayerSparsity:
    """LayerSparsity of a real mask, exactly as plans.sparsify builds it."""
    from sparsesim.sparsity.plans import layer_record
    from sparsesim.sparsity.stats import measure_stats

    return layer_record(weight, pattern, measure_stats(mask2d, pattern=pattern), value_bytes)


@dataclass(frozen=True)
class SearchTask:
    """What a workload offers a search beyond its model (builder modules define
    `search_task(model) -> SearchTask`): the evaluate the results report, a calibration batch
    for the cheap signals, the coupled channel groups and an optional recovery hook."""

    evaluate: Evaluate
    metric: str = "evaluate"
    fidelity: Fidelity | None = None
    groups: tuple[ChannelGroup, ...] = ()
    calibration: Any = None
    recovery: Callable[[nn.Module], None] | None = None


@dataclass(frozen=True)
class PlanCost:
    latency_s: float
    energy_j: float
    memory_bytes: float
    fallback_ops: int


class SearchProblem:
    """Masks, accuracy and modeled cost of any plan in the space (see module doc)."""

    def __init__(self, workload: Workload, device: Device, *, evaluate: Evaluate,
                 fidelity: Fidelity | None = None, groups: Sequence[ChannelGroup] = (),
                 densities: Sequence[float] = DEFAULT_DENSITIES,
                 channel_densities: Sequence[float] = DEFAULT_CHANNEL_DENSITIES,
                 patterns: Sequence[Pattern] | None = None,
                 recovery: Callable[[nn.Module], None] | None = None,
                 calibration: Any = None) -> None:
        if workload.model is None or workload.on_meta:
            raise SearchError(f"workload {workload.name}: a search needs the real model with its weights")
        self.name = workload.name
        self.model: nn.Module = workload.model.eval()
        self.ops: tuple[Op, ...] = workload.ops
        self.device = device
        self.evaluate = evaluate
        self.fidelity = fidelity
        self.recovery = recovery
        self.calibration = calibration
        self.prunable = prunable_ops(self.ops)
        if not self.prunable:
            raise SearchError(f"workload {workload.name}: no linear or conv weights to prune")
        self.groups = {g.name: g for g in groups}
        self._row_group: dict[str, str] = {}
        self._col_group: dict[str, str] = {}
        self._attn_group: dict[str, str] = {}
        self._check_groups()
        self._weights = {w: self._param(w).detach().clone() for w in self.prunable}
        self._vb = {w: DTYPE_BYTES.get(workload.weights[w].dtype, op.dtype_bytes) if w in workload.weights
                    else op.dtype_bytes for w, op in self.prunable.items()}
        self._keep_cache: dict[tuple[str, float], torch.Tensor] = {}
        self._mask_cache: OrderedDict = OrderedDict()
        self._cost_cache: dict[tuple, Any] = {}
        self.space = self._build_space(patterns or candidate_patterns(densities), channel_densities)
        self.units = [(u.name, tuple(c.label for c in u.choices)) for u in self.space.units]
        self._unit = {u.name: u for u in self.space.units}
        self.dense_cost = self.cost(self.space.dense_choice())
        if self.fidelity is not None:
            self.fidelity.reference(self.model)
        self.dense_accuracy = run_evaluate(self.evaluate, self.model, "evaluate (dense model)")

    # ------------------------------------------------------------------ pickling for workers
    def __getstate__(self) -> dict:
        # between trials the model holds the dense weights: ship it once, not a second copy
        state = self.__dict__.copy()
        state["_mask_cache"] = OrderedDict()
        state["_weights"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._weights = {w: self._param(w).detach().clone() for w in self.prunable}

    # ------------------------------------------------------------------ structure
    def _param(self, name: str) -> torch.Tensor:
        try:
            return self.model.get_parameter(name)
        except AttributeError:
            raise SearchError(f"layer {name!r}: the model has no such weight") from None

    def _check_groups(self) -> None:
        for g in self.groups.values():
            if g.channels < 2:
                raise SearchError(f"channel group {g.name}: needs >= 2 channels, got {g.channels}")
            for w in g.producers + g.consumers:
                if w not in self.prunable:
                    raise SearchError(f"channel group {g.name}: {w!r} is not a linear/conv weight of the workload")
            for w in g.producers:
                rows = self.prunable[w].weight_matrix[0]
                if rows != g.channels * g.unit_rows or w in self._row_group:
                    raise SearchError(f"channel group {g.name}: producer {w} has {rows} rows, not "
                                      f"{g.channels} x {g.unit_rows} (or it is in two groups)")
                self._row_group[w] = g.name
            for w in g.consumers:
                cols = self.prunable[w].weight_matrix[1]
                if cols % g.channels or w in self._col_group:
                    raise SearchError(f"channel group {g.name}: consumer {w} has {cols} columns, not a "
                                      f"multiple of {g.channels} channels (or it is in two groups)")
                self._col_group[w] = g.name
            for m in g.attention:
                if not any(op.kind == "attention" and op.module == m for op in self.ops):
                    raise SearchError(f"channel group {g.name}: no attention op in module {m!r}")
                self._attn_group[m] = g.name

    def _build_space(self, patterns: Sequence[Pattern], channel_densities: Sequence[float]) -> SearchSpace:
        units: list[Unit] = []
        dropped: list[tuple[str, str, str]] = []
        for w in self.prunable:
            dense = self._weight_cost(w, DENSE, 1.0, 1.0)[1]
            choices = [Choice("dense", DENSE)]
            for p in patterns:
                if p.kind == "dense":
                    continue
                try:
                    _, c = self._weight_cost(w, p, 1.0, 1.0)
                except SparsesimError as e:
                    dropped.append((w, p.label, str(e)))
                    continue
                gain = c.latency_s < dense.latency_s or c.energy_j < dense.energy_j \
                    or c.memory_bytes < dense.memory_bytes
                # a family may flag the dense op itself as a fallback (e.g. a dtype the engine
                # casts); then only the pattern's own gain tells whether it is exploited
                if c.fallback and not dense.fallback:
                    dropped.append((w, p.label, f"{self.device.name} does not exploit it: {c.why}"))
                elif not gain or (c.fallback and c.latency_s >= dense.latency_s):
                    dropped.append((w, p.label, f"no gain on {self.device.name}: {c.why}"))
                else:
                    choices.append(Choice(p.label, p))
            units.append(Unit(w, "layer", (w,), tuple(choices)))
        for g in self.groups.values():
            ch = [Choice("dense", DENSE)]
            seen = {g.channels}
            for d in channel_densities:  # labelled by the nominal level so uniform plans line up
                kept = max(1, round(d * g.channels))
                if kept not in seen:
                    seen.add(kept)
                    ch.append(Choice(group_label(d), Pattern("channel", kept / g.channels)))
            units.append(Unit(f"group:{g.name}", "group", g.producers + g.consumers, tuple(ch)))
        return SearchSpace(tuple(units), dict(self.groups), tuple(dropped))

    # ------------------------------------------------------------------ masks
    def _keep(self, group: str, density: float) -> torch.Tensor:
        """Channels of a group kept at `density`: the largest by L2 norm over its producers."""
        key = (group, density)
        if key not in self._keep_cache:
            g = self.groups[group]
            score = torch.zeros(g.channels)
            for w in g.producers:
                m = self._weights[w].reshape(g.channels, -1).float()
                score += (m * m).sum(1)
            kept = max(1, round(density * g.channels))
            keep = torch.zeros(g.channels, dtype=torch.bool)
            keep[score.topk(kept).indices] = True
            self._keep_cache[key] = keep
        return self._keep_cache[key]

    def _group_density(self, choice: Mapping[str, str], group: str | None) -> float:
        if group is None:
            return 1.0
        return self._unit[f"group:{group}"].choice(choice.get(f"group:{group}", "dense")).pattern.density

    def _weight_pattern(self, choice: Mapping[str, str], w: str) -> Pattern:
        return self._unit[w].choice(choice.get(w, "dense")).pattern if w in self._unit else DENSE

    def _sub(self, w: str, rd: float, cd: float) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        rows, cols = self.prunable[w].weight_matrix
        rk = ck = None
        if rd < 1.0:
            g = self.groups[self._row_group[w]]
            rk = self._keep(g.name, rd).repeat_interleave(g.unit_rows)
        if cd < 1.0:
            g = self.groups[self._col_group[w]]
            ck = self._keep(g.name, cd).repeat_interleave(cols // g.channels)
        return rk, ck

    def _weight_mask(self, w: str, p: Pattern, rd: float, cd: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(full mask in the weight's shape, mask of the kept submatrix rows x K), both bool."""
        key = (w, p, rd, cd)
        hit = self._mask_cache.get(key)
        if hit is not None:
            self._mask_cache.move_to_end(key)
            return hit
        from sparsesim.sparsity.masks import build_mask

        w2 = self._weights[w].reshape(self._weights[w].shape[0], -1)
        rk, ck = self._sub(w, rd, cd)
        sub = w2
        if rk is not None:
            sub = sub[rk]
        if ck is not None:
            sub = sub[:, ck]
        sub_mask = build_mask(sub, p, layer=w).bool() if p.kind != "dense" else torch.ones_like(sub, dtype=torch.bool)
        full = torch.zeros_like(w2, dtype=torch.bool)
        ri = rk.nonzero().squeeze(1) if rk is not None else torch.arange(w2.shape[0])
        ci = ck.nonzero().squeeze(1) if ck is not None else torch.arange(w2.shape[1])
        full[ri.unsqueeze(1), ci.unsqueeze(0)] = sub_mask
        out = (full.reshape(self._weights[w].shape), sub_mask)
        self._mask_cache[key] = out
        if len(self._mask_cache) > MASK_CACHE:
            self._mask_cache.popitem(last=False)
        return out

    def masks(self, choice: Mapping[str, str]) -> dict[str, torch.Tensor]:
        """Full-shape bool masks of every weight the plan touches (untouched weights omitted)."""
        out = {}
        for w in self.prunable:
            p = self._weight_pattern(choice, w)
            rd = self._group_density(choice, self._row_group.get(w))
            cd = self._group_density(choice, self._col_group.get(w))
            if p.kind == "dense" and rd == 1.0 and cd == 1.0:
                continue
            out[w] = self._weight_mask(w, p, rd, cd)[0]
        return out

    def patterns(self, choice: Mapping[str, str]) -> dict[str, Pattern]:
        """The pattern each touched weight ends up with, as a plan file records it: its own
        pattern, channel when channel pruning removed its rows and/or columns (a smaller dense op),
        or unstructured at its density when channel pruning cut into a sparse pattern."""
        out = {}
        for w, m in self.masks(choice).items():
            p = self._weight_pattern(choice, w)
            rd = self._group_density(choice, self._row_group.get(w))
            cd = self._group_density(choice, self._col_group.get(w))
            if (rd < 1.0 or cd < 1.0) and p.kind == "dense":  # whole rows/columns: a smaller dense op
                out[w] = Pattern("channel", round(float(m.float().mean()), 6))
            elif rd < 1.0 or cd < 1.0:
                out[w] = Pattern("unstructured", round(float(m.float().mean()), 6))
            else:
                out[w] = p
        return out

    # ------------------------------------------------------------------ cost
    def _weight_cost(self, w: str, p: Pattern, rd: float, cd: float):
        key = ("w", w, p, rd, cd)
        if key not in self._cost_cache:
            op = self.prunable[w]
            layer = None
            if p.kind != "dense":
                sub_mask = self._weight_mask(w, p, rd, cd)[1]
                layer = layer_sparsity(w, sub_mask, p, self._vb[w])
            from sparsesim.cost import estimate_op

            self._cost_cache[key] = (layer, estimate_op(shrink_op(op, rows=rd, cols=cd), layer, self.device))
        return self._cost_cache[key]

    def _op_cost(self, op: Op, choice: Mapping[str, str]):
        from sparsesim.cost import estimate_op

        if op.weight in self.prunable and op.kind in ("linear", "conv"):
            w = op.weight
            rd = self._group_density(choice, self._row_group.get(w))
            cd = self._group_density(choice, self._col_group.get(w))
            p = self._weight_pattern(choice, w)
            if op is self.prunable[w]:
                return self._weight_cost(w, p, rd, cd)[1]
            layer = self._weight_cost(w, p, rd, cd)[0]
            key = ("o", op.index, p, rd, cd)
            if key not in self._cost_cache:
                self._cost_cache[key] = estimate_op(shrink_op(op, rows=rd, cols=cd), layer, self.device)
            return self._cost_cache[key]
        hd = self._group_density(choice, self._attn_group.get(op.module)) if op.kind == "attention" else 1.0
        key = ("o", op.index, hd)
        if key not in self._cost_cache:
            self._cost_cache[key] = estimate_op(shrink_op(op, heads=hd), None, self.device)
        return self._cost_cache[key]

    def cost(self, choice: Mapping[str, str]) -> PlanCost:
        """Modeled totals of a plan: every op costed by the device's cost model and summed."""
        lat = en = mem = 0.0
        fb = 0
        for op in self.ops:
            c = self._op_cost(op, choice)
            lat += c.latency_s
            en += c.energy_j
            mem += c.memory_bytes
            fb += int(c.fallback)
        return PlanCost(lat, en, mem, fb)

    # ------------------------------------------------------------------ accuracy
    def accuracy(self, choice: Mapping[str, str]) -> float:
        with masked(self.model, self.masks(choice), recovery=self.recovery) as m:
            return run_evaluate(self.evaluate, m)

    def measure(self, choice: Mapping[str, str]) -> dict[str, float]:
        """What an Optuna trial records: real accuracy and modeled latency/energy/memory."""
        t0 = time.perf_counter()
        acc = self.accuracy(choice)
        c = self.cost(choice)
        return {"accuracy": acc, "latency_s": c.latency_s, "energy_j": c.energy_j,
                "memory_bytes": c.memory_bytes, "speedup_vs_dense": self.dense_cost.latency_s / c.latency_s,
                "eval_s": time.perf_counter() - t0}

    def sensitivity(self, choice: Mapping[str, str], signal: str) -> float:
        """Loss of one plan under `signal` (0 for the dense model, larger is worse)."""
        if signal == "evaluate":
            return self.dense_accuracy - self.accuracy(choice)
        if signal == "fidelity":
            if self.fidelity is None:
                raise SearchError(f"workload {self.name}: no calibration batch for the fidelity signal")
            with masked(self.model, self.masks(choice), recovery=self.recovery) as m:
                return self.fidelity.loss(m)
        if signal == "reconstruction":
            return self._reconstruction(choice)
        raise SearchError(f"signal {signal!r}: expected one of {', '.join(SIGNALS)}")

    def _reconstruction(self, choice: Mapping[str, str]) -> float:
        if self.calibration is None:
            raise SearchError(f"workload {self.name}: no calibration batch for the reconstruction signal")
        if not hasattr(self, "_inputs"):
            mods = [self.prunable[w].module for w in self.prunable]
            self._inputs = layer_inputs(self.model, mods, self.calibration)
        total = 0.0
        for w, m in self.masks(choice).items():
            mod = self.prunable[w].module
            total += reconstruction_error(self.model.get_submodule(mod), self._inputs[mod], m)
        return total

    # ------------------------------------------------------------------ DP tables
    def tables(self, signal: str = "fidelity", progress: Callable[[], None] | None = None,
               cache: dict | None = None) -> tuple[list[LayerTable], float]:
        """Per-unit (latency, sensitivity) with only that unit changed; latencies shifted so each
        unit's fastest choice is 0, with the shift returned as the fixed part of the latency."""
        dense = self.space.dense_choice()
        base = self.dense_cost.latency_s
        out = []
        fixed = base
        for u in self.space.units:
            lats, sens = [], []
            for c in u.choices:
                ch = dict(dense, **{u.name: c.label})
                lats.append(self.cost(ch).latency_s - base)
                # `cache` shares measurements between problems on the same model and signal
                # (the same workload on several devices): sensitivity does not depend on the device
                key = (signal, u.name, c.label)
                if c.label == "dense":
                    sens.append(0.0)
                elif cache is not None and key in cache:
                    sens.append(cache[key])
                else:
                    sens.append(self.sensitivity(ch, signal))
                    if cache is not None:
                        cache[key] = sens[-1]
                if progress is not None:
                    progress()
            lo = min(lats)
            fixed += lo
            out.append(LayerTable(u.name, tuple(c.label for c in u.choices), tuple(x - lo for x in lats),
                                  tuple(sens)))
        return out, fixed
