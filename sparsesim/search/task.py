"""What a workload offers a search beyond its model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from sparsesim.search.accuracy import Evaluate, Fidelity
from sparsesim.search.space import ChannelGroup


@dataclass(frozen=True)
class SearchTask:
    """The evaluate the results report, a calibration batch for the cheap signals, an optional
    recovery hook (see `sparsesim.search.tasks`) and the coupled channel groups: None takes
    them from the traced dataflow (`coupling.channel_sets`), as a uniform channel plan does."""

    evaluate: Evaluate
    metric: str = "evaluate"
    fidelity: Fidelity | None = None
    groups: tuple[ChannelGroup, ...] | None = None
    calibration: Any = None
    recovery: Callable[[nn.Module], None] | None = None
