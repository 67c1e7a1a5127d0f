"""Stage 2: patterns, masks, stats, formats and plans turn a Workload into a SparseWorkload."""

import importlib
import pkgutil

from sparsesim.sparsity import kinds as _kinds


def _register_all() -> None:
    """Import every pattern-kind module (each registers itself), in their declared order."""
    names = [m.name for m in pkgutil.iter_modules(_kinds.__path__) if m.name != "base"]
    for name in names:
        importlib.import_module(f"{_kinds.__name__}.{name}")


_register_all()
