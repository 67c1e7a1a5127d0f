"""Accelergy-style energy: energy per action times action counts, plus static power x latency.

Gating saves energy only (a gated action still costs `gated_fraction` of a real one);
skipping saves energy and time (a skipped action costs nothing, but its metadata is read).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class EnergyBreakdown:
    compute_j: float
    memory_j: float
    metadata_j: float
    static_j: float

    @property
    def total_j(self) -> float:
        return self.compute_j + self.memory_j + self.metadata_j + self.static_j


def action_energy(
    *,
    macs: float,
    mac_energy_j: float,
    bytes_by_level: Mapping[str, float],
    energy_per_byte: Mapping[str, float],
    metadata_bytes: float,
    metadata_energy_per_byte: float,
    static_power_w: float,
    latency_s: float,
    gated_macs: float = 0.0,
    gated_fraction: float = 0.0,
) -> EnergyBreakdown:
    """Energy of one op. `bytes_by_level` keys must all appear in `energy_per_byte`."""
    missing = sorted(set(bytes_by_level) - set(energy_per_byte))
    if missing:
        raise KeyError(f"no energy per byte for memory level(s) {missing}")
    memory = sum(b * energy_per_byte[level] for level, b in bytes_by_level.items())
    compute = (macs + gated_macs * gated_fraction) * mac_energy_j
    return EnergyBreakdown(
        compute_j=compute,
        memory_j=memory,
        metadata_j=metadata_bytes * metadata_energy_per_byte,
        static_j=static_power_w * latency_s,
    )
