"""The stages import one way: no import cycle among sparsesim's modules, and no stage imports a
later one at module level. Shows the graph a reviewer would check with

    python -m pytest tests/test_import_graph.py -q
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PKG = Path(__file__).resolve().parent.parent / "sparsesim"

# earlier stages first; a module may import its own stage or an earlier one at module level
STAGES = ["core", "tracing", "sparsity", "hw", "cost", "runtime", "run", "fidelity", "train", "search", "report",
          "cli"]


def _modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        parts = f.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _graph() -> nx.DiGraph:
    mods = _modules()
    g = nx.DiGraph()
    g.add_nodes_from(mods)
    for name, f in mods.items():
        for node in ast.parse(f.read_text()).body:  # module level: what runs on import
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name and t.startswith("sparsesim"):
                    g.add_edge(name, t)
                    break
    return g


def test_no_import_cycle():
    cycles = [sorted(c) for c in nx.strongly_connected_components(_graph()) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def test_stages_import_one_way():
    back = []
    for a, b in _graph().edges:
        sa, sb = _stage(a), _stage(b)
        if sa and sb and STAGES.index(sb) > STAGES.index(sa):
            back.append(f"{a} -> {b}")
    assert not back, "a stage imports a later one:\n" + "\n".join(sorted(back))


@pytest.mark.parametrize("module", ["sparsesim.cost.families.gpu", "sparsesim.report.render", "sparsesim.tracing"])
def test_a_stage_module_imports_first(module):
    """Importing a module before its package's siblings works (what a cycle would break)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
