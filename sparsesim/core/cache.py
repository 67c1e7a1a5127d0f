"""Caches keyed by content, as explicit objects.

A cache entry is found by a digest of what the value was computed from (file bytes, mask
bytes, a plan's rules), never by a name alone, so editing a file or passing the same file
under two names behaves as expected. Each cache is an object that the code owning it creates
and may replace (e.g. by a cache that also persists entries on disk): `get` / `put` /
`get_or_make` / `clear` are the whole interface.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, Generic, TypeVar

V = TypeVar("V")


def digest(*parts: Any) -> str:
    """A hex digest of `parts`: bytes, str, numbers, None, Paths (their file contents), torch
    tensors and numpy arrays (dtype, shape and bytes), and tuples/lists of these."""
    h = hashlib.blake2b(digest_size=16)
    _feed(h, parts)
    return h.hexdigest()


def _feed(h: Any, x: Any) -> None:
    if isinstance(x, (tuple, list)):
        h.update(b"(%d" % len(x))
        for item in x:
            _feed(h, item)
        h.update(b")")
    elif isinstance(x, bytes):
        h.update(b"b%d:" % len(x) + x)
    elif isinstance(x, Path):
        _feed(h, x.read_bytes())
    elif isinstance(x, (str, int, float, bool)) or x is None:
        s = repr(x).encode()
        h.update(b"s%d:" % len(s) + s)
    elif hasattr(x, "detach") and hasattr(x, "shape"):  # a torch tensor
        t = x.detach().contiguous().cpu()
        _feed(h, (str(t.dtype), tuple(t.shape)))
        h.update(t.view(-1).view(_byte_dtype()).numpy().tobytes() if t.numel() else b"")
    elif hasattr(x, "tobytes") and hasattr(x, "shape"):  # a numpy array
        _feed(h, (str(x.dtype), tuple(x.shape)))
        h.update(x.tobytes())
    else:
        raise TypeError(f"digest: cannot hash a {type(x).__name__}")


def tensor_state(t: Any) -> tuple[int, int, int]:
    """Names a live tensor's current contents without reading them: (object id, data pointer,
    version). torch increments a tensor's version on every in-place write, so the key changes
    when the values may have; valid only while the tensor is alive (keep it referenced)."""
    return (id(t), int(t.data_ptr()), int(t._version))


def _byte_dtype() -> Any:
    import torch

    return torch.uint8


class ContentCache(Generic[V]):
    """A bounded in-memory map from content keys to values, least recently used evicted first.

    `max_entries=None` keeps everything (for small values such as per-layer records)."""

    def __init__(self, name: str, max_entries: int | None = None) -> None:
        self.name = name
        self.max_entries = max_entries
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> V | None:
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return value

    def put(self, key: Hashable, value: V) -> V:
        self._items[key] = value
        self._items.move_to_end(key)
        while self.max_entries is not None and len(self._items) > self.max_entries:
            self._items.popitem(last=False)
        return value

    def get_or_make(self, key: Hashable, make: Callable[[], V]) -> V:
        value = self.get(key)
        return self.put(key, make()) if value is None else value

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __repr__(self) -> str:
        return f"ContentCache({self.name!r}, {len(self)} entries, {self.hits} hits, {self.misses} misses)"
