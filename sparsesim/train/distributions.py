"""Layer-wise density distributions: how a global sparsity is spread over the weights.

* `uniform`: every sparsifiable weight (linear, conv) at the global sparsity.
* `uniform-first-dense`: the same, with the first weight op of the model dense (the input layer
  holds few weights and many FLOPs; RigL's "uniform" keeps it dense). The global sparsity is then
  a little below the one asked for; `global_sparsity` reports it.
* `er` / `erk`: Erdős-Rényi(-Kernel), Evci et al. 2020: layer l's density is proportional to
  (n_in + n_out) / (n_in n_out) (ER) or (n_in + n_out + k_h + k_w) / (n_in n_out k_h k_w) (ERK),
  i.e. the sum of the weight's dimensions over their product, scaled so that the global sparsity
  is met exactly; a layer whose density would exceed 1 is kept dense and the rest rescaled
  (the loop of RigL's `sparse_utils.get_sparsities_erdos_renyi`).
* a plan file (`.toml`, `.safetensors`, `.pt`) or any pattern spelling: the plan's own per-layer
  patterns; the global sparsity argument is then ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sparsesim.core.errors import PlanError, TrainError
from sparsesim.core.ir import Workload
from sparsesim.sparsity.patterns import make_pattern
from sparsesim.sparsity.plans import load_plan
from sparsesim.sparsity.records import DENSE, Pattern
from sparsesim.sparsity.sparsify import SPARSIFIED_KINDS

NAMED = ("uniform", "uniform-first-dense", "er", "erk")


@dataclass(frozen=True)
class Layer:
    """A sparsifiable weight: its name, owning module and stored shape (out, in, kh, kw, ...)."""

    weight: str
    module: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def sparsifiable(workload: Workload) -> list[Layer]:
    """Every linear/conv weight of the workload, in first-use order, each once."""
    out: dict[str, Layer] = {}
    for op in workload.ops:
        if op.weight is not None and op.kind in SPARSIFIED_KINDS and op.weight_shape is not None:
            out.setdefault(op.weight, Layer(op.weight, op.module, tuple(op.weight_shape)))
    return list(out.values())


def erdos_renyi(layers: Sequence[Layer], sparsity: float, *, kernel: bool = True,
                dense: Sequence[str] = ()) -> dict[str, float]:
    """Per-weight densities of the ER(K) distribution meeting `sparsity` over `layers`.

    Raw score: sum of the weight's dims over their product (kernel dims dropped for ER). The
    scale eps solves sum_l eps * raw_l * n_l = (1 - s) * sum_l n_l - (weights kept dense);
    layers whose eps * raw would exceed 1 join the dense set and eps is solved again.
    """
    if not 0 <= sparsity < 1:
        raise TrainError(f"sparsity {sparsity:g} must be in [0, 1)")
    dense_set = set(dense)
    raw = {}
    for ly in layers:
        dims = ly.shape if kernel else ly.shape[:2]
        raw[ly.weight] = sum(dims) / math.prod(dims)
    while True:
        rhs = divisor = 0.0
        for ly in layers:
            n = ly.size
            if ly.weight in dense_set:
                rhs -= n * sparsity
            else:
                rhs += n * (1.0 - sparsity)
                divisor += raw[ly.weight] * n
        if divisor <= 0:
            raise TrainError(f"sparsity {sparsity:g} cannot be met: every layer would be dense")
        eps = rhs / divisor
        over = [ly.weight for ly in layers if ly.weight not in dense_set and eps * raw[ly.weight] > 1.0]
        if not over:
            break
        top = max(raw[w] for w in over)
        dense_set.update(w for w in over if raw[w] == top)
    return {ly.weight: 1.0 if ly.weight in dense_set else eps * raw[ly.weight] for ly in layers}


def densities(layers: Sequence[Layer], distribution: str, sparsity: float) -> dict[str, float]:
    """Per-weight densities of a named distribution at a global sparsity."""
    if not 0 <= sparsity < 1:
        raise TrainError(f"sparsity {sparsity:g} must be in [0, 1)")
    if distribution == "uniform":
        return {ly.weight: 1.0 - sparsity for ly in layers}
    if distribution == "uniform-first-dense":
        return {ly.weight: 1.0 if i == 0 else 1.0 - sparsity for i, ly in enumerate(layers)}
    if distribution in ("er", "erk"):
        return erdos_renyi(layers, sparsity, kernel=distribution == "erk")
    raise TrainError(f"distribution {distribution!r} is not one of {', '.join(NAMED)} or a plan file")


def is_plan(distribution: str) -> bool:
    return Path(distribution).suffix in (".toml", ".safetensors", ".pt")


def target_patterns(workload: Workload, distribution: str, sparsity: float, *,
                    nm: Pattern | None = None) -> dict[str, Pattern]:
    """Each sparsifiable weight's final pattern: unstructured at its distribution density, or
    `nm` (2:4 training) on every weight the distribution does not keep dense, or a plan's own."""
    layers = sparsifiable(workload)
    if not layers:
        raise TrainError(f"workload {workload.name!r} has no linear or conv weight to sparsify")
    if is_plan(distribution):
        try:
            plan = load_plan(distribution)
            plan.check_globs((ly.weight, ly.module) for ly in layers)
        except PlanError as e:
            raise TrainError(f"distribution {distribution!r}: {e}") from None
        return {ly.weight: plan.pattern_for(ly.weight, ly.module) for ly in layers}
    dens = densities(layers, distribution, 0.5 if nm is not None else sparsity)
    out: dict[str, Pattern] = {}
    for ly in layers:
        d = dens[ly.weight]
        if d >= 1.0:
            out[ly.weight] = DENSE
        elif nm is not None:
            out[ly.weight] = nm
        else:
            out[ly.weight] = make_pattern("unstructured", d)
    return out


def global_sparsity(workload: Workload, patterns: Mapping[str, Pattern]) -> float:
    """Fraction of the sparsifiable weights removed under `patterns`."""
    layers = sparsifiable(workload)
    total = sum(ly.size for ly in layers)
    kept = sum(ly.size * patterns.get(ly.weight, DENSE).density for ly in layers)
    return 1.0 - kept / total if total else 0.0
