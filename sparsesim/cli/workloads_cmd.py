"""`sparsesim workloads`: the built-in workload recipes, their descriptions and parameters."""

from __future__ import annotations

import argparse
from typing import Any

NAME = "workloads"
HELP = "list the built-in workload recipes with their parameters"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("A workload is a recipe name with parameters (bert-base:batch=16,seq=384), a recipe "
                     ".toml file, a single op (gemm:M=4096,N=4096,K=4096,dtype=bf16), or module:factory.")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sparsesim.tracing.workloads import list_recipes

    return {"recipes": list_recipes()}


def render(doc: dict[str, Any]) -> str:
    lines = []
    for r in doc["recipes"]:
        params = ",".join(f"{k}={v}" for k, v in r["params"].items())
        lines.append(f"{r['name']}\n    {r['description']}\n    params: {params}")
    lines.append("")
    lines.append("use as: sparsesim trace NAME[:key=value,...]")
    return "\n".join(lines)
