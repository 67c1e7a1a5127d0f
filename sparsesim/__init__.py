"""sparsesim: what a sparsity pattern buys on real hardware, and what it costs in accuracy."""

from __future__ import annotations

__version__ = "0.1.0"


# the stage packages, importable as attributes of the package without importing them first
_STAGES = ("core", "tracing", "sparsity", "hw", "cost", "runtime", "run", "train", "fidelity", "search", "report")


def __getattr__(name: str):
    # every API function loads on first use, so `import sparsesim` (and `sparsesim --help`) does
    # not import torch, pandas or scipy; each is bound here once loaded
    lazy = {
        "compare": ("sparsesim.run.estimate", "compare"),
        "estimate": ("sparsesim.run.estimate", "estimate"),
        "simulate": ("sparsesim.run.simulate", "simulate"),
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
    import importlib

    if name in lazy:
        mod, attr = lazy[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    if name in _STAGES:  # `sparsesim.train.train(...)` after a bare `import sparsesim`
        return importlib.import_module(f"sparsesim.{name}")
    raise AttributeError(f"module 'sparsesim' has no attribute {name!r}")
