"""Hostile pattern strings: every spelling parses to a pattern or gives one PatternError line,
never another exception; whatever parses builds, checks and measures masks and analytic stats
without allocating beyond the weight or looping with K."""

from __future__ import annotations

import json
import math
import resource

import pytest
import torch
from case_timeout import per_case_timeout
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from sparsesim.sparsity.kinds.base import MAX_PATTERN_INT
from sparsesim.sparsity.masks import build_mask, check_mask
from sparsesim.sparsity.patterns import PatternError, parse_pattern
from sparsesim.sparsity.records import Pattern
from sparsesim.sparsity.stats import analytic_stats, measure_stats

# numbers as a hostile user types them: huge, zero, negative, unicode digits, floats, exponents
NUMBERS = hs.one_of(
    hs.integers(min_value=0, max_value=2**80).map(str),
    hs.sampled_from(["0", "1", "2", "4", "8", "64", str(MAX_PATTERN_INT), str(MAX_PATTERN_INT + 1),
                     "-1", "²", "٣", "1e400", "nan", "inf", "0x10", "1_000", " 2", "0.5", ".5", "1.", "",
                     "9" * 400]),
)
PIECES = hs.sampled_from(["", ":", "x", "block", "unstructured:", "channel:", "dense", "DENSE", " "])
SPELLINGS = hs.one_of(
    hs.text(max_size=40),
    hs.builds(lambda a, b: f"{a}:{b}", NUMBERS, NUMBERS),
    hs.builds(lambda a, b, c: f"{a}:{b}:{c}", NUMBERS, NUMBERS, NUMBERS),
    hs.builds(lambda a, b, s: f"block{a}x{b}:{s}", NUMBERS, NUMBERS, NUMBERS),
    hs.builds(lambda k, s: f"{k}:{s}", hs.sampled_from(["unstructured", "channel"]), NUMBERS),
    hs.lists(hs.one_of(PIECES, NUMBERS), max_size=6).map("".join),
)


def _parse(text: str) -> Pattern | None:
    try:
        return parse_pattern(text)
    except PatternError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith("pattern"), msg
        return None


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SPELLINGS)
@per_case_timeout()
def test_any_spelling_parses_or_gives_one_pattern_error(text):
    p = _parse(text)
    if p is not None:
        assert parse_pattern(p.label) == p
        assert 0.0 < p.density <= 1.0


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SPELLINGS, hs.integers(1, 40), hs.integers(1, 70))
@per_case_timeout()
def test_whatever_parses_builds_checks_and_measures_within_the_weight(text, rows, cols):
    p = _parse(text)
    if p is None:
        return
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows * 100 + cols))
    mask = build_mask(w, p, group=1)
    assert mask.shape == w.shape
    check_mask(mask, p, layer="w", shape=(rows, cols))
    measured = measure_stats(mask, pattern=p)
    assert measured.conforms_to(p)
    analytic = analytic_stats(rows, cols, p)
    assert 0 <= analytic.nnz <= rows * cols


# absurd sizes that used to allocate gigabytes or loop over K (issue 16)
HOSTILE = ["block1000000x1000000:0.5", "1:100000000", "1:1000000", f"1:{MAX_PATTERN_INT}",
           f"block{MAX_PATTERN_INT}x{MAX_PATTERN_INT}:0.5", f"{MAX_PATTERN_INT}:2:{MAX_PATTERN_INT}", "2:4",
           "unstructured:0.5", "channel:0.5", "block4x4:0.5", "64:2:8"]


def _memory_growth_mb(fn) -> float:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


@pytest.mark.parametrize("spec", HOSTILE)
def test_huge_pattern_numbers_on_a_real_weight_stay_within_the_weight(spec):
    p = parse_pattern(spec)
    w = torch.randn(256, 1024, generator=torch.Generator().manual_seed(0))
    grown = _memory_growth_mb(lambda: measure_stats(build_mask(w, p), pattern=p))
    assert grown < 200  # the weight is 1 MB; a padded group or block would be gigabytes


@pytest.mark.parametrize("spec", HOSTILE)
def test_analytic_stats_of_a_trillion_column_weight_do_not_loop_over_k(spec):
    st = analytic_stats(64, 10**12, parse_pattern(spec))
    assert st.cols == 10**12 and 0 < st.nnz <= 64 * 10**12


def test_too_long_and_non_ascii_spellings_are_one_clear_error():
    with pytest.raises(PatternError, match="not a whole number"):
        parse_pattern("²:4")
    with pytest.raises(PatternError, match="exceeds 2147483647"):
        parse_pattern("1:" + "9" * 30)
    with pytest.raises(PatternError, match="characters long"):
        parse_pattern("2:" + "4" * 1000)


@pytest.mark.slow
def test_cli_refuses_or_finishes_hostile_plans(cli):
    rc, _, err = cli("estimate", "gemm:M=64,N=4096,K=4096", "--device", "a100-sxm4-80gb", "--plan", "²:4")
    assert rc == 2 and err.count("\n") == 1 and "not a whole number" in err
    for spec, plan in (("gemm:M=64,N=64,K=1000000000000", "2:4"), ("gemm:M=64,N=4096,K=4096", "1:1000000")):
        rc, out, err = cli("estimate", spec, "--device", "a100-sxm4-80gb", "--plan", plan, "--json")
        assert rc == 0, err
        latency = json.loads(out)["totals"]["latency_s"]
        assert math.isfinite(latency) and latency > 0

def test_device_ratio_with_a_superscript_digit_is_one_field_error():
    from op_cases import device_with

    from sparsesim.core.errors import DeviceFileError

    with pytest.raises(DeviceFileError, match="sparse_ratio.fp16"):
        device_with("a100-sxm4-80gb", sparse_ratio={"value": {"fp16": "²:4", "bf16": "2:4", "int8": "2:4",
                                                               "tf32": "1:2"}, "source": "test"})
