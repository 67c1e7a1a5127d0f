"""Hardware comparison reports: collect results (`build`), draw them (`plots`), write HTML,
Markdown and CSV (`render`)."""

from __future__ import annotations

from sparsesim.report.build import DEFAULT_WORKLOADS, STANDARD_PLANS, ReportData, collect, resolve_devices
from sparsesim.report.render import write_report

__all__ = ["DEFAULT_WORKLOADS", "STANDARD_PLANS", "ReportData", "collect", "resolve_devices", "write_report"]
