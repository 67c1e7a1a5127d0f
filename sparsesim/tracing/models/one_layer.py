"""The model of a single-op spec (`gemm:...`, `conv:...`): one named layer."""

from __future__ import annotations

import torch
from torch import nn


class OneLayer(nn.Module):
    """A model that is one named layer, so its weight is `gemm.weight` / `conv.weight`."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.kind)(x)
