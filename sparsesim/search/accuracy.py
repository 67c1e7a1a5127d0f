"""Accuracy signals for the search, from the real model with real masks.

* the user's `evaluate(model) -> float` (higher is better): the signal that is reported;
* output fidelity to the dense model on a calibration batch: KL(dense || sparse) of the softmax
  for classifiers, 1 - mean cosine for embeddings: smooth and cheap, used as per-layer
  sensitivity so that small prunings still rank (test accuracy moves in steps of 1/n);
* per-layer reconstruction error ||W x - (W*M) x||^2 / ||W x||^2 on the layer's real inputs.

Masks are applied in place and always undone (`masked`), so one model copy serves every trial.
An optional recovery hook runs after the masks go in: batch-norm recalibration on the
calibration batch and/or a user fine-tune callable; masks are re-applied after it so pruned
weights stay zero.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparsesim.core.errors import SearchError

Evaluate = Callable[[nn.Module], float]


def _param(model: nn.Module, name: str) -> torch.Tensor:
    try:
        return model.get_parameter(name)
    except AttributeError:
        raise SearchError(f"layer {name!r}: the model has no such weight") from None


@contextlib.contextmanager
def masked(model: nn.Module, masks: Mapping[str, torch.Tensor], *,
           recovery: Callable[[nn.Module], None] | None = None) -> Iterator[nn.Module]:
    """Multiply `masks` into the weights for the duration of the block, then restore them.

    With a recovery hook the whole state (weights, biases, BN statistics) is restored.
    """
    saved: dict[str, torch.Tensor]
    if recovery is None:
        saved = {n: _param(model, n).detach().clone() for n in masks}
    else:
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            for n, m in masks.items():
                p = _param(model, n)
                p.mul_(m.to(p.dtype).reshape(p.shape))
        if recovery is not None:
            recovery(model)
            with torch.no_grad():
                for n, m in masks.items():
                    p = _param(model, n)
                    p.mul_(m.to(p.dtype).reshape(p.shape))
        yield model
    finally:
        with torch.no_grad():
            if recovery is None:
                for n, v in saved.items():
                    _param(model, n).copy_(v)
            else:
                model.load_state_dict(saved)


def checked(value: Any, what: str) -> float:
    """A finite float from an evaluate, or a SearchError saying what came back."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SearchError(f"{what} returned {type(value).__name__}, not a number") from None
    if not math.isfinite(v):
        raise SearchError(f"{what} returned {v}")
    return v


def run_evaluate(evaluate: Evaluate, model: nn.Module, what: str = "evaluate") -> float:
    """Call the user's evaluate; errors and NaN become one-line SearchErrors."""
    model.eval()
    try:
        with torch.no_grad():
            v = evaluate(model)
    except SearchError:
        raise
    except Exception as e:
        raise SearchError(f"{what} raised {type(e).__name__}: {e}") from e
    return checked(v, what)


def _forward(model: nn.Module, inputs: Any) -> torch.Tensor:
    with torch.no_grad():
        if isinstance(inputs, Mapping):
            out = model(**inputs)
        elif isinstance(inputs, (tuple, list)):
            out = model(*inputs)
        else:
            out = model(inputs)
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "pooler_output", "last_hidden_state"):
        t = getattr(out, key, None)
        if isinstance(t, torch.Tensor):
            return t
    if isinstance(out, (tuple, list)) and isinstance(out[0], torch.Tensor):
        return out[0]
    raise SearchError(f"fidelity: cannot find a tensor in the model output ({type(out).__name__})")


@dataclass
class Fidelity:
    """Output fidelity to the dense model on a calibration batch; `loss` is 0 for the dense model.

    kind "kl": mean KL(dense || sparse) of softmax outputs (classifiers);
    kind "cosine": 1 - mean cosine between outputs (embeddings), per row of the last dim.
    `output` maps the raw model output to what is compared (e.g. mean pooling) when given.
    """

    inputs: Any
    kind: str = "kl"
    output: Callable[[Any, Any], torch.Tensor] | None = None
    _ref: torch.Tensor | None = None

    def _out(self, model: nn.Module) -> torch.Tensor:
        if self.output is not None:
            with torch.no_grad():
                return self.output(model, self.inputs)
        return _forward(model, self.inputs)

    def reference(self, model: nn.Module) -> None:
        """Record the dense model's outputs (call before any masks go in)."""
        model.eval()
        self._ref = self._out(model).detach().float()

    def loss(self, model: nn.Module) -> float:
        if self._ref is None:
            raise SearchError("fidelity: reference() was not called on the dense model")
        out = self._out(model).float()
        if self.kind == "kl":
            p = torch.log_softmax(self._ref, -1)
            q = torch.log_softmax(out, -1)
            return float((p.exp() * (p - q)).sum(-1).mean())
        if self.kind == "cosine":
            return float(1 - nn.functional.cosine_similarity(out, self._ref, dim=-1).mean())
        raise SearchError(f"fidelity kind {self.kind!r}: expected kl or cosine")


def layer_inputs(model: nn.Module, modules: list[str], inputs: Any) -> dict[str, torch.Tensor]:
    """The input activation each named module sees on the calibration batch (first call)."""
    got: dict[str, torch.Tensor] = {}
    hooks = []
    for name in modules:
        mod = model.get_submodule(name)

        def hook(m, args, name=name):
            got.setdefault(name, args[0].detach())

        hooks.append(mod.register_forward_pre_hook(hook))
    try:
        _forward(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    return got


def reconstruction_error(module: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> float:
    """||f_W(x) - f_{W*M}(x)||^2 / ||f_W(x)||^2 for one Linear/Conv on its real inputs (bias-free)."""
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise SearchError(f"reconstruction error: {type(module).__name__}.weight is not a tensor")
    w = weight.detach()
    wm = w * mask.to(w.dtype).reshape(w.shape)
    with torch.no_grad():
        if isinstance(module, nn.Linear):
            ref, new = nn.functional.linear(x, w), nn.functional.linear(x, wm)
        elif isinstance(module, nn.modules.conv._ConvNd):
            ref = module._conv_forward(x, w, None)
            new = module._conv_forward(x, wm, None)
        else:
            raise SearchError(f"reconstruction error: {type(module).__name__} is not a Linear or Conv")
    den = float((ref * ref).sum())
    return float(((ref - new) ** 2).sum()) / den if den > 0 else 0.0


def recalibrate_bn(inputs: Any) -> Callable[[nn.Module], None]:
    """A recovery hook: recompute BatchNorm running statistics on `inputs` (cumulative average)."""

    def hook(model: nn.Module) -> None:
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns:
            return
        was = model.training
        moms = [bn.momentum for bn in bns]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        try:
            _forward(model, inputs)
        finally:
            for bn, mo in zip(bns, moms):
                bn.momentum = mo
            model.train(was)

    return hook


def chain(*hooks: Callable[[nn.Module], None] | None) -> Callable[[nn.Module], None] | None:
    """Several recovery hooks run in order (BN recalibration, then the user's fine-tune)."""
    hs = [h for h in hooks if h is not None]
    if not hs:
        return None

    def run(model: nn.Module) -> None:
        for h in hs:
            h(model)

    return run
