"""Data files: built-in ones (device files in accelerators/, workload recipes in workloads/),
packaged into the wheel as sparsesim/_data/<dir> or read from the repository checkout; and the
user's own (calibrated devices), in the user config directory."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

# overrides the user config directory (tests, shared machines)
CONFIG_ENV = "SPARSESIM_CONFIG_DIR"


def checkout_dir() -> Path | None:
    """The repository checkout this package runs from (an editable install or PYTHONPATH), or
    None for an installed copy."""
    repo = Path(__file__).resolve().parents[2]
    return repo if (repo / "pyproject.toml").is_file() and (repo / "sparsesim").is_dir() else None


def builtin_dirs(name: str) -> list[Path]:
    """The packaged `_data/<name>` (wheel install) and the repository's `<name>/` (checkout), in
    that order, where they exist."""
    dirs = []
    packaged = resources.files("sparsesim").joinpath("_data", name)
    if packaged.is_dir():
        dirs.append(Path(str(packaged)))
    root = checkout_dir()
    if root is not None and (root / name).is_dir():
        dirs.append(root / name)
    return dirs


def builtin_files(dirs: list[Path]) -> dict[str, Path]:
    """File stem -> .toml file in `dirs`, the first directory winning."""
    found: dict[str, Path] = {}
    for d in dirs:
        for p in sorted(d.glob("*.toml")):
            found.setdefault(p.stem, p)
    return found


def user_config_dir() -> Path:
    """$SPARSESIM_CONFIG_DIR, else the platform's user config directory for sparsesim
    (~/.config/sparsesim on Linux): it survives reinstalls and works from a wheel install."""
    root = os.environ.get(CONFIG_ENV)
    if root:
        return Path(root)
    from platformdirs import user_config_path

    return user_config_path("sparsesim", appauthor=False)


def user_device_dir() -> Path:
    """Where `sparsesim calibrate` writes device files and where user devices are found by name."""
    return user_config_dir() / "accelerators"
