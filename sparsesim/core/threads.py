"""Run torch single-threaded for work made of many small tensor ops."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sparsesim.core.lazy import lazy_module

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")


@contextmanager
def one_thread() -> Iterator[None]:
    """Tracing a forward pass and building masks/stats are many small tensor ops: with intra-op
    threads each one pays a thread wake-up (measured ~5 ms per op on a busy 2-core machine,
    20-50x the work itself), so they run on one thread; the caller's setting is restored.
    Before torch is loaded there is no tensor work to thread (a topology file is costed from
    shapes alone), so it is not loaded for this."""
    if "torch" not in sys.modules:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def many_threads(threads: int) -> Iterator[None]:
    """Inside `one_thread`, one large op on `threads` threads (1: no change)."""
    if threads <= 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS says, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1
