"""Search tasks of the built-in workloads, by the recipe builder they belong to.

A task says how to score a pruned model and which layers share channels. The model builders
in `sparsesim.tracing.models` know nothing of the search; the tasks live here. A user recipe
whose builder module defines `search_task(model, *, seed) -> SearchTask` gets that task too.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

from sparsesim.search.accuracy import Fidelity
from sparsesim.search.space import ChannelGroup
from sparsesim.search.task import SearchTask

TaskFn = Callable[..., SearchTask]


def digits_task(model: nn.Module, *, seed: int = 0) -> SearchTask:
    """Test accuracy, a calibration batch from the training split (KL fidelity), and the coupled
    channel groups: each layer's output channels/neurons with the next layer's inputs (16 fc1
    columns per conv2 channel after the flatten). The 10 logits are never pruned."""
    from sparsesim.tracing.models import digits

    c1, c2, h = model.conv1.out_channels, model.conv2.out_channels, model.fc1.out_features
    groups = (
        ChannelGroup("conv1", c1, producers=("conv1.weight",), consumers=("conv2.weight",)),
        ChannelGroup("conv2", c2, producers=("conv2.weight",), consumers=("fc1.weight",)),
        ChannelGroup("fc1", h, producers=("fc1.weight",), consumers=("fc2.weight",)),
    )
    calib = digits.calibration_batch()
    return SearchTask(evaluate=digits.evaluate, metric="test accuracy", fidelity=Fidelity(calib, kind="kl"),
                      groups=groups, calibration=calib, recovery=None)


def minilm_task(model: nn.Module, *, seed: int = 0) -> SearchTask:
    """Mean cosine to the dense embeddings, a calibration batch, and per block the attention
    heads (q, k, v rows per head, the output projection's columns per head, the attention op)
    and the FFN neurons as channel groups; the residual stream is left whole."""
    from sparsesim.tracing.models import minilm

    cfg = model.bert.config
    heads, hd = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    groups = []
    for i in range(cfg.num_hidden_layers):
        p = f"bert.encoder.layer.{i}"
        groups.append(ChannelGroup(
            f"heads{i}", heads,
            producers=tuple(f"{p}.attention.self.{q}.weight" for q in ("query", "key", "value")),
            consumers=(f"{p}.attention.output.dense.weight",), unit_rows=hd,
            attention=(f"{p}.attention.self",)))
        groups.append(ChannelGroup(f"ffn{i}", cfg.intermediate_size, producers=(f"{p}.intermediate.dense.weight",),
                                   consumers=(f"{p}.output.dense.weight",)))
    calib = minilm.calibration_inputs(seed)
    return SearchTask(evaluate=minilm.Score(seed), metric="mean cosine to dense embeddings",
                      fidelity=Fidelity(calib, kind="cosine"), groups=tuple(groups), calibration=calib)


# builder module -> task
TASKS: dict[str, TaskFn] = {
    "sparsesim.tracing.models.digits": digits_task,
    "sparsesim.tracing.models.minilm": minilm_task,
}


def task_for_builder(builder: str) -> TaskFn | None:
    """The task of a recipe builder (`module:function`): registered here, or the module's own
    `search_task`; None when it has neither."""
    module = builder.partition(":")[0]
    if module in TASKS:
        return TASKS[module]
    fn = getattr(importlib.import_module(module), "search_task", None)
    return fn if callable(fn) else None
