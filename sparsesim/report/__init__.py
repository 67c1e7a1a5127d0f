"""Hardware comparison reports: collect results (`build`), draw them (`plots`), write HTML,
Markdown and CSV (`render`). The names below load on first use, so the stage modules can import
each other without going through this package (no import cycle)."""

from __future__ import annotations

from typing import Any

_LAZY = {
    "DEFAULT_WORKLOADS": "sparsesim.report.build",
    "STANDARD_PLANS": "sparsesim.report.build",
    "ReportData": "sparsesim.report.build",
    "collect": "sparsesim.report.build",
    "resolve_devices": "sparsesim.report.build",
    "write_report": "sparsesim.report.render",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparsesim.report' has no attribute {name!r}")


__all__ = sorted(_LAZY)
