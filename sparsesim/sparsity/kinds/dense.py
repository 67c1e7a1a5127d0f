"""dense: every weight kept."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sparsesim.core.lazy import lazy_module
from sparsesim.sparsity.kinds.base import Frame, PatternKind, register_kind
from sparsesim.sparsity.records import DENSE, Pattern, SparsityStats
from sparsesim.sparsity.stats import full_stats

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")


class Dense(PatternKind):
    name = "dense"
    grammar = "dense"
    order = 0
    default_format = "dense"
    is_dense = True

    def parse(self, text: str) -> Pattern | None:
        return DENSE if text == "dense" else None

    def label(self, p: Pattern) -> str:
        return "dense"

    def make(self, density: float = 1.0, *, n: int = 0, m: int = 0, block: tuple[int, int] = (1, 1)) -> Pattern:
        return DENSE

    def build_mask(self, s: torch.Tensor, p: Pattern, *, group: int, layer: str) -> torch.Tensor:
        return torch.ones_like(s, dtype=torch.bool)

    def analytic(self, p: Pattern, f: Frame) -> SparsityStats:
        return full_stats(f)


register_kind(Dense())
