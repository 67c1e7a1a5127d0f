"""Wheel build hook: the built-in device files and workload recipes go into the wheel as
sparsesim/_data/<dir>/, except machine-specific files a checkout may hold (a calibrated host.toml,
git-ignored), which must never become a built-in device of a wheel."""

from __future__ import annotations

from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

DATA_DIRS = ("accelerators", "workloads")
MACHINE_SPECIFIC = frozenset({"host.toml"})


class DataFilesHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        root = Path(self.root)
        for d in DATA_DIRS:
            for p in sorted((root / d).iterdir()):
                if p.is_file() and p.name not in MACHINE_SPECIFIC and not p.name.startswith("."):
                    build_data["force_include"][str(p)] = f"sparsesim/_data/{d}/{p.name}"
