"""Build, check and pick up 0/1 masks for a pattern.

Masks are plain dense 0/1 tensors of the weight's shape (the handoff every sparse kernel library
and `torch.nn.utils.prune` uses). Each pattern kind builds and checks its own masks (its module
in `sparsesim.sparsity.kinds`); this module supplies the shared steps around them. All work happens on the GEMM matrix view rows x K: a linear
weight is N x K, a conv weight Cout x Cin/g x kh x kw is viewed as Cout x (Cin/g*kh*kw), so
N:M groups run along the reduction dimension as sparse tensor cores require.

Density rounding (exactly-at-target rule): the number of kept units is
`max(1, floor(density * units + 0.5))`, where a unit is one weight (unstructured), one r x c
block counted on the zero-padded grid (block), one row or one group of `group` rows (channel).
N:M keeps exactly N of every full group of M along K and min(N, len) of a shorter tail group.
A group or block side longer than the matrix is the matrix itself: nothing is allocated beyond
the weight's own size, whatever the pattern's numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sparsesim.core.errors import MaskError
from sparsesim.core.lazy import lazy_module
from sparsesim.sparsity.records import Pattern

if TYPE_CHECKING:
    import numpy as np
    import torch
else:
    np = lazy_module("numpy")
    torch = lazy_module("torch")


def kept_units(density: float, units: int) -> int:
    """How many units a mask at `density` keeps: nearest integer, at least one (see module doc)."""
    if units <= 0:
        return 0
    return min(units, max(1, math.floor(density * units + 0.5)))


# cells per slice when a weight-sized computation is done a band of rows at a time: a band's
# temporaries (a few MB) are reused by the allocator, where weight-sized ones are fresh pages
# each time, whose faults cost more than the arithmetic on them
SLICE_CELLS = 1 << 20
# kth_smallest: arrays up to this size are partitioned whole; larger ones are first narrowed to
# the values between two sample quantiles (an evenly strided sample of a 1/SELECT_SAMPLE_SHARE of
# the values, within SELECT_SAMPLE_MIN..MAX: measured fastest from 0.6M to 67M values; the
# quantiles SELECT_MARGIN sample standard deviations of the rank either side of k)
SELECT_DIRECT = 1 << 16
SELECT_SAMPLE_SHARE = 1024
SELECT_SAMPLE_MIN, SELECT_SAMPLE_MAX = 1 << 14, 1 << 16
SELECT_MARGIN = 6.0


def kth_smallest(values: np.ndarray, k: int) -> float:
    """The k-th smallest value (0-based) of a 1-D array, exactly as `np.partition(values, k)[k]`.

    Selection over a whole weight is the bulk of building an unstructured mask, and a partition
    (introselect, ~10 ns a value) costs 10-20x a vectorised comparison. So a sample's quantiles
    bracket the k-th value first (Floyd and Rivest's selection): two comparisons over the array
    count what lies below the bracket and pick what lies in it, and only that small band is
    partitioned. A bracket that misses (a sample unlike the whole) falls back to the whole."""
    n = values.size
    if not 0 <= k < n:
        raise IndexError(f"k={k} is outside an array of {n} values")
    if n <= SELECT_DIRECT:
        return float(np.partition(values, k)[k])
    size = min(SELECT_SAMPLE_MAX, max(SELECT_SAMPLE_MIN, n // SELECT_SAMPLE_SHARE))
    sample = np.sort(values[:: max(1, n // size)])
    at = k / n * sample.size
    spread = SELECT_MARGIN * math.sqrt(sample.size)
    lo = sample[max(0, math.floor(at - spread))]
    hi = sample[min(sample.size - 1, math.ceil(at + spread))]
    below = int(np.count_nonzero(values < lo))
    band = values[(values >= lo) & (values <= hi)]
    if below <= k < below + band.size:
        return float(np.partition(band, k - below)[k - below])
    return float(np.partition(values, k)[k])



def row_bands(rows: int, cols: int, unit: int = 1) -> Iterator[slice]:
    """Slices of about SLICE_CELLS cells covering `rows` rows, each a whole number of `unit` rows."""
    step = max(1, SLICE_CELLS // max(1, cols * unit)) * unit
    for lo in range(0, rows, step):
        yield slice(lo, min(rows, lo + step))


def matrix_view(t: torch.Tensor) -> torch.Tensor:
    """The rows x K view a mask is built on (conv weights flatten all but the output channel)."""
    if t.dim() == 0:
        return t.reshape(1, 1)
    return t.reshape(t.shape[0], -1)


def activation_aware_scores(weight: torch.Tensor, act_norms: torch.Tensor, *, layer: str = "weight") -> torch.Tensor:
    """|W| * ||x|| (Wanda-style), broadcasting per-input-feature activation norms along K.

    `act_norms` may hold one norm per K column (Linear in_features, or a conv's Cin/g*kh*kw),
    one per input channel of the group a conv weight sees (Cin/g), one per input channel of
    a grouped/depthwise conv (Cin = groups * Cin/g; output channel o then reads group
    o // (Cout/groups)), or a tensor already shaped to broadcast against the weight.
    """
    w = weight.detach().abs().float()
    a = torch.as_tensor(act_norms).detach().float().reshape(-1).to(w.device)
    if w.dim() < 2:
        raise MaskError(f"layer {layer!r}: activation-aware scores need a 2-D or conv weight, got shape {tuple(w.shape)}")
    rows, cin_g = w.shape[0], w.shape[1]
    k = w[0].numel()
    raw = torch.as_tensor(act_norms).detach().float().to(w.device)
    if raw.dim() == w.dim() and all(a in (1, b) for a, b in zip(raw.shape, w.shape)):
        return w * raw  # already shaped to broadcast against the weight as stored (the tracer's form)
    tail = (1,) * (w.dim() - 2)
    if a.numel() == k:
        return w * a.reshape(w.shape[1:]).unsqueeze(0)
    if a.numel() == cin_g:
        return w * a.reshape(1, cin_g, *tail)
    if a.numel() % cin_g == 0 and rows % (a.numel() // cin_g) == 0:
        groups = a.numel() // cin_g
        per_group = a.reshape(groups, cin_g)
        owner = torch.arange(rows, device=w.device) // (rows // groups)
        return w * per_group[owner].reshape(rows, cin_g, *tail)
    raise MaskError(
        f"layer {layer!r}: {a.numel()} activation norms do not fit weight shape {tuple(w.shape)} "
        f"(expected {k}, {cin_g} or a multiple of {cin_g} for grouped convs)")


def _checked_scores(weight: torch.Tensor, scores: torch.Tensor | None, layer: str) -> torch.Tensor | None:
    if weight.device.type == "meta":
        raise MaskError(f"layer {layer!r}: weight is on the meta device; masks need real weights (use analytic stats)")
    if scores is not None and tuple(scores.shape) != tuple(weight.shape):
        raise MaskError(f"layer {layer!r}: scores shape {tuple(scores.shape)} != weight shape {tuple(weight.shape)}")
    return None if scores is None else scores.detach()


def _scores(weight: torch.Tensor, scores: torch.Tensor | None, layer: str, signed: bool = False) -> torch.Tensor:
    """Scores as the float rows x K matrix; with `signed`, magnitudes may come as the weight
    itself (for kinds reading scores only squared: the same squares, no |W| copy)."""
    s = _checked_scores(weight, scores, layer)
    if s is None:
        s = weight.detach() if signed else weight.detach().abs()
    return matrix_view(s.float())


def build_mask(weight: torch.Tensor, pattern: Pattern, *, scores: torch.Tensor | None = None,
               layer: str = "weight", group: int = 1) -> torch.Tensor:
    """A 0/1 mask (weight's shape and float dtype) keeping the highest-scoring weights in `pattern`.

    Scores default to |W| (magnitude); pass `activation_aware_scores(...)` for |W|*||x||.
    For channel patterns `group` is the number of rows pruned together (head_dim for whole
    attention heads; 1 for neurons / output channels).
    """
    m = keep_matrix(weight, pattern, scores=scores, layer=layer, group=group)
    dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
    return m.reshape(weight.shape).to(dtype)


def keep_matrix(weight: torch.Tensor, pattern: Pattern, *, scores: torch.Tensor | None = None,
                layer: str = "weight", group: int = 1) -> torch.Tensor:
    """What `build_mask` keeps, as the bool rows x K matrix view (no float copy of a weight-sized
    tensor: sparsify measures and stores masks as bools). Row-local kinds (N:M) are built a
    band of rows at a time from the bands' scores (|W| by default), the same masks without a
    weight-sized score tensor."""
    spec = pattern.spec
    if not spec.row_local:
        return spec.build_mask(_scores(weight, scores, layer, spec.squares_scores), pattern, group=group, layer=layer)
    given = _checked_scores(weight, scores, layer)
    w = matrix_view(weight.detach() if given is None else given)
    out = torch.empty(w.shape, dtype=torch.bool)
    for band in row_bands(*w.shape):
        s = (w[band].abs() if given is None else w[band]).float()
        out[band] = spec.build_mask(s, pattern, group=group, layer=layer)
    return out


def _as_bool_matrix(mask: torch.Tensor, layer: str) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return matrix_view(mask)
    bad = (mask != 0) & (mask != 1)
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0].tolist())
        raise MaskError(f"layer {layer!r}: mask holds {float(mask[where]):g} at index {where}; masks must be 0/1")
    return matrix_view(mask != 0)


def check_mask(mask: torch.Tensor, pattern: Pattern, *, layer: str,
               shape: tuple[int, ...] | None = None, group: int = 1) -> None:
    """Raise MaskError naming `layer` and the first violation if `mask` does not conform.

    Checks: shape (when `shape` is given), 0/1 values, and the pattern's structure: at most N
    nonzeros per group of M along K; blocks either empty or full; channel: the kept cells form
    a submatrix (whole rows, in units of `group` rows, and whole input columns, which is what
    a consumer of pruned heads/channels gets). Density is not checked: a given mask sets it.
    """
    if not isinstance(mask, torch.Tensor):
        raise MaskError(f"layer {layer!r}: mask is a {type(mask).__name__}, not a tensor")
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise MaskError(f"layer {layer!r}: mask shape {tuple(mask.shape)} != weight shape {tuple(shape)}")
    pattern.spec.check_mask(_as_bool_matrix(mask, layer), pattern, group=group, layer=layer)


def _resolve(module: torch.nn.Module, param_name: str) -> tuple[torch.nn.Module, str]:
    if "." in param_name:
        owner, local = param_name.rsplit(".", 1)
        return module.get_submodule(owner), local
    return module, param_name


def _effective(module: torch.nn.Module, param_name: str) -> torch.Tensor:
    """The weight in effect for `module.<param_name>`: `<name>_orig * <name>_mask` under
    `torch.nn.utils.prune` (its forward pre-hook recomputes `<name>` from them), else the stored
    tensor."""
    owner, local = _resolve(module, param_name)
    if local.endswith("_orig"):
        local = local[: -len("_orig")]
    orig = getattr(owner, local + "_orig", None)
    prune_mask = getattr(owner, local + "_mask", None)
    if isinstance(orig, torch.Tensor) and isinstance(prune_mask, torch.Tensor):
        return orig.detach() * prune_mask
    stored = getattr(owner, local, None)
    if not isinstance(stored, torch.Tensor):
        raise MaskError(f"layer {param_name!r}: module {type(owner).__name__} has no tensor {local!r}")
    return stored.detach()


def _kept(w: torch.Tensor) -> torch.Tensor | None:
    # one count, no weight-sized temporary, finds the usual weight without zeros
    if w.device.type == "meta" or int(torch.count_nonzero(w)) == w.numel():
        return None
    return w != 0


def existing_keep(module: torch.nn.Module, param_name: str = "weight") -> torch.Tensor | None:
    """What `existing_mask` finds, as a bool tensor (no float copy of a weight-sized mask:
    sparsify measures and stores masks as bools)."""
    return _kept(_effective(module, param_name))


def existing_mask(module: torch.nn.Module, param_name: str = "weight") -> torch.Tensor | None:
    """The mask already in effect for `module.<param_name>`, or None if the weight has no zeros.

    Picks up `torch.nn.utils.prune` reparametrisations (a `<name>_mask` buffer next to
    `<name>_orig`) and exact zeros already stored in the weight. `param_name` may be dotted
    relative to `module`. The mask has the weight's float dtype (float32 for other dtypes).
    """
    w = _effective(module, param_name)
    keep = _kept(w)
    return None if keep is None else keep.to(w.dtype if w.dtype.is_floating_point else torch.float32)
