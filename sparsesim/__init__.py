"""sparsesim: what a sparsity pattern buys on real hardware, and what it costs in accuracy."""

from __future__ import annotations

__version__ = "0.1.0"

# The API functions named like their modules are bound eagerly: a lazy attribute would be
# shadowed by the submodule itself once `sparsesim.run.estimate` / `sparsesim.run.simulate` is imported.
from sparsesim.run.estimate import compare as compare
from sparsesim.run.estimate import estimate as estimate
from sparsesim.run.simulate import simulate as simulate


def __getattr__(name: str):
    # the rest load on first use
    lazy = {
        "trace": ("sparsesim.tracing.tracer", "trace"),
        "load_workload": ("sparsesim.tracing.workloads", "load_workload"),
        "Plan": ("sparsesim.sparsity.plans", "Plan"),
        "sparsify": ("sparsesim.sparsity.sparsify", "sparsify"),
        "load_plan": ("sparsesim.sparsity.plans", "load_plan"),
        "apply_plan": ("sparsesim.sparsity.sparsify", "apply_plan"),
        "save_plan": ("sparsesim.sparsity.plans", "save_plan"),
        "parse_pattern": ("sparsesim.sparsity.patterns", "parse_pattern"),
        "build_mask": ("sparsesim.sparsity.masks", "build_mask"),
        "measure_stats": ("sparsesim.sparsity.stats", "measure_stats"),
        "load_device": ("sparsesim.hw.devices", "load_device"),
        "validate_gpu_published": ("sparsesim.fidelity.gpu_validation", "validate_gpu_published"),
        "run_search": ("sparsesim.search.runner", "run_search"),
    }
    if name in lazy:
        import importlib

        mod, attr = lazy[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'sparsesim' has no attribute {name!r}")
