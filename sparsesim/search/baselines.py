"""Uniform baselines: one pattern and density everywhere, evaluated in the same run as the search
(same model, same masks criterion, same evaluate, same cost model) so the comparison is fair.

A uniform pattern plan applies the pattern to every layer whose choices offer it; a layer where
the device cannot exploit that pattern stays dense (the kinder reading for the baseline: pruning
it there would cost accuracy and buy nothing). A uniform channel plan keeps the same fraction of
channels in every coupled group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sparsesim.search.space import SearchSpace


def uniform_choices(space: SearchSpace) -> dict[str, dict[str, str]]:
    """{plan label: {unit: choice}} for every pattern offered by some layer and every channel level."""
    dense = space.dense_choice()
    out: dict[str, dict[str, str]] = {}
    layer_labels: list[str] = []
    group_labels: list[str] = []
    for u in space.units:
        target = layer_labels if u.kind == "layer" else group_labels
        for c in u.choices[1:]:
            if c.label not in target:
                target.append(c.label)
    for label in layer_labels:
        out[label] = {u.name: (label if u.kind == "layer" and any(c.label == label for c in u.choices)
                               else dense[u.name]) for u in space.units}
    for label in group_labels:
        out[label] = {u.name: (label if u.kind == "group" and any(c.label == label for c in u.choices)
                               else dense[u.name]) for u in space.units}
    return out


def best_within(records: Sequence[Mapping[str, Any]], max_latency: float, *, rel_tol: float = 1e-9
                ) -> Mapping[str, Any] | None:
    """The most accurate record whose modeled latency is within `max_latency` (ties: faster)."""
    fit = [r for r in records if r["latency_s"] <= max_latency * (1 + rel_tol)]
    if not fit:
        return None
    return max(fit, key=lambda r: (r["accuracy"], -r["latency_s"]))
