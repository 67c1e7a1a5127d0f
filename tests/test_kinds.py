"""The pattern-kind registry: every kind supplies grammar, masks, checker, analytic stats and
format in its own module, and stages ask the kind instead of comparing kind names."""

from __future__ import annotations

import pytest
import torch

from sparsesim.sparsity.formats import default_format, format_bytes, formats
from sparsesim.sparsity.masks import build_mask, check_mask
from sparsesim.sparsity.patterns import grammar, make_pattern, parse_pattern
from sparsesim.sparsity.records import KINDS
from sparsesim.sparsity.stats import analytic_stats, measure_stats

# one spelling per registered kind
EXAMPLES = {"dense": "dense", "unstructured": "unstructured:0.75", "nm": "2:4", "block": "block4x4:0.5",
            "channel": "channel:0.5", "vnm": "64:2:8"}


def test_every_registered_kind_has_an_example():
    assert set(EXAMPLES) <= set(KINDS)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_kind_round_trip_mask_check_stats_format(kind):
    p = parse_pattern(EXAMPLES[kind])
    assert p.spec is KINDS[kind] and p.kind == kind
    assert parse_pattern(p.label) == p
    assert p.spec.grammar in grammar()
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    mask = build_mask(w, p)
    check_mask(mask, p, layer="w", shape=tuple(w.shape))
    measured = measure_stats(mask, pattern=p)
    assert measured.conforms_to(p)
    analytic = analytic_stats(32, 64, p)
    assert analytic.conforms_to(p)
    assert analytic.nnz == pytest.approx(measured.nnz, rel=0.05)
    fmt = default_format(p)
    assert fmt in formats()
    assert format_bytes(fmt, measured, value_bytes=2, pattern=p).total > 0


def test_facts_travel_on_the_kind():
    assert parse_pattern("dense").spec.is_dense
    assert parse_pattern("channel:0.5").spec.shrinks_op
    assert [k for k, s in KINDS.items() if s.shrinks_op] == ["channel"]
    assert not parse_pattern("channel:0.5").spec.skips_zeros
    assert all(parse_pattern(EXAMPLES[k]).spec.skips_zeros for k in ("unstructured", "nm", "block", "vnm"))


def test_make_pattern_goes_through_the_kind():
    assert make_pattern("nm", n=2, m=4) == parse_pattern("2:4")
    assert make_pattern("channel", 0.5) == parse_pattern("channel:0.5")


def test_no_stage_compares_pattern_kind_names():
    """A new pattern touches its module and cost rules only: no stage tests `kind == "..."`."""
    import re
    from pathlib import Path

    import sparsesim

    names = "|".join(KINDS)
    compare = re.compile(rf"\.kind\s*(==|!=)\s*[\"']({names})[\"']|\.kind\s+(not\s+)?in\s+\([^)]*[\"']({names})[\"']")
    root = Path(sparsesim.__file__).parent
    hits = [f"{path.relative_to(root)}:{i}: {line.strip()}"
            for path in root.rglob("*.py") if "kinds" not in path.parts
            for i, line in enumerate(path.read_text().splitlines(), 1) if compare.search(line)]
    assert not hits, "\n".join(hits)
