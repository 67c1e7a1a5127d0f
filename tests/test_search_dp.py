"""The layer-wise DP is optimal: checked against exhaustive search on small random instances."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsesim.core.errors import SearchError
from sparsesim.search.dp import LayerTable, solve, tradeoff


def brute_force(tables, budget):
    best = None
    for choice in itertools.product(*(range(len(t.labels)) for t in tables)):
        lat = sum(t.latency[j] for t, j in zip(tables, choice))
        sen = sum(t.sensitivity[j] for t, j in zip(tables, choice))
        if lat <= budget + 1e-12 and (best is None or sen < best[1]):
            best = (lat, sen)
    return best


def _tables(draw_layers):
    return [
        LayerTable(f"l{i}", tuple(f"c{j}" for j in range(len(ch))), tuple(float(c[0]) for c in ch),
                   tuple(float(c[1]) for c in ch))
        for i, ch in enumerate(draw_layers)
    ]


choice = st.tuples(st.integers(0, 30), st.integers(-5, 50))
layers = st.lists(st.lists(choice, min_size=1, max_size=4), min_size=1, max_size=5)


@settings(max_examples=150, deadline=None)
@given(layers=layers, budget=st.integers(0, 120))
def test_dp_matches_brute_force_on_integer_latencies(layers, budget):
    tables = _tables(layers)
    ref = brute_force(tables, budget)
    # with resolution == budget the grid step is 1: integer latencies are exact
    res_kw = {"resolution": max(budget, 1)}
    if ref is None:
        with pytest.raises(SearchError, match="impossible"):
            solve(tables, budget, **res_kw)
        return
    got = solve(tables, budget, **res_kw)
    assert got.latency <= budget
    assert got.sensitivity == pytest.approx(ref[1])


real_choice = st.tuples(st.floats(0, 3, allow_nan=False), st.floats(-1, 10, allow_nan=False))
real_layers = st.lists(st.lists(real_choice, min_size=1, max_size=4), min_size=1, max_size=5)


@settings(max_examples=150, deadline=None)
@given(layers=real_layers, budget=st.floats(0.1, 12))
def test_dp_on_real_latencies_is_feasible_and_near_optimal(layers, budget):
    tables = _tables(layers)
    resolution = 2000
    try:
        got = solve(tables, budget, resolution=resolution)
    except SearchError:
        # rounding up may only lose plans within one grid step per layer of the budget
        shrunk = brute_force(tables, budget - len(tables) * budget / resolution)
        assert shrunk is None
        return
    assert got.latency <= budget * (1 + 1e-12)
    # never worse than the exact optimum of a budget shrunk by one grid step per layer
    shrunk = brute_force(tables, budget - len(tables) * budget / resolution)
    if shrunk is not None:
        assert got.sensitivity <= shrunk[1] + 1e-9
    exact = brute_force(tables, budget)
    assert got.sensitivity >= exact[1] - 1e-9


@settings(max_examples=60, deadline=None)
@given(layers=layers, budget=st.integers(1, 120))
def test_tradeoff_curve_points_are_optimal_at_their_latency(layers, budget):
    tables = _tables(layers)
    curve = tradeoff(tables, budget, resolution=budget)
    sens = [p.sensitivity for p in curve]
    assert sens == sorted(sens, reverse=True)
    for p in curve:
        assert p.sensitivity == pytest.approx(brute_force(tables, p.latency)[1])


def test_bad_tables_are_rejected():
    with pytest.raises(SearchError, match="l0"):
        LayerTable("l0", ("a",), (float("nan"),), (0.0,))
    with pytest.raises(SearchError, match="no prunable"):
        solve([], 1.0)
