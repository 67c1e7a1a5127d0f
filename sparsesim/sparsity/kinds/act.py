"""act:S and P+act:S — activation sparsity: a fraction S of the input activations of every
linear the pattern applies to are zero, alone (`act:0.5`, the weight stays dense) or on top of a
weight pattern (`2:4+act:0.5`).

Where the zeros come from does not change the count: a ReLU (measured by the tracer on real
inputs), a magnitude threshold set per layer to a target sparsity (TEAL-style), or a ReLU-fied
model. The pattern sets the op's activation density to 1 - S (or keeps a lower measured one,
`with_activation_sparsity`); hardware that skips zero activations (S4-style lanes, zero-skipping
FPGA PEs, whose device files say `skip_activation_zeros`) and activation-sparse GEMVs (TEAL on
GPUs, `act-gemv` on CPUs: the weight rows of kept input channels only) turn it into time and
energy; dense kernels (tensor cores, SIMD GEMMs) compute the zeros, and the cost's why says which.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from sparsesim.core.ir import Workload
from sparsesim.core.lazy import lazy_module
from sparsesim.sparsity.kinds.base import (
    Frame,
    PatternError,
    PatternKind,
    density_of,
    register_kind,
    sparsity_number,
)
from sparsesim.sparsity.records import LayerSparsity, Pattern, SparsityStats
from sparsesim.sparsity.stats import full_stats

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

_SPELLING = re.compile(r"(?:(.+)\+)?act:(.+)", re.ASCII)


class Activation(PatternKind):
    name = "act"
    grammar = "act:S | P+act:S"
    order = 90
    default_format = "dense"
    is_dense = True  # the weight: every one kept
    activation_only = True

    def parse(self, text: str) -> Pattern | None:
        mt = _SPELLING.fullmatch(text)
        if mt is None:
            return None
        act = density_of(sparsity_number(text, mt.group(2)))
        if mt.group(1) is None:
            return Pattern(self.name, 1.0, act=act)
        from sparsesim.sparsity.patterns import parse_pattern

        base = parse_pattern(mt.group(1))
        if base.act < 1.0 or base.spec.activation_only:
            raise PatternError(f"pattern {text!r}: activation sparsity given twice")
        if base.spec.is_dense:
            return Pattern(self.name, 1.0, act=act)
        return dataclasses.replace(base, act=act)

    def label(self, p: Pattern) -> str:
        return f"act:{1.0 - p.act:g}"

    def make(self, density: float = 1.0, *, n: int = 0, m: int = 0, block: tuple[int, int] = (1, 1)) -> Pattern:
        """`density` here is the kept fraction of activations (the weight stays dense)."""
        return Pattern(self.name, 1.0, act=super().make(density).density)

    def build_mask(self, s: torch.Tensor, p: Pattern, *, group: int, layer: str) -> torch.Tensor:
        return torch.ones_like(s, dtype=torch.bool)

    def analytic(self, p: Pattern, f: Frame) -> SparsityStats:
        return full_stats(f)


register_kind(Activation())


def with_activation_sparsity(workload: Workload, layers: Mapping[str, LayerSparsity]) -> Workload:
    """`workload` with the activation density of every op whose weight's pattern sets one: the
    pattern's kept fraction, or the measured one when that is already lower (a ReLU's zeros
    stay zeros)."""
    ops, changed = [], False
    for op in workload.ops:
        ly = layers.get(op.weight) if op.weight else None
        if ly is not None and ly.pattern.act < 1.0 and ly.pattern.act < op.activation_density:
            op = dataclasses.replace(op, activation_density=ly.pattern.act)
            changed = True
        ops.append(op)
    return dataclasses.replace(workload, ops=tuple(ops)) if changed else workload
