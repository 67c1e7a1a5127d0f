"""`sparsesim cache info|clear`: where the on-disk cache of traces and costed tables is, what it
holds, and emptying it (see `sparsesim.core.diskcache`)."""

from __future__ import annotations

import argparse
from typing import Any

NAME = "cache"
HELP = "show (info) or empty (clear) the on-disk cache of traced workloads and costed tables"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=("info", "clear"), default="info",
                        help="info (default): location, entries and size per kind; clear: remove every entry")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sparsesim.core import diskcache

    removed = diskcache.clear() if args.action == "clear" else 0
    kinds: dict[str, dict[str, int]] = {}
    for e in diskcache.entries():
        k = kinds.setdefault(e.kind, {"entries": 0, "bytes": 0})
        k["entries"] += 1
        k["bytes"] += e.bytes
    return {"path": str(diskcache.root()), "enabled": diskcache.enabled(), "max_bytes": diskcache.max_bytes(),
            "removed": removed, "kinds": kinds,
            "entries": sum(k["entries"] for k in kinds.values()), "bytes": sum(k["bytes"] for k in kinds.values())}


def render(doc: dict[str, Any]) -> str:
    lines = [f"cache: {doc['path']}" + ("" if doc["enabled"] else " (off: SPARSESIM_NO_CACHE is set)")]
    if doc["removed"]:
        lines.append(f"removed {doc['removed']} entries")
    lines.append(f"{doc['entries']} entries, {fmt_si(doc['bytes'], 'B')} of at most {fmt_si(doc['max_bytes'], 'B')}")
    for kind, k in sorted(doc["kinds"].items()):
        lines.append(f"  {kind}: {k['entries']} entries, {fmt_si(k['bytes'], 'B')}")
    return "\n".join(lines)


def fmt_si(n: float, unit: str) -> str:
    """1234567 -> '1.23 MB' (here rather than run.results, so this verb stays light)."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= factor:
            return f"{n / factor:.3g} {prefix}{unit}"
    return f"{n:g} {unit}"
