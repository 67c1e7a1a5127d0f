"""One search problem: a real model, its traced workload, a device and an accuracy signal.

A plan is given as {unit: choice label}. The problem turns it into real masks (`masks`,
channel groups kept consistent) and a `Plan` (`plan`), measures accuracy with the masks in the
model, and costs the plan through the one costing path (`costing.PlanCoster`: `sparsify.sparsify`
then `run.estimate.cost_workload`), so its modeled speedups are the ones `compare` gives for
the saved plan. The DP's per-unit tables come from the same functions (`tables.unit_tables`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from sparsesim.core.errors import SearchError
from sparsesim.core.ir import Op, Workload
from sparsesim.hw.devices import Device
from sparsesim.run.results import PlanTotals
from sparsesim.search.accuracy import (
    Evaluate,
    Fidelity,
    layer_inputs,
    masked,
    reconstruction_error,
    run_evaluate,
)
from sparsesim.search.costing import PlanCoster
from sparsesim.search.dp import LayerTable
from sparsesim.search.masks import MaskMaker, recorded_pattern
from sparsesim.search.space import (
    DEFAULT_CHANNEL_DENSITIES,
    DEFAULT_DENSITIES,
    ChannelGroup,
    Setting,
    build_space,
    candidate_patterns,
    index_groups,
    prunable_ops,
    settings,
)
from sparsesim.search.tables import unit_tables
from sparsesim.search.task import SearchTask
from sparsesim.sparsity.coupling import channel_sets
from sparsesim.sparsity.plans import Plan
from sparsesim.sparsity.records import Pattern

SIGNALS = ("fidelity", "evaluate", "reconstruction")
PlanCost = PlanTotals  # the modeled totals of a plan
DENSE_PLAN = Plan("dense")

__all__ = ["SIGNALS", "PlanCost", "SearchProblem", "SearchTask"]


def _weight_matrices(prunable: Mapping[str, Op]) -> dict[str, tuple[int, int]]:
    """Each prunable weight's N x K matrix (`prunable_ops` keeps only ops that have one)."""
    out: dict[str, tuple[int, int]] = {}
    for w, op in prunable.items():
        matrix = op.weight_matrix
        if matrix is None:
            raise SearchError(f"weight {w!r} (module {op.module!r}): no weight shape to build a mask on")
        out[w] = matrix
    return out


