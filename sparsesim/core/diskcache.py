"""A content-keyed cache on disk, shared by every run on this machine: traced workloads and costed
tables survive the process, so a repeated `compare` neither retraces nor re-masks nor re-costs.

An entry's key is a digest of everything its value was computed from (the caller's parts: spec,
recipe and device file bytes, plans) plus `code_version()`: the sparsesim sources and the versions
of the libraries that shape a trace. Editing any of these misses; nothing is ever invalidated by
hand. Entries live under the user cache directory ($SPARSESIM_CACHE, else platformdirs'), one
file each, written atomically (`core.atomic`: concurrent writers of one key each replace the file
whole; a reader sees the old entry or the new one). A file carries a digest of its payload: a
truncated or altered entry is dropped with a warning and recomputed, never an error. The total
size is bounded (least recently used files go first). $SPARSESIM_NO_CACHE=1 (or `--no-cache`)
turns the cache off. Entries are pickles: the directory is the user's own, trusted as their code.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sparsesim.core import atomic
from sparsesim.core.cache import digest
from sparsesim.core.errors import SparsesimWarning

ROOT_ENV = "SPARSESIM_CACHE"
OFF_ENV = "SPARSESIM_NO_CACHE"
MAX_BYTES_ENV = "SPARSESIM_CACHE_MAX_BYTES"
DEFAULT_MAX_BYTES = 2 << 30  # 2 GiB: a few hundred costed tables, a few dozen traced 405B-class workloads
MAGIC = b"sparsesim-cache-1\n"
_SUM_BYTES = 32
SUFFIX = ".pkl"
# libraries whose version changes what a trace or a cost table holds
LIBRARIES = ("torch", "transformers", "numpy", "pandas", "scipy")

T = TypeVar("T")
_code_version: str | None = None


def enabled() -> bool:
    return os.environ.get(OFF_ENV, "").strip().lower() not in ("1", "true", "yes")


def disable() -> None:
    """Turn the cache off for this process and its children (`--no-cache`)."""
    os.environ[OFF_ENV] = "1"


def root() -> Path:
    """$SPARSESIM_CACHE, else the platform's user cache directory for sparsesim."""
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("sparsesim", appauthor=False))


def max_bytes() -> int:
    try:
        return int(os.environ.get(MAX_BYTES_ENV, DEFAULT_MAX_BYTES))
    except ValueError:
        return DEFAULT_MAX_BYTES


def code_version() -> str:
    """A digest of the sparsesim sources and of the library versions: any edit to either misses.
    A source file counts by its size and modification time, as Python's own bytecode cache
    checks it (an edit changes both; reading every file's bytes cost a cold run ~10 ms)."""
    global _code_version
    if _code_version is None:
        import sparsesim

        libs = tuple((name, installed_version(name)) for name in LIBRARIES)
        _code_version = digest(sparsesim.__version__, sys.version, libs, source_stamps(Path(sparsesim.__file__).parent))
    return _code_version


def source_stamps(root: Path) -> tuple[tuple[str, int, int], ...]:
    """(path under `root`, size, modification time in ns) of every Python file below `root`."""
    files = sorted(root.rglob("*.py"))
    return tuple((str(f.relative_to(root)), st.st_size, st.st_mtime_ns) for f, st in zip(files, map(Path.stat, files)))


