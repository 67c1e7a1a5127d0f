"""Mixture-of-Experts routing: how many rows each expert of a grouped expert GEMM gets.

A traced MoE layer runs its experts as grouped GEMMs (`aten._grouped_mm`): S = T x k rows
(T tokens, each sent to k of E experts) split over the experts by the router. What that costs
depends on the split, which depends on the input, so it comes from a routing model:

* `measured`: the counts the real router produced on the traced inputs (real weights only);
* `uniform`: every token picks k distinct experts uniformly at random;
* `zipf:A`: expert e (0-based) is picked with weight 1/(e+1)^A, k distinct per token (skew);

optionally with a capacity factor, `+cf:C`: each expert takes at most ceil(C x T x k / E) rows
and drops the rest, and every expert's buffer is computed at that size (GShard/Switch-style
padded buffers). Without one, routing is dropless (Megablocks-style grouped GEMM).

Sampled models draw k distinct experts per token by Gumbel-top-k (the Plackett-Luce draw
without replacement) with a fixed seed per MoE layer, so a routing is reproducible. Large
batches (T x E above `EXACT_DRAWS`) draw the counts from a multinomial over the T x k rows
with the per-expert inclusion probabilities estimated from an exact draw of the same size.

The GEMM a routed op runs (`grouped_gemm`) has one group per expert that got rows, each padded
to the busiest expert's rows: the busiest expert sets the time of the layer, as it does where
experts run side by side. Only touched experts' weights are read.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import numpy as np

from sparsesim.core.errors import WorkloadError
from sparsesim.core.ir import DTYPE_BYTES, GemmShape, Op, Workload, activation_dtype

ROUTINGS = ("measured", "uniform", "zipf:A")
DEFAULT_ROUTING = "uniform"
# token x expert draws sampled exactly (Gumbel-top-k) before switching to the multinomial
EXACT_DRAWS = 1 << 22
_SPELLING = re.compile(r"(measured|uniform|zipf:([0-9]*\.?[0-9]+))(?:\+cf:([0-9]*\.?[0-9]+))?", re.ASCII)


@dataclass(frozen=True)
class Routing:
    """A routing model (module doc): distribution, Zipf exponent, capacity factor (0 = dropless)."""

    dist: str = DEFAULT_ROUTING
    alpha: float = 0.0
    capacity: float = 0.0
    seed: int = 0

    @property
    def label(self) -> str:
        base = f"zipf:{self.alpha:g}" if self.dist == "zipf" else self.dist
        return base + (f"+cf:{self.capacity:g}" if self.capacity else "")


def parse_routing(text: str) -> Routing:
    """`uniform`, `zipf:1.2`, `measured`, each optionally `+cf:1.25`; WorkloadError otherwise."""
    mt = _SPELLING.fullmatch(text.strip().lower())
    if mt is None:
        raise WorkloadError(f"routing {text!r}: expected {' | '.join(ROUTINGS)}, optionally +cf:C "
                            "(capacity factor), e.g. zipf:1.2+cf:1.25")
    dist = mt.group(1).split(":")[0]
    alpha = float(mt.group(2)) if mt.group(2) else 0.0
    cap = float(mt.group(3)) if mt.group(3) else 0.0
    if mt.group(3) and cap <= 0:
        raise WorkloadError(f"routing {text!r}: capacity factor must be > 0")
    return Routing(dist, alpha, cap)


def expected_distinct(experts: int, top_k: int, tokens: int) -> float:
    """Expected number of distinct experts T tokens touch under uniform top-k routing:
    each expert is missed by one token with probability 1 - k/E, so E (1 - (1 - k/E)^T)."""
    return experts * (1.0 - (1.0 - top_k / experts) ** tokens)


def expert_weights(routing: Routing, experts: int) -> np.ndarray:
    """Unnormalised pick weight of each expert."""
    if routing.dist == "zipf":
        return 1.0 / np.arange(1, experts + 1, dtype=np.float64) ** routing.alpha
    return np.ones(experts)


def _gumbel_top_k(logw: np.ndarray, tokens: int, top_k: int, rng: np.random.Generator) -> np.ndarray:
    keys = logw[None, :] + rng.gumbel(size=(tokens, logw.shape[0]))
    picks = np.argpartition(-keys, top_k - 1, axis=1)[:, :top_k]
    return np.bincount(picks.reshape(-1), minlength=logw.shape[0])


def sample_loads(routing: Routing, experts: int, top_k: int, tokens: int, layer: int = 0) -> np.ndarray:
    """Rows routed to each expert when `tokens` tokens each pick `top_k` distinct experts."""
    if not (1 <= top_k <= experts):
        raise WorkloadError(f"routing: top-k {top_k} must be in 1..{experts} (the number of experts)")
    rng = np.random.default_rng([routing.seed, layer])
    logw = np.log(expert_weights(routing, experts))
    if tokens * experts <= EXACT_DRAWS:
        return _gumbel_top_k(logw, tokens, top_k, rng)
    probe = max(1, EXACT_DRAWS // experts)
    incl = _gumbel_top_k(logw, probe, top_k, rng) / (probe * top_k)
    return rng.multinomial(tokens * top_k, incl / incl.sum())


def capacity_rows(routing: Routing, experts: int, top_k: int, tokens: int) -> int:
    """Rows each expert's buffer holds under the capacity factor (0 = dropless)."""
    if not routing.capacity:
        return 0
    return max(1, math.ceil(routing.capacity * tokens * top_k / experts))


