"""Number formats shared by the HTML, Markdown and terminal renderings, and their inverse."""

from __future__ import annotations

import html
import math
import re
from typing import Any

_UNITS = {
    "time": ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns")),
    "energy": ((1.0, "J"), (1e-3, "mJ"), (1e-6, "µJ"), (1e-9, "nJ")),
    "bytes": ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "KB"), (1.0, "B")),
}


UNIT_FACTORS = {u: f for units in _UNITS.values() for f, u in units}


def fmt_q(value: Any, dim: str) -> str:
    """A quantity with an SI prefix and 4 significant digits (`1.234 ms`)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    v = float(value)
    for factor, unit in _UNITS[dim]:
        if abs(v) >= factor or factor == _UNITS[dim][-1][0]:
            return f"{sig(v / factor)} {unit}"
    return f"{sig(v)}"


def fmt_x(value: Any) -> str:
    if value is None or not math.isfinite(float(value)):
        return "–"
    return f"{sig(float(value))}x"


def sig(v: float, digits: int = 4) -> str:
    if v == 0:
        return "0"
    return f"{v:.{max(0, digits - 1 - math.floor(math.log10(abs(v))))}f}"


def parse_q(text: str) -> float:
    """Inverse of fmt_q / fmt_x (used by tests and by anyone reading the Markdown back)."""
    text = text.strip().replace("**", "").replace("★", "").strip()
    if text.endswith("x"):
        return float(text[:-1])
    num, _, unit = text.partition(" ")
    return float(num) * UNIT_FACTORS.get(unit, 1.0)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x))
