"""Co-design search: per-layer masks that trade real accuracy against modeled cost.

    from sparsesim.search import SearchConfig, run_search
    doc = run_search(SearchConfig("digits", "xeon-sapphire-rapids", target_speedup=2.0))

Modules: task and tasks (what a workload offers a search: evaluate, calibration, channel
groups), space (units and choices a device exploits), masks (a plan's real masks), costing (a
plan costed through the one costing path, run/), accuracy (signals, masks in place, recovery),
problem (masks + accuracy + modeled cost of a plan), tables (per-unit DP tables), dp
(layer-wise knapsack), study (the Optuna study and one worker), optuna_search (the driver, local
workers), dask_workers (the same on a Dask cluster), baselines (uniform plans), runner (the
pipeline).
"""

from __future__ import annotations

_LAZY = {
    "SearchConfig": "sparsesim.search.runner",
    "run_search": "sparsesim.search.runner",
    "build_problem": "sparsesim.search.runner",
    "SearchProblem": "sparsesim.search.problem",
    "SearchTask": "sparsesim.search.task",
    "ChannelGroup": "sparsesim.search.space",
    "LayerTable": "sparsesim.search.dp",
    "solve": "sparsesim.search.dp",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparsesim.search' has no attribute {name!r}")