def grouped_gemm(n: int, k: int, loads: tuple[int, ...], capacity: int) -> GemmShape:
    """The GEMM a grouped expert op runs: one group per expert with rows (every expert at its
    capacity when there is one), each padded to the busiest expert's rows."""
    if capacity:
        return GemmShape(m=capacity, n=n, k=k, groups=len(loads))
    touched = [x for x in loads if x > 0]
    if not touched:
        return GemmShape(m=0, n=n, k=k, groups=1)
    return GemmShape(m=max(touched), n=n, k=k, groups=len(touched))


def routed(op: Op, loads: np.ndarray | tuple[int, ...], routing: Routing) -> Op:
    """`op` (a grouped expert GEMM) with `loads` routed rows per expert under `routing`:
    capacity drops applied, GEMM, useful FLOPs and bytes (activations in and out, the touched
    experts' weights) recomputed."""
    assert op.gemm is not None and op.is_grouped
    loads = tuple(int(x) for x in loads)
    total = sum(loads)
    tokens = max(1, total // max(1, op.top_k))
    cap = capacity_rows(routing, op.experts, op.top_k, tokens)
    kept = tuple(min(x, cap) for x in loads) if cap else loads
    n, k = op.gemm.n, op.gemm.k
    g = grouped_gemm(n, k, kept, cap)
    adb = DTYPE_BYTES[activation_dtype(op.dtype)]
    rows = sum(kept)
    nbytes = rows * k * adb + total * n * adb + g.groups * n * k * DTYPE_BYTES[op.dtype]
    return dataclasses.replace(op, gemm=g, flops=2 * rows * n * k, bytes_moved=int(nbytes), expert_tokens=kept,
                               dropped_rows=total - rows, routing=routing.label)


def route(workload: Workload, spec: str | Routing) -> Workload:
    """`workload` with every grouped expert GEMM re-routed under `spec` (module doc). The ops of
    one MoE block call (same module and call) share one draw; each block gets its own seed."""
    routing = parse_routing(spec) if isinstance(spec, str) else spec
    grouped = [op for op in workload.ops if op.is_grouped]
    if not grouped:
        return workload
    if routing.dist == "measured":
        unmeasured = [op for op in grouped if not op.routing.startswith("measured")]
        if unmeasured:
            raise WorkloadError(f"{workload.name}: routing 'measured' needs the router's real counts, but "
                                f"{unmeasured[0].module} was traced without real weights (use uniform or zipf:A)")
    blocks: dict[tuple[str, int], int] = {}
    ops = []
    for op in workload.ops:
        if not op.is_grouped:
            ops.append(op)
            continue
        if routing.dist == "measured":
            if op.dropped_rows:
                raise WorkloadError(f"{op.module}: routing 'measured' on a workload already routed with a capacity "
                                    "factor; route the traced workload")
            loads: np.ndarray | tuple[int, ...] = op.expert_tokens
        else:
            layer = blocks.setdefault((op.module, op.call_index), len(blocks))
            tokens = (sum(op.expert_tokens) + op.dropped_rows) // op.top_k
            loads = sample_loads(routing, op.experts, op.top_k, tokens, layer)
        ops.append(routed(op, loads, routing))
    return dataclasses.replace(workload, ops=tuple(ops), params={**workload.params, "routing": routing.label})

