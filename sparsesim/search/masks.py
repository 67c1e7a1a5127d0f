"""Real masks of a searched plan: each weight's own pattern built on the rows and columns its
channel groups keep (channels scored by the L2 norm of their rows over all producers), and the
Plan that records them the way `plans.save_plan` / `sparsify.sparsify` read it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from sparsesim.core.errors import SearchError
from sparsesim.search.space import GroupIndex, Setting
from sparsesim.sparsity.records import Pattern

# masks kept in memory per process (MiniLM masks are ~1.5 M bools per weight)
MASK_CACHE = 256


def _param(model: nn.Module, name: str) -> torch.Tensor:
    try:
        return model.get_parameter(name)
    except AttributeError:
        raise SearchError(f"layer {name!r}: the model has no such weight") from None


class MaskMaker:
    """Masks of every weight setting, built from a copy of the dense weights (the model itself is
    masked and restored around each accuracy measurement)."""

    def __init__(self, model: nn.Module, weights: Mapping[str, tuple[int, int]], index: GroupIndex) -> None:
        self.shapes = dict(weights)  # weight -> (rows, cols) of its N x K matrix
        self.index = index
        self.weights = {w: _param(model, w).detach().clone() for w in self.shapes}
        self._keep: dict[tuple[str, float], torch.Tensor] = {}
        self._masks: OrderedDict[tuple[str, Setting], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def __getstate__(self) -> dict:
        # workers rebuild the weights from the model they receive (see `reload`)
        return dict(self.__dict__, weights=None, _masks=OrderedDict())

    def reload(self, model: nn.Module) -> None:
        self.weights = {w: _param(model, w).detach().clone() for w in self.shapes}

    def keep(self, group: str, density: float) -> torch.Tensor:
        """Channels of a group kept at `density`: the largest by L2 norm over its producers."""
        key = (group, density)
        if key not in self._keep:
            g = self.index.groups[group]
            score = torch.zeros(g.channels)
            for w in g.producers:
                m = self.weights[w].reshape(g.channels, -1).float()
                score += (m * m).sum(1)
            keep = torch.zeros(g.channels, dtype=torch.bool)
            keep[score.topk(max(1, round(density * g.channels))).indices] = True
            self._keep[key] = keep
        return self._keep[key]

    def mask(self, w: str, s: Setting) -> tuple[torch.Tensor, torch.Tensor]:
        """(full mask in the weight's shape, mask of the kept rows x kept columns), both bool."""
        key = (w, s)
        hit = self._masks.get(key)
        if hit is not None:
            self._masks.move_to_end(key)
            return hit
        from sparsesim.sparsity.masks import build_mask

        rows, _cols = self.shapes[w]
        w2 = self.weights[w].reshape(rows, -1)
        ri = torch.arange(rows)
        ci = torch.arange(w2.shape[1])
        if s.rows < 1.0:
            g = self.index.groups[self.index.rows[w]]
            ri = self.keep(g.name, s.rows).repeat_interleave(g.unit_rows).nonzero().squeeze(1)
        if s.cols < 1.0:
            g = self.index.groups[self.index.cols[w]]
            ci = self.keep(g.name, s.cols).repeat_interleave(w2.shape[1] // g.channels).nonzero().squeeze(1)
        sub = w2 if s.rows == 1.0 and s.cols == 1.0 else w2[ri][:, ci]
        sub_mask = (build_mask(sub, s.pattern, layer=w).bool() if not s.pattern.spec.is_dense
                    else torch.ones_like(sub, dtype=torch.bool))
        if s.rows == 1.0 and s.cols == 1.0:
            full = sub_mask
        else:
            full = torch.zeros_like(w2, dtype=torch.bool)
            full[ri.unsqueeze(1), ci.unsqueeze(0)] = sub_mask
        out = (full.reshape(self.weights[w].shape), sub_mask)
        self._masks[key] = out
        if len(self._masks) > MASK_CACHE:
            self._masks.popitem(last=False)
        return out

    def masks(self, settings: Mapping[str, Setting]) -> dict[str, torch.Tensor]:
        """Full-shape bool masks of every weight the settings touch (dense weights omitted)."""
        return {w: self.mask(w, s)[0] for w, s in settings.items() if not s.dense}


def recorded_pattern(s: Setting, mask: torch.Tensor) -> Pattern:
    """The pattern a plan file records for a weight: its own pattern; channel when channel
    pruning removed its rows and/or columns (a smaller dense op); unstructured at its density
    when channel pruning cut into a sparse pattern."""
    if s.rows == 1.0 and s.cols == 1.0:
        return s.pattern
    density = round(float(mask.float().mean()), 6)
    return Pattern("channel" if s.pattern.spec.is_dense else "unstructured", density)
