"""What a workload spec is made of, read without building it: the built-in recipe files, the
single-op specs, and `spec_source` (the bytes a trace of the spec depends on, for cache keys).
Standard library only, so a cached result can be found without importing torch."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from sparsesim.core.errors import WorkloadError
from sparsesim.core.packaged import builtin_dirs, builtin_files

SINGLE_OPS = ("gemm", "conv")


def builtin_recipe_dirs() -> list[Path]:
    """Packaged recipes (wheel install) or the repository's workloads/ (checkout)."""
    return builtin_dirs("workloads")


def builtin_recipe_files() -> dict[str, Path]:
    """Recipe name (file stem) -> file, the first directory winning."""
    return builtin_files(builtin_recipe_dirs())


def spec_source(spec: str) -> tuple[Any, ...] | None:
    """What a spec's trace is made from besides the sparsesim code and library versions (see
    `core.diskcache`): the spec, its recipe file's bytes and, for a builder outside sparsesim, its
    module's source. None when that cannot be named (a user factory may read anything), so the
    trace is not cached."""
    spec = spec.strip()
    head = spec.partition(":")[0]
    if head in SINGLE_OPS:
        return (spec,)
    if head.lower().endswith(".csv"):  # a SCALE-Sim topology file: its bytes are the whole input
        try:
            return (spec, str(Path(head).resolve()), Path(head).read_bytes())
        except OSError:
            return None  # load_workload reports it
    if head.endswith(".toml"):
        path = Path(head)
    else:
        path = builtin_recipe_files().get(head)  # type: ignore[assignment]
        if path is None:
            return None
    try:
        data = path.read_bytes()
        builder = str(tomllib.loads(data.decode()).get("builder", ""))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None  # load_workload reports it
    module = builder.partition(":")[0]
    extra: Any = None
    if module and not module.startswith("sparsesim."):
        import importlib.util

        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            return None
        if found is None or not found.origin or not Path(found.origin).is_file():
            return None
        extra = Path(found.origin)
    return (spec, str(path.resolve()), data, extra)


def spec_key(kind: str, spec: Any, *parts: Any) -> str | None:
    """The disk-cache key of a value computed from workload `spec` (and `parts`): None when the
    cache is off or the spec's sources cannot be named (an object, a user factory)."""
    from sparsesim.core import diskcache

    source = spec_source(spec) if isinstance(spec, str) and diskcache.enabled() else None
    return None if source is None else diskcache.key(kind, source, *parts)


def parse_params(text: str, *, where: str) -> dict[str, str]:
    """`a=1,b=x` -> {'a': '1', 'b': 'x'}; a malformed item names the spec."""
    out: dict[str, str] = {}
    if not text.strip():
        return out
    for item in text.split(","):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not value:
            raise WorkloadError(f"{where}: parameter {item.strip()!r} is not key=value")
        if key in out:
            raise WorkloadError(f"{where}: parameter {key!r} given twice")
        out[key] = value
    return out
