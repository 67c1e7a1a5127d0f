"""Plain-text rendering of result rows: SI numbers, ratios, fixed-width tables, the memory-fit
line. Standard library only, so a verb can print a cached document without importing the
costing stack (torch, pandas)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def fmt_si(value: float | None, unit: str) -> str:
    """A number with an SI prefix: 0.00123 s -> '1.23 ms'."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-" if value is None else str(value)
    v = float(value)
    if v == 0:
        return f"0 {unit}"
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""),
                           (1e-3, "m"), (1e-6, "u"), (1e-9, "n"), (1e-12, "p")):
        if abs(v) >= factor:
            return f"{v / factor:.3g} {prefix}{unit}"
    return f"{v:.3g} {unit}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}x"


def text_table(rows: Sequence[Sequence[Any]], headers: Sequence[str], *, indent: str = "") -> str:
    """Left-aligned fixed-width columns; the last column is not padded."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r)]
        lines.append(indent + "  ".join(parts).rstrip())
    return "\n".join(lines)


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def fit_text(need_bytes: float, capacity_bytes: float | None, fits: bool | None) -> str:
    """'does not fit: 137 GB > 80 GB' (empty when it fits or the capacity is unknown)."""
    if fits is None or fits or capacity_bytes is None:
        return ""
    return f"does not fit: {_size(need_bytes)} > {_size(capacity_bytes)}"


def _size(b: float) -> str:
    for factor, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if b >= factor:
            return f"{b / factor:.3g} {unit}"
    return f"{b:.0f} B"


def fit_note(row: Mapping[str, Any]) -> str:
    """'does not fit: 137 GB > 80 GB' for a result row that does not fit, else ''."""
    cap = row.get("memory_capacity_bytes")
    cap = None if cap is None or (isinstance(cap, float) and not math.isfinite(cap)) else float(cap)
    fits = row.get("fits")
    return fit_text(float(row.get("memory_need_bytes") or 0.0), cap, None if fits is None else bool(fits))


def fmt_fit(row: Mapping[str, Any]) -> str:
    """The device-memory line of a result: 'needs 13.5 GB of 80 GB', or the does-not-fit flag."""
    note = fit_note(row)
    if note:
        return f"{note.upper()} (weights + inputs/KV cache + activations; this latency is not achievable on one device)"
    need = fmt_si(row.get("memory_need_bytes"), "B")
    cap = row.get("memory_capacity_bytes")
    if cap is None or (isinstance(cap, float) and not math.isfinite(cap)):
        return f"needs {need} (weights + inputs/KV cache + activations); the device file gives no capacity"
    return f"needs {need} of {fmt_si(cap, 'B')} (weights + inputs/KV cache + activations)"
