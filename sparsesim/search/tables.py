"""Per-unit tables for the DP: each unit's choices costed and scored with only that unit changed."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any, Protocol

from sparsesim.search.dp import LayerTable
from sparsesim.search.space import SearchSpace


class _Problem(Protocol):
    space: SearchSpace

    def latency(self, choice: dict[str, str]) -> float: ...

    def sensitivity(self, choice: dict[str, str], signal: str) -> float: ...


def unit_tables(problem: _Problem, signal: str, *, progress: Callable[[], None] | None = None,
                cache: MutableMapping[Any, float] | None = None) -> tuple[list[LayerTable], float]:
    """Per-unit (latency, sensitivity) with only that unit changed; latencies shifted so each
    unit's fastest choice is 0, with the shift returned as the fixed part of the latency.

    `cache` shares sensitivities between problems on the same model and signal (the same
    workload on several devices): sensitivity does not depend on the device."""
    dense = problem.space.dense_choice()
    base = problem.latency(dense)
    out = []
    fixed = base
    for u in problem.space.units:
        lats, sens = [], []
        for c in u.choices:
            ch = dict(dense, **{u.name: c.label})
            lats.append(problem.latency(ch) - base)
            key = (signal, u.name, c.label)
            if c.label == "dense":
                sens.append(0.0)
            elif cache is not None and key in cache:
                sens.append(cache[key])
            else:
                sens.append(problem.sensitivity(ch, signal))
                if cache is not None:
                    cache[key] = sens[-1]
            if progress is not None:
                progress()
        lo = min(lats)
        fixed += lo
        out.append(LayerTable(u.name, tuple(c.label for c in u.choices), tuple(x - lo for x in lats),
                              tuple(sens)))
    return out, fixed