def installed_version(name: str) -> str | None:
    """The version of the installed distribution `name` (None when absent), read off the name of
    its `.dist-info` folder beside the package, without importing it: importlib.metadata takes
    ~40 ms to import (an email parser), a third of a warm run. A package installed another way
    (no dist-info beside it) falls back to importlib.metadata."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return None
    site = Path(spec.origin).parent.parent
    found = sorted(site.glob(f"{name}-*.dist-info"))
    if len(found) == 1:
        return found[0].name[len(name) + 1:-len(".dist-info")]
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def key(kind: str, *parts: Any) -> str:
    """The entry key of `parts` (see `cache.digest` for what they may be) under this code version."""
    return digest(kind, code_version(), parts)


@dataclass(frozen=True)
class Entry:
    kind: str
    path: Path
    bytes: int


def _path(kind: str, k: str) -> Path:
    return root() / kind / k[:2] / (k + SUFFIX)


def get(kind: str, k: str) -> Any | None:
    """The value stored under (kind, key), or None: absent, cache off, or a bad entry (dropped
    with a warning)."""
    if not enabled():
        return None
    path = _path(kind, k)
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        warnings.warn(f"cache entry {path}: unreadable ({e.strerror or e}); recomputing", SparsesimWarning,
                      stacklevel=2)
        return None
    try:
        if not data.startswith(MAGIC):
            raise ValueError("not a sparsesim cache file")
        body = data[len(MAGIC):]
        total, payload = body[:_SUM_BYTES], body[_SUM_BYTES:]
        if hashlib.blake2b(payload, digest_size=_SUM_BYTES).digest() != total:
            raise ValueError("its checksum does not match (truncated or altered)")
        value = pickle.loads(payload)
    except Exception as e:
        warnings.warn(f"cache entry {path} is corrupt ({e}); dropped and recomputed", SparsesimWarning,
                      stacklevel=2)
        path.unlink(missing_ok=True)
        return None
    try:
        os.utime(path)  # least recently used goes first when the cache outgrows its bound
    except OSError:
        pass
    return value


def put(kind: str, k: str, value: T) -> T:
    """Store `value` under (kind, key) atomically; a full or read-only disk costs only the entry
    (a warning), and the cache is trimmed to its bound."""
    if not enabled():
        return value
    path = _path(kind, k)
    try:
        payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(path, MAGIC + hashlib.blake2b(payload, digest_size=_SUM_BYTES).digest() + payload)
    except OSError as e:
        warnings.warn(f"cache entry {path}: cannot write ({e.strerror or e}); continuing without it",
                      SparsesimWarning, stacklevel=2)
        return value
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        warnings.warn(f"cache: a {kind} value cannot be stored ({e}); continuing without it", SparsesimWarning,
                      stacklevel=2)
        return value
    trim(max_bytes())
    return value


def named_file(text: str) -> tuple[str, Path | None]:
    """An argument as a key part: the text, and the file it names when it names one (a plan or
    recipe file is keyed by its bytes, so an edited file misses)."""
    path = Path(text.strip())
    return text, path if path.suffix and path.is_file() else None


Caught = list[tuple[type[Warning], str]]


def recording(make: Callable[[], T]) -> tuple[T, Caught]:
    """make() and the warnings it raised (shown now, and stored with a cached value so a warm run
    shows them too)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = make()
    out = [(w.category, str(w.message)) for w in caught]
    replay(out)
    return value, out


def replay(caught: Caught) -> None:
    for category, message in caught:
        warnings.warn(message, category, stacklevel=3)


def remembered(kind: str, k: str | None, make: Callable[[], T], valid: Callable[[Any], bool]) -> T:
    """make()'s value, or the one stored under (kind, key) when `valid` accepts it (key None: not
    cacheable), with the warnings make() raised replayed either way: a warm run says what the
    cold one said."""
    if k is not None:
        found = get(kind, k)
        if isinstance(found, tuple) and len(found) == 2 and valid(found[0]):
            replay(found[1])
            return found[0]
    value, caught = recording(make)
    if k is not None:
        put(kind, k, (value, caught))
    return value


def entries() -> list[Entry]:
    """Every entry on disk (kinds are the first-level folders; other files there are not ours)."""
    base = root()
    out: list[Entry] = []
    if not base.is_dir():
        return out
    for kind_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        for f in kind_dir.glob("*/*" + SUFFIX):
            try:
                out.append(Entry(kind_dir.name, f, f.stat().st_size))
            except FileNotFoundError:  # removed by a concurrent trim or clear
                continue
    return out


def trim(limit: int) -> int:
    """Remove least recently used entries until the cache holds at most `limit` bytes; return
    how many were removed."""
    found = entries()
    total = sum(e.bytes for e in found)
    if total <= limit:
        return 0

    def used(e: Entry) -> float:
        try:
            return e.path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    removed = 0
    for e in sorted(found, key=used):
        if total <= limit:
            break
        e.path.unlink(missing_ok=True)
        total -= e.bytes
        removed += 1
    return removed


def clear() -> int:
    """Remove every entry (not the other files in the directory); return how many."""
    found = entries()
    for e in found:
        e.path.unlink(missing_ok=True)
    return len(found)
