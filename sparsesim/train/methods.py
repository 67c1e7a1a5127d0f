"""Sparse-training methods as data: each is a schedule of segments over the run.

A `Segment` is a stretch of the run in which every step costs the same: how many steps, each
sparsifiable weight's pattern, whether the weight gradient is sparse (only the kept entries, an
SDDMM) or dense, how the weights are held (dense, or sparse values + indices), and the extra
ops of the step (mask updates). Mask updates that happen between steps (a pruning event every
Δt steps) are segments with `train=False`: they run their extra ops only.

The methods (the handbook's §3.7-3.9 taxonomy; defaults in `METHODS`):

* `dense`: every step dense.
* dense-to-sparse: `gmp` (gradual magnitude pruning, Zhu & Gupta 2017: sparsity
  s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n Δt))^3 with s_i = 0, a pruning event every Δt steps
  from t0 to t0 + nΔt), `oneshot` (dense until `prune_at`, one pruning event, sparse after),
  `imp` (iterative magnitude pruning with rewinding, the lottery-ticket construction: `rounds`
  pruning rounds, each a full training run, round r at density d^(r/rounds)). All pay dense
  steps early, so their peak memory is dense training's.
* static sparse-to-sparse: `static` (a fixed mask from initialisation: random or ERK, no dense
  step at all) and `snip` (one dense gradient batch scores the weights, then fixed).
* dynamic sparse-to-sparse: `set` (every ΔT steps drop the smallest-magnitude weights and regrow
  as many at random; Mocanu et al. 2018) and `rigl` (regrow by dense-gradient magnitude, so an
  update step computes the dense weight gradient; Evci et al. 2020, ΔT = 100, updates stop at
  75% of training).
* `2:4`: semi-structured sparse training as torchao runs it: weights held dense and re-pruned to
  a transposable 2:4 mask every step (one kernel writes the compressed W and W^T), forward and
  grad-input on sparse tensor cores, grad-weight dense.

The grouping of a gradual schedule: gmp's n pruning events are costed in `SCHEDULE_POINTS`
groups of consecutive events, each at its mean sparsity fraction. FLOPs are exact (they are
linear in each layer's density); time and energy are exact per group level.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from sparsesim.core.errors import TrainError
from sparsesim.sparsity.patterns import nm_pattern
from sparsesim.sparsity.records import DENSE, Pattern

# at most this many distinct sparsity levels are costed for a gradual pruning phase
SCHEDULE_POINTS = 4

# the four families of the handbook's taxonomy, plus dense and semi-structured
KINDS = ("dense", "dense-to-sparse", "static sparse-to-sparse", "dynamic sparse-to-sparse", "semi-structured")

# extra ops a step or event can carry (sparsesim.train.step builds them)
EXTRAS = (
    "prune-topk",       # magnitude threshold over the held weights (radix select) + mask rewrite
    "grow-random",      # SET: random scores over the zeros, top-k, regrown weights zeroed
    "grow-gradient",    # RigL: top-k of the dense weight gradient over the zeros
    "nm-compress",      # torchao: prune W to a transposable 2:4 mask, write compressed W and W^T
    "mask-apply",       # masked storage: weight = weight_orig * mask before every forward
)


@dataclass(frozen=True)
class Segment:
    """Steps of the run that all cost the same (see the module docstring)."""

    label: str
    steps: float
    patterns: Mapping[str, Pattern]
    wgrad: str = "dense"            # "dense" | "sparse" (SDDMM where the kernel allows)
    held: str = "dense"             # how weights are held: "dense" | "sparse" | "dense+nm" (torchao)
    extras: tuple[str, ...] = ()
    train: bool = True              # False: an event between steps (extras only)
    optimizer: bool = True          # False: a scoring pass (SNIP) with no weight update

    @property
    def sparse(self) -> bool:
        return any(not p.spec.is_dense for p in self.patterns.values())


@dataclass(frozen=True)
class Method:
    """A training method: its kind, its default settings and the schedule it builds."""

    name: str
    kind: str
    description: str
    settings: Mapping[str, float] = field(default_factory=dict)

    def with_settings(self, **overrides: float) -> Method:
        unknown = sorted(set(overrides) - set(self.settings))
        if unknown:
            raise TrainError(f"method {self.name!r}: unknown setting(s) {', '.join(unknown)} "
                             f"(has: {', '.join(self.settings) or 'none'})")
        return replace(self, settings={**self.settings, **overrides})

    def schedule(self, steps: float, target: Mapping[str, Pattern]) -> tuple[Segment, ...]:
        """The run of `steps` steps as segments, reaching the per-weight `target` patterns."""
        return _SCHEDULES[self.name](steps, target, self.settings)


def dense_patterns(target: Mapping[str, Pattern]) -> dict[str, Pattern]:
    return {w: DENSE for w in target}


def _at_density(p: Pattern, density: float) -> Pattern:
    """`p` at another density, or DENSE when its kind fixes the density (N:M: all or nothing)."""
    if density >= 1.0:
        return DENSE
    q = p.spec.make(density, n=p.n, m=p.m, block=p.block)
    return q if abs(q.density - density) < 1e-9 else DENSE


def scaled(target: Mapping[str, Pattern], fraction: float) -> dict[str, Pattern]:
    """Each weight at `fraction` of its target sparsity (a kind with a fixed density, N:M, stays
    dense until the fraction reaches 1)."""
    out: dict[str, Pattern] = {}
    for w, p in target.items():
        if p.spec.is_dense or fraction <= 0:
            out[w] = DENSE
        elif fraction >= 1:
            out[w] = p
        else:
            out[w] = _at_density(p, 1.0 - fraction * p.sparsity)
    return out


def powered(target: Mapping[str, Pattern], exponent: float) -> dict[str, Pattern]:
    """Each weight at density d^exponent (iterative pruning removes a fixed share per round)."""
    out: dict[str, Pattern] = {}
    for w, p in target.items():
        if p.spec.is_dense or exponent <= 0:
            out[w] = DENSE
        elif exponent >= 1:
            out[w] = p
        else:
            out[w] = _at_density(p, p.density ** exponent)
    return out


def zhu_gupta(t: float, t0: float, n: int, dt: float, s_final: float, s_initial: float = 0.0) -> float:
    """Sparsity at step t of gradual magnitude pruning (Zhu & Gupta 2017, eq. 1)."""
    if t < t0:
        return s_initial
    progress = min(1.0, (t - t0) / (n * dt))
    return s_final + (s_initial - s_final) * (1.0 - progress) ** 3


def _whole(x: float) -> int:
    return max(0, math.floor(x + 1e-9))


# ----------------------------------------------------------------------------- schedules

def _dense(steps: float, target: Mapping[str, Pattern], s: Mapping[str, float]) -> tuple[Segment, ...]:
    return (Segment("dense", steps, dense_patterns(target)),)


def _gmp(steps: float, target: Mapping[str, Pattern], s: Mapping[str, float]) -> tuple[Segment, ...]:
    t0, t_end, dt = s["start"] * steps, s["end"] * steps, s["every"]
    if not 0 <= s["start"] < s["end"] <= 1:
        raise TrainError(f"method gmp: need 0 <= start < end <= 1, got start={s['start']:g}, end={s['end']:g}")
    if dt < 1:
        raise TrainError(f"method gmp: every={dt:g} must be at least one step")
    n = max(1, _whole((t_end - t0) / dt))
    out = [Segment("dense", t0, dense_patterns(target))]
    # event j (1..n) at t0 + (j-1)dt sets sparsity fraction 1 - (1 - j/n)^3 (s_t / s_f at its step)
    groups = min(n, SCHEDULE_POINTS)
    bounds = [round(i * n / groups) for i in range(groups + 1)]
    for g in range(groups):
        js = range(bounds[g] + 1, bounds[g + 1] + 1)
        frac = sum(1.0 - (1.0 - j / n) ** 3 for j in js) / len(js)
        pats = scaled(target, frac)
        out.append(Segment(f"pruning {g + 1}/{groups}", len(js) * dt, pats, wgrad="sparse", held="sparse"))
    out.append(Segment("pruning events", n, dict(target), held="sparse", extras=("prune-topk",), train=False))
    out.append(Segment("sparse", max(0.0, steps - t0 - n * dt), dict(target), wgrad="sparse", held="sparse"))
    return tuple(seg for seg in out if seg.steps > 0)


def _oneshot(steps: float, target: Mapping[str, Pattern], s: Mapping[str, float]) -> tuple[Segment, ...]:
    if not 0 <= s["prune_at"] < 1:
        raise TrainError(f"method oneshot: prune_at={s['prune_at']:g} must be in [0, 1)")
    t = s["prune_at"] * steps
    out = (Segment("dense", t, dense_patterns(target)),
           Segment("pruning event", 1, dict(target), held="sparse", extras=("prune-topk",), train=False),
           Segment("fine-tune", steps - t, dict(target), wgrad="sparse", held="sparse"))
    return tuple(seg for seg in out if seg.steps > 0)


def _imp(steps: float, target: Mapping[str, Pattern], s: Mapping[str, float]) -> tuple[Segment, ...]:
    k = int(s["rounds"])
    if k < 1 or k != s["rounds"]:
        raise TrainError(f"method imp: rounds={s['rounds']:g} must be a whole number >= 1")
    out = [Segment("round 0 (dense)", steps, dense_patterns(target))]
    for r in range(1, k + 1):
        out.append(Segment(f"pruning event {r}", 1, powered(target, r / k), held="sparse",
                           extras=("prune-topk",), train=False))
        out.append(Segment(f"round {r}", steps, powered(target, r / k), wgrad="sparse", held="sparse"))
    return tuple(out)


def _static(steps: float, target: Mapping[str, Pattern], s: Mapping[str, float]) -> tuple[Segment, ...]:
    return (Segment("sparse", steps, dict(target), wgrad="sparse", held="sparse"),)


def _snip(steps: float, target: Mapping[str, Pattern], s: Mapping[str, float]) -> tuple[Segment, ...]:
    # one dense forward/backward on the dense initial weights scores |g * w|; no update
    return (Segment("score batch (dense)", s["score_batches"], dense_patterns(target), optimizer=False),
            Segment("pruning event", 1, dict(target), held="sparse", extras=("prune-topk",), train=False),
            Segment("sparse", steps, dict(target), wgrad="sparse", held="sparse"))


def _updates(steps: float, s: Mapping[str, float], name: str) -> int:
    if s["every"] < 1:
        raise TrainError(f"method {name}: every={s['every']:g} must be at least one step")
    if not 0 <= s["end"] <= 1:
        raise TrainError(f"method {name}: end={s['end']:g} must be in [0, 1]")
    return _whole(s["end"] * steps / s["every"])


def _set(steps: float, target: Mapping[str, Pattern], s: Mapping[str, float]) -> tuple[Segment, ...]:
    n = _updates(steps, s, "set")
    out = (Segment("sparse", steps - n, dict(target), wgrad="sparse", held="sparse"),
           Segment("update steps", n, dict(target), wgrad="sparse", held="sparse",
                   extras=("prune-topk", "grow-random")))
    return tuple(seg for seg in out if seg.steps > 0)


def _rigl(steps: float, target: Mapping[str, Pattern], s: Mapping[str, float]) -> tuple[Segment, ...]:
    n = _updates(steps, s, "rigl")
    out = (Segment("sparse", steps - n, dict(target), wgrad="sparse", held="sparse"),
           Segment("update steps (dense grad)", n, dict(target), wgrad="dense", held="sparse",
                   extras=("prune-topk", "grow-gradient")))
    return tuple(seg for seg in out if seg.steps > 0)


def _nm(steps: float, target: Mapping[str, Pattern], s: Mapping[str, float]) -> tuple[Segment, ...]:
    return (Segment("2:4", steps, dict(target), wgrad="dense", held="dense+nm", extras=("nm-compress",)),)


_SCHEDULES: dict[str, Callable[[float, Mapping[str, Pattern], Mapping[str, float]], tuple[Segment, ...]]] = {
    "dense": _dense, "gmp": _gmp, "oneshot": _oneshot, "imp": _imp, "static": _static, "snip": _snip,
    "set": _set, "rigl": _rigl, "2:4": _nm,
}

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("dense", "dense", "dense training"),
    Method("gmp", "dense-to-sparse", "gradual magnitude pruning (Zhu & Gupta 2017), cubic schedule",
           {"start": 0.25, "end": 0.75, "every": 1000}),
    Method("oneshot", "dense-to-sparse", "dense training, one magnitude pruning event, sparse fine-tuning",
           {"prune_at": 0.5}),
    Method("imp", "dense-to-sparse", "iterative magnitude pruning with rewinding (lottery tickets)",
           {"rounds": 5}),
    Method("static", "static sparse-to-sparse", "a fixed mask from initialisation (random or ERK)"),
    Method("snip", "static sparse-to-sparse", "SNIP: one dense gradient batch scores the mask, then fixed",
           {"score_batches": 1}),
    Method("set", "dynamic sparse-to-sparse", "SET: drop by magnitude, regrow at random every ΔT steps",
           {"every": 100, "end": 0.75}),
    Method("rigl", "dynamic sparse-to-sparse", "RigL: drop by magnitude, regrow by dense-gradient magnitude every ΔT steps",
           {"every": 100, "end": 0.75}),
    Method("2:4", "semi-structured", "2:4 sparse training as torchao: transposable mask re-pruned every step, "
           "forward and grad-input on sparse tensor cores, grad-weight dense"),
)}

NM_PATTERN = nm_pattern(2, 4)


def get_method(name: str) -> Method:
    m = METHODS.get(name.strip().lower())
    if m is None:
        raise TrainError(f"method {name!r} is not one of {', '.join(METHODS)}")
    return m
