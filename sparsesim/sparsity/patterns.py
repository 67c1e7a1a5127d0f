"""Parse the spelling of a sparsity pattern (`dense`, `2:4`, `unstructured:0.9`, `block4x4:0.5`,
`channel:0.5`) into a `Pattern`, so plans, the CLI and searches share one grammar.

The number after the colon is the *sparsity* (fraction removed) in [0, 1); `Pattern.density`
is the kept fraction. Densities are rounded to 12 decimals so `parse_pattern(p.label) == p`
for every pattern spelled with up to six significant digits.
"""

from __future__ import annotations

import re

from sparsesim.core.errors import PlanError
from sparsesim.sparsity.records import DENSE, Pattern

# rounding applied to 1 - sparsity so that label -> parse -> label is stable
_DENSITY_DECIMALS = 12

_NM = re.compile(r"^(\d+):(\d+)$")
_BLOCK = re.compile(r"^block(\d+)x(\d+):(.+)$")
_RATIO = re.compile(r"^(unstructured|channel):(.+)$")

GRAMMAR = "dense | N:M (N < M) | unstructured:S | blockRxC:S | channel:S  (S = sparsity in [0, 1))"


class PatternError(PlanError, ValueError):
    """A pattern spelling that is not in the grammar (also a ValueError, for argparse)."""


def _sparsity(text: str, raw: str) -> float:
    try:
        s = float(raw)
    except ValueError:
        raise PatternError(f"pattern {text!r}: sparsity {raw!r} is not a number; expected {GRAMMAR}") from None
    if not (0.0 <= s < 1.0):
        raise PatternError(f"pattern {text!r}: sparsity {s:g} must be in [0, 1) (it is the fraction removed)")
    return s


def _density(sparsity: float) -> float:
    return round(1.0 - sparsity, _DENSITY_DECIMALS)


def nm_pattern(n: int, m: int) -> Pattern:
    """An N:M pattern (keep at most n of every m consecutive weights along K)."""
    if not (0 < n < m):
        raise PatternError(f"pattern '{n}:{m}': need 0 < N < M")
    return Pattern("nm", round(n / m, _DENSITY_DECIMALS), n=n, m=m)


def make_pattern(kind: str, density: float = 1.0, *, n: int = 0, m: int = 0,
                 block: tuple[int, int] = (1, 1)) -> Pattern:
    """Build a validated Pattern from parts (what a search uses instead of a string)."""
    if kind == "dense":
        return DENSE
    if kind == "nm":
        return nm_pattern(n, m)
    if kind not in ("unstructured", "block", "channel"):
        raise PatternError(f"pattern kind {kind!r} is not one of dense, nm, unstructured, block, channel")
    if not (0.0 < density <= 1.0):
        raise PatternError(f"pattern {kind}: density {density:g} must be in (0, 1]")
    if kind == "block":
        r, c = block
        if r < 1 or c < 1:
            raise PatternError(f"pattern block{r}x{c}: block sides must be >= 1")
        return Pattern("block", round(density, _DENSITY_DECIMALS), block=(int(r), int(c)))
    return Pattern(kind, round(density, _DENSITY_DECIMALS))


def parse_pattern(text: str | Pattern) -> Pattern:
    """Parse a pattern spelling; raise PatternError naming the text on anything else."""
    if isinstance(text, Pattern):
        return text
    if not isinstance(text, str):
        raise PatternError(f"pattern {text!r} is not a string; expected {GRAMMAR}")
    t = text.strip().lower()
    if t == "dense":
        return DENSE
    if mt := _NM.match(t):
        n, m = int(mt.group(1)), int(mt.group(2))
        if not (0 < n < m):
            raise PatternError(f"pattern {text!r}: N:M needs 0 < N < M")
        return nm_pattern(n, m)
    if mt := _BLOCK.match(t):
        r, c = int(mt.group(1)), int(mt.group(2))
        if r < 1 or c < 1:
            raise PatternError(f"pattern {text!r}: block sides must be >= 1")
        return Pattern("block", _density(_sparsity(text, mt.group(3))), block=(r, c))
    if mt := _RATIO.match(t):
        return Pattern(mt.group(1), _density(_sparsity(text, mt.group(2))))
    raise PatternError(f"pattern {text!r} is not understood; expected {GRAMMAR}")
