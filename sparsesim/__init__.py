"""sparsesim: what a sparsity pattern buys on real hardware, and what it costs in accuracy."""

from __future__ import annotations

__version__ = "0.1.0"

# The API functions named like their modules are bound eagerly: a lazy attribute would be
# shadowed by the submodule itself once `sparsesim.estimate` / `sparsesim.simulate` is imported.
from sparsesim.estimate import compare, estimate  # noqa: E402
from sparsesim.simulate import simulate  # noqa: E402


def __getattr__(name: str):
    # the rest load on first use
    lazy = {
        "trace": ("sparsesim.tracer", "trace"),
        "load_workload": ("sparsesim.workloads", "load_workload"),
        "Plan": ("sparsesim.plans", "Plan"),
        "sparsify": ("sparsesim.plans", "sparsify"),
        "load_plan": ("sparsesim.plans", "load_plan"),
        "apply_plan": ("sparsesim.plans", "apply_plan"),
        "save_plan": ("sparsesim.plans", "save_plan"),
        "parse_pattern": ("sparsesim.patterns", "parse_pattern"),
        "build_mask": ("sparsesim.masks", "build_mask"),
        "measure_stats": ("sparsesim.stats", "measure_stats"),
        "load_device": ("sparsesim.devices", "load_device"),
        "validate_gpu_published": ("sparsesim.gpu_validation", "validate_gpu_published"),
        "run_search": ("sparsesim.search.runner", "run_search"),
    }
    if name in lazy:
        import importlib

        mod, attr = lazy[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'sparsesim' has no attribute {name!r}")