class SearchProblem:
    """Masks, accuracy and modeled cost of any plan in the space (see module doc)."""

    def __init__(self, workload: Workload, device: Device, *, evaluate: Evaluate,
                 fidelity: Fidelity | None = None, groups: Sequence[ChannelGroup] | None = None,
                 densities: Sequence[float] = DEFAULT_DENSITIES,
                 channel_densities: Sequence[float] = DEFAULT_CHANNEL_DENSITIES,
                 patterns: Sequence[Pattern] | None = None,
                 recovery: Callable[[nn.Module], None] | None = None,
                 calibration: Any = None, runtime: str = "", kernel: str = "") -> None:
        if workload.model is None or workload.on_meta:
            raise SearchError(f"workload {workload.name}: a search needs the real model with its weights")
        self.name = workload.name
        self.workload = workload
        self.model: nn.Module = workload.model.eval()
        self.ops = workload.ops
        self.device = device
        self.evaluate = evaluate
        self.fidelity = fidelity
        self.recovery = recovery
        self.calibration = calibration
        self.prunable = prunable_ops(self.ops)
        if not self.prunable:
            raise SearchError(f"workload {workload.name}: no linear or conv weights to prune")
        # None: the channel sets of the dataflow, the ones a uniform `channel:` plan prunes
        self.index = index_groups(channel_sets(workload) if groups is None else groups, self.prunable, self.ops)
        self.groups = dict(self.index.groups)
        self.maker = MaskMaker(self.model, _weight_matrices(self.prunable), self.index)
        self.runtime, _ = device.runtime(runtime)  # the runtime's name; raises for one the device lacks
        self.kernel = kernel
        self.coster = PlanCoster(workload, device, runtime=runtime, kernel=kernel)
        self.space = build_space(self.prunable, self.index, patterns or candidate_patterns(densities),
                                 channel_densities, self._exploits)
        self.units = [(u.name, tuple(c.label for c in u.choices)) for u in self.space.units]
        self.dense_cost = self.cost(self.space.dense_choice())
        if self.fidelity is not None:
            self.fidelity.reference(self.model)
        self.dense_accuracy = run_evaluate(self.evaluate, self.model, "evaluate (dense model)")

    def __setstate__(self, state: dict) -> None:
        # a worker receives the model once (holding the dense weights between trials)
        self.__dict__.update(state)
        self.maker.reload(self.model)

    # ------------------------------------------------------------------ plans
    def settings(self, choice: Mapping[str, str]) -> dict[str, Setting]:
        return settings(self.space, self.index, choice)

    def masks(self, choice: Mapping[str, str]) -> dict[str, Any]:
        """Full-shape bool masks of every weight the plan touches (untouched weights omitted)."""
        return self.maker.masks(self.settings(choice))

    def patterns(self, choice: Mapping[str, str]) -> dict[str, Pattern]:
        """The pattern each touched weight ends up with, as the saved plan records it."""
        return {w: recorded_pattern(s, self.maker.mask(w, s)[0])
                for w, s in self.settings(choice).items() if not s.dense}

    def plan(self, choice: Mapping[str, str], name: str | None = None) -> Plan:
        """The plan `plans.save_plan` writes and `sparsify.sparsify` reads: one rule per touched
        weight with its recorded pattern, and its real mask."""
        return self._plan(self.settings(choice), name)

    def _plan(self, sets: Mapping[str, Setting], name: str | None = None) -> Plan:
        touched = {w: s for w, s in sets.items() if not s.dense}
        masks = {w: self.maker.mask(w, s)[0] for w, s in touched.items()}
        rules = tuple((w, recorded_pattern(s, masks[w])) for w, s in touched.items())
        return Plan(name=name or f"search:{self.name}@{self.device.name}", rules=rules, masks=masks)

    # ------------------------------------------------------------------ cost
    def cost(self, choice: Mapping[str, str]) -> PlanTotals:
        """Modeled totals of a plan, through the one costing path."""
        sets = self.settings(choice)
        key = tuple(sorted((w, s) for w, s in sets.items() if not s.dense))
        return self.coster.totals(self._plan(sets) if key else DENSE_PLAN, key)

    def latency(self, choice: Mapping[str, str]) -> float:
        return self.cost(choice).latency_s

    def _exploits(self, w: str, p: Pattern) -> str | None:
        """None when `p` on weight `w` alone gains on this device; else why it is left out."""
        dense = self.coster.weight_costs(DENSE_PLAN, w)
        cand = self.coster.weight_costs(self._plan({w: Setting(p)}), w)
        lat = (sum(c.latency_s for c in dense), sum(c.latency_s for c in cand))
        gain = lat[1] < lat[0] or sum(c.energy_j for c in cand) < sum(c.energy_j for c in dense) \
            or max(c.memory_bytes for c in cand) < max(c.memory_bytes for c in dense)
        fallback = any(c.fallback for c in cand)
        why = next((c.why for c in cand if c.fallback), cand[0].why)
        # a family may flag the dense op itself as a fallback (e.g. a dtype the engine casts);
        # then only the pattern's own gain tells whether it is exploited
        if fallback and not any(c.fallback for c in dense):
            return f"{self.device.name} does not exploit it: {why}"
        if not gain or (fallback and lat[1] >= lat[0]):
            return f"no gain on {self.device.name}: {why}"
        return None

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
        """See `tables.unit_tables`."""
        return unit_tables(self, signal, progress=progress, cache=cache)
