"""Tables keyed by torch operator packets, declared by name so that importing them needs no torch.

The formula registry (`tracing.flops`) and the dataflow rules (`tracing.dataflow`) are filled
at import time by decorators naming aten ops. Their modules are imported by every costing path
(a topology file's, a single op's), most of which never look an op up. Naming `aten.mm` here
records the name only; a table resolves its names to torch's packet objects
(`torch.ops.aten.mm`) the first time it is looked up, i.e. when something is traced or shrunk.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from sparsesim.core.lazy import lazy_module

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

V = TypeVar("V")


class OpName(NamedTuple):
    """An operator packet by name: `torch.ops.<ns>.<name>`."""

    ns: str
    name: str

    def resolve(self) -> Any:
        return getattr(getattr(torch.ops, self.ns), self.name)


class OpNamespace:
    """`aten.mm` is `OpName("aten", "mm")`: spelled as torch spells `torch.ops.aten.mm`."""

    def __init__(self, ns: str) -> None:
        self._ns = ns

    def __getattr__(self, name: str) -> OpName:
        if name.startswith("__"):
            raise AttributeError(name)
        return OpName(self._ns, name)


aten = OpNamespace("aten")
quantized = OpNamespace("quantized")


class OpTable(Generic[V]):
    """packet -> value, filled by name; resolved (importing torch) on first lookup."""

    def __init__(self) -> None:
        self._named: list[tuple[OpName, V]] = []
        self._table: dict[Any, V] | None = None

    def add(self, names: Iterable[OpName], value: V) -> None:
        self._named.extend((n, value) for n in names)
        self._table = None

    def table(self) -> dict[Any, V]:
        """The table keyed by torch's packet objects (built once, after the last `add`)."""
        if self._table is None:
            self._table = {n.resolve(): v for n, v in self._named}
        return self._table


class OpSet:
    """A frozen set of packets, named; resolved on first membership test."""

    def __init__(self, names: Iterable[OpName]) -> None:
        self._names = tuple(names)
        self._set: frozenset[Any] | None = None

    def __contains__(self, packet: object) -> bool:
        if self._set is None:
            self._set = frozenset(n.resolve() for n in self._names)
        return packet in self._set
