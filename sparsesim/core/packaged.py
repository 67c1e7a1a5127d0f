"""Built-in data files (device files in accelerators/, workload recipes in workloads/): packaged
into the wheel as sparsesim/_data/<dir>, or read from the repository checkout."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def builtin_dirs(name: str) -> list[Path]:
    """The packaged `_data/<name>` (wheel install) and the repository's `<name>/` (checkout), in
    that order, where they exist."""
    dirs = []
    packaged = resources.files("sparsesim").joinpath("_data", name)
    if packaged.is_dir():
        dirs.append(Path(str(packaged)))
    repo = Path(__file__).resolve().parents[2] / name
    if repo.is_dir():
        dirs.append(repo)
    return dirs


def builtin_files(dirs: list[Path]) -> dict[str, Path]:
    """File stem -> .toml file in `dirs`, the first directory winning."""
    found: dict[str, Path] = {}
    for d in dirs:
        for p in sorted(d.glob("*.toml")):
            found.setdefault(p.stem, p)
    return found
