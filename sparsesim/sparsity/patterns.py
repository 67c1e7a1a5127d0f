"""Parse the spelling of a sparsity pattern (`dense`, `2:4`, `64:2:8`, `unstructured:0.9`,
`block4x4:0.5`, `channel:0.5`) into a `Pattern`, so plans, the CLI and searches share one grammar.

Each kind's spelling lives in its module (`sparsesim.sparsity.kinds`); this module asks every
registered kind. The number after a kind name is the *sparsity* (fraction removed) in [0, 1);
`Pattern.density` is the kept fraction. Densities are rounded to 12 decimals so
`parse_pattern(p.label) == p` for every pattern spelled with up to six significant digits.
Every integer is bounded (`MAX_PATTERN_INT`) and every spelling error is one PatternError line.
"""

from __future__ import annotations

from sparsesim.sparsity.kinds.base import MAX_PATTERN_INT, PatternError, grammar
from sparsesim.sparsity.records import KINDS, Pattern

# longest spelling worth reading (the longest valid one, block with two int32 sides and a
# sparsity, is about 50 characters); longer text is refused before any regex runs
MAX_SPELLING = 200

__all__ = ["MAX_PATTERN_INT", "PatternError", "grammar", "make_pattern", "nm_pattern", "parse_pattern"]


def nm_pattern(n: int, m: int) -> Pattern:
    """An N:M pattern (keep at most n of every m consecutive weights along K)."""
    return make_pattern("nm", n=n, m=m)


def make_pattern(kind: str, density: float = 1.0, *, n: int = 0, m: int = 0,
                 block: tuple[int, int] = (1, 1)) -> Pattern:
    """Build a validated Pattern from parts (what a search uses instead of a string)."""
    spec = KINDS.get(kind)
    if spec is None:
        raise PatternError(f"pattern kind {kind!r} is not one of {', '.join(KINDS)}")
    return spec.make(density, n=n, m=m, block=block)


def parse_pattern(text: str | Pattern) -> Pattern:
    """Parse a pattern spelling; raise PatternError naming the text on anything else."""
    if isinstance(text, Pattern):
        text.spec  # noqa: B018  (an unknown kind raises here, not deep inside a stage)
        return text
    if not isinstance(text, str):
        raise PatternError(f"pattern {text!r} is not a string; expected {grammar()}")
    if len(text) > MAX_SPELLING:
        raise PatternError(f"pattern {text[:40]!r}... is {len(text)} characters long; expected {grammar()}")
    t = text.strip().lower()
    for spec in KINDS.values():
        p = spec.parse(t)
        if p is not None:
            return p
    raise PatternError(f"pattern {text!r} is not understood; expected {grammar()}")
