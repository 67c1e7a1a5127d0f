"""Search tasks of the built-in workloads, by the recipe builder they belong to.

A task says how to score a pruned model (which layers share channels is read from the trace).
The model builders in `sparsesim.tracing.models` know nothing of the search; the tasks live
here. A user recipe whose builder module defines `search_task(model, *, seed) -> SearchTask` gets that task too.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

from sparsesim.search.accuracy import Fidelity
from sparsesim.search.task import SearchTask

TaskFn = Callable[..., SearchTask]


def digits_task(model: nn.Module, *, seed: int = 0) -> SearchTask:
    """Test accuracy and a calibration batch from the training split (KL fidelity); the channel
    groups come from the dataflow (each layer's channels with the next layer's inputs, 16 fc1
    columns per conv2 channel after the flatten; the 10 logits are never pruned)."""
    from sparsesim.tracing.models import digits

    calib = digits.calibration_batch()
    return SearchTask(evaluate=digits.evaluate, metric="test accuracy", fidelity=Fidelity(calib, kind="kl"),
                      calibration=calib, recovery=None)


def minilm_task(model: nn.Module, *, seed: int = 0) -> SearchTask:
    """Mean cosine to the dense embeddings and a calibration batch; the channel groups come from
    the dataflow (per block the attention heads and the FFN neurons; the residual stream whole)."""
    from sparsesim.tracing.models import minilm

    calib = minilm.calibration_inputs(seed)
    return SearchTask(evaluate=minilm.Score(seed), metric="mean cosine to dense embeddings",
                      fidelity=Fidelity(calib, kind="cosine"), calibration=calib)


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
