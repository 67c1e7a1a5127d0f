"""Modeled cost of a searched plan: the plan is sparsified by `sparsify.sparsify` and costed by
`run.estimate.cost_workload`, the same two steps `estimate` and `compare` take, in the same
whole-model run context. The speedups a search reports are therefore the ones `compare` prints
for the plan it saves.

Sparsifying many plans that share masks is cheap: each weight's record is kept by the content
of its mask (`layers`), and op costs by what the cost model reads (`memo`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from sparsesim.core.cache import ContentCache
from sparsesim.core.ir import Op, Workload
from sparsesim.cost.record import Cost
from sparsesim.hw.devices import Device
from sparsesim.run.estimate import cost_workload
from sparsesim.run.results import PlanTotals, plan_totals
from sparsesim.sparsity.plans import Plan
from sparsesim.sparsity.sparsify import sparsify

# whole-plan totals kept per process: a DP table asks for each one-unit change a few times
TOTALS_CACHE = 4096
# op costs kept before starting afresh (each plan's run context is its own key)
MEMO_SIZE = 100_000


class PlanCoster:
    """Costs of plans of one workload on one device under one runtime ("" = the device's
    default) with `kernel` forced where it applies ("" = the runtime picks), through the one
    costing path."""

    def __init__(self, workload: Workload, device: Device, *, runtime: str = "", kernel: str = "") -> None:
        self.workload = workload
        self.device = device
        self.runtime = runtime
        self.kernel = kernel
        self._fresh()

    def _fresh(self) -> None:
        self.layers: ContentCache[Any] = ContentCache("layer records")
        self.memo: dict[tuple, Cost] = {}
        self.totals_cache: ContentCache[PlanTotals] = ContentCache("plan totals", TOTALS_CACHE)
        self._recent: ContentCache[tuple[Plan, Sequence[Op], list[Cost]]] = ContentCache("recent plans", 2)

    def __getstate__(self) -> dict:
        return {"workload": self.workload, "device": self.device, "runtime": self.runtime, "kernel": self.kernel}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._fresh()

    def costs(self, plan: Plan) -> tuple[Sequence[Op], list[Cost]]:
        """The ops of the sparsified workload under `plan` and one Cost per op."""
        sw = sparsify(self.workload, plan, cache=self.layers)
        if len(self.memo) > MEMO_SIZE:
            self.memo.clear()
        return sw.ops, cost_workload(sw, self.device, runtime=self.runtime, kernel=self.kernel, memo=self.memo)

    def totals(self, plan: Plan, key: Hashable) -> PlanTotals:
        """Latency, energy, footprint and fallbacks of `plan`; `key` names the plan's content."""
        return self.totals_cache.get_or_make(key, lambda: plan_totals(*self.costs(plan)))

    def weight_costs(self, plan: Plan, weight: str) -> list[Cost]:
        """The costs of the ops that read `weight` under `plan` (the two latest plans' are
        kept: a space is built by asking about the dense plan and one candidate at a time)."""
        hit = self._recent.get(id(plan))
        if hit is None:
            hit = self._recent.put(id(plan), (plan, *self.costs(plan)))  # holds the plan: its id stays its own
        _, ops, costs = hit
        return [c for op, c in zip(ops, costs) if op.weight == weight]
