"""Build, check and pick up 0/1 masks for a pattern.

Masks are plain dense 0/1 tensors of the weight's shape (the handoff every sparse kernel library
and `torch.nn.utils.prune` uses). All work happens on the GEMM matrix view rows x K: a linear
weight is N x K, a conv weight Cout x Cin/g x kh x kw is viewed as Cout x (Cin/g*kh*kw), so
N:M groups run along the reduction dimension as sparse tensor cores require.

Density rounding (exactly-at-target rule): the number of kept units is
`max(1, floor(density * units + 0.5))`, where a unit is one weight (unstructured), one r x c
block counted on the zero-padded grid (block), one row or one group of `group` rows (channel).
N:M keeps exactly N of every full group of M along K and min(N, len) of a shorter tail group.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sparsesim.core.errors import MaskError
from sparsesim.sparsity.records import Pattern


# largest M for which N:M masks rank slots pairwise instead of calling topk (cost grows as M^2)
_RANK_MAX_M = 8


def kept_units(density: float, units: int) -> int:
    """How many units a mask at `density` keeps: nearest integer, at least one (see module doc)."""
    if units <= 0:
        return 0
    return min(units, max(1, math.floor(density * units + 0.5)))


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


def _scores(weight: torch.Tensor, scores: torch.Tensor | None, layer: str) -> torch.Tensor:
    if weight.device.type == "meta":
        raise MaskError(f"layer {layer!r}: weight is on the meta device; masks need real weights (use analytic stats)")
    s = weight.detach().abs() if scores is None else scores.detach()
    if tuple(s.shape) != tuple(weight.shape):
        raise MaskError(f"layer {layer!r}: scores shape {tuple(s.shape)} != weight shape {tuple(weight.shape)}")
    return matrix_view(s.float())


def _nm_mask(s: torch.Tensor, n: int, m: int) -> torch.Tensor:
    rows, k = s.shape
    pad = (-k) % m
    if pad:
        # padding scores are -inf: a short tail group never keeps a padding slot over a real one,
        # and padding slots are cut off afterwards, so the tail keeps at most min(n, len) weights
        s = torch.nn.functional.pad(s, (0, pad), value=float("-inf"))
    g = s.reshape(rows, -1, m)
    if m > _RANK_MAX_M:
        out = torch.zeros_like(g, dtype=torch.bool)
        out.scatter_(-1, g.topk(n, dim=-1).indices, True)
        return out.reshape(rows, -1)[:, :k]
    # small M: rank each slot against the others (ties go to the lower index); m*(m-1)
    # contiguous comparisons beat topk over a trailing dimension of 4 or 8 by ~1.5-2x
    slots = g.permute(2, 0, 1).contiguous()
    keep = torch.empty_like(slots, dtype=torch.bool)
    for i in range(m):
        rank = torch.zeros(slots.shape[1:], dtype=torch.uint8)
        for j in range(m):
            if j != i:
                rank += (slots[j] > slots[i]) if j > i else (slots[j] >= slots[i])
        keep[i] = rank < n
    return keep.permute(1, 2, 0).reshape(rows, -1)[:, :k]


def _block_mask(s: torch.Tensor, r: int, c: int, density: float) -> torch.Tensor:
    rows, k = s.shape
    pr, pc = (-rows) % r, (-k) % c
    sq = torch.nn.functional.pad(s * s, (0, pc, 0, pr))
    br, bc = sq.shape[0] // r, sq.shape[1] // c
    # block score = L2 norm of the scores inside the block (edge blocks are zero-padded)
    bs = sq.reshape(br, r, bc, c).sum(dim=(1, 3)).reshape(-1)
    keep = kept_units(density, bs.numel())
    bm = torch.zeros(bs.numel(), dtype=torch.bool)
    bm[bs.topk(keep).indices] = True
    full = bm.reshape(br, 1, bc, 1).expand(br, r, bc, c).reshape(br * r, bc * c)
    return full[:rows, :k]


def _channel_mask(s: torch.Tensor, density: float, group: int, layer: str) -> torch.Tensor:
    rows, k = s.shape
    if group < 1 or rows % group:
        raise MaskError(f"layer {layer!r}: {rows} rows cannot be pruned in units of {group} rows")
    unit_score = (s * s).reshape(rows // group, group * k).sum(dim=1)
    keep = kept_units(density, unit_score.numel())
    um = torch.zeros(unit_score.numel(), dtype=torch.bool)
    um[unit_score.topk(keep).indices] = True
    return um.repeat_interleave(group).reshape(rows, 1).expand(rows, k)


def _unstructured_mask(s: torch.Tensor, density: float) -> torch.Tensor:
    flat = s.reshape(-1).contiguous()
    keep = kept_units(density, flat.numel())
    if keep == flat.numel():
        return torch.ones(s.shape, dtype=torch.bool)
    # threshold by partial sort (numpy's introselect is ~6x faster than torch.topk on 45M
    # scores), then break ties at the threshold in index order so exactly `keep` survive
    thr = float(np.partition(flat.numpy(), flat.numel() - keep)[flat.numel() - keep])
    out = flat > thr
    short = keep - int(out.sum())
    if short > 0:
        ties = (flat == thr).nonzero().reshape(-1)[:short]
        out[ties] = True
    return out.reshape(s.shape)


def build_mask(weight: torch.Tensor, pattern: Pattern, *, scores: torch.Tensor | None = None,
               layer: str = "weight", group: int = 1) -> torch.Tensor:
    """A 0/1 mask (weight's shape and float dtype) keeping the highest-scoring weights in `pattern`.

    Scores default to |W| (magnitude); pass `activation_aware_scores(...)` for |W|*||x||.
    For channel patterns `group` is the number of rows pruned together (head_dim for whole
    attention heads; 1 for neurons / output channels).
    """
    s = _scores(weight, scores, layer)
    if pattern.kind == "dense":
        m = torch.ones_like(s, dtype=torch.bool)
    elif pattern.kind == "nm":
        m = _nm_mask(s, pattern.n, pattern.m)
    elif pattern.kind == "block":
        m = _block_mask(s, pattern.block[0], pattern.block[1], pattern.density)
    elif pattern.kind == "channel":
        m = _channel_mask(s, pattern.density, group, layer)
    elif pattern.kind == "unstructured":
        m = _unstructured_mask(s, pattern.density)
    else:
        raise MaskError(f"layer {layer!r}: unknown pattern kind {pattern.kind!r}")
    dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
    return m.reshape(weight.shape).to(dtype)


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
    b = _as_bool_matrix(mask, layer)
    rows, k = b.shape
    if pattern.kind == "nm":
        n, m = pattern.n, pattern.m
        pad = (-k) % m
        # float sums: vectorised and exact for counts this small
        counts = torch.nn.functional.pad(b.float(), (0, pad)).reshape(rows, -1, m).sum(-1)
        bad = (counts > n).nonzero()
        if bad.numel():
            r, g = (int(v) for v in bad[0])
            raise MaskError(
                f"layer {layer!r}: mask breaks {n}:{m} at row {r}, group {g} (columns {g * m}-"
                f"{min(k, (g + 1) * m) - 1}) with {int(counts[r, g])} nonzeros > {n}")
    elif pattern.kind == "block":
        r, c = pattern.block
        pr, pc = (-rows) % r, (-k) % c
        cnt = torch.nn.functional.pad(b.float(), (0, pc, 0, pr))
        br, bc = cnt.shape[0] // r, cnt.shape[1] // c
        cnt = cnt.reshape(br, r, bc, c).sum(dim=(1, 3))
        hr = torch.full((br,), float(r))
        hc = torch.full((bc,), float(c))
        if pr:
            hr[-1] = rows % r
        if pc:
            hc[-1] = k % c
        area = hr[:, None] * hc[None, :]  # real (unpadded) cells of each block
        bad = ((cnt > 0) & (cnt < area)).nonzero()
        if bad.numel():
            i, j = (int(v) for v in bad[0])
            raise MaskError(
                f"layer {layer!r}: mask breaks block{r}x{c} at block ({i}, {j}) (rows {i * r}-"
                f"{min(rows, (i + 1) * r) - 1}, columns {j * c}-{min(k, (j + 1) * c) - 1}): "
                f"{int(cnt[i, j])} of {int(area[i, j])} kept; blocks must be all or nothing")
    elif pattern.kind == "channel":
        _check_channel(b, layer, group)


def _check_channel(b: torch.Tensor, layer: str, group: int) -> None:
    """Channel pruning leaves a smaller dense matrix: the kept cells are exactly
    (kept rows) x (kept columns); rows go in units of `group` (whole attention heads)."""
    rows, k = b.shape
    if group < 1 or rows % group:
        raise MaskError(f"layer {layer!r}: {rows} rows cannot be checked in units of {group} rows")
    row_kept, col_kept = b.any(dim=1), b.any(dim=0)
    wrong = (b != (row_kept[:, None] & col_kept[None, :])).any(dim=1).nonzero()
    if wrong.numel():
        i = int(wrong[0])
        raise MaskError(
            f"layer {layer!r}: mask breaks channel pruning at row {i}: it keeps {int(b[i].sum())} of the "
            f"{int(col_kept.sum())} kept columns; a row is kept whole (over the kept columns) or pruned whole")
    if group > 1:
        per_unit = row_kept.reshape(rows // group, group).sum(dim=1)
        bad = ((per_unit > 0) & (per_unit < group)).nonzero()
        if bad.numel():
            u = int(bad[0])
            raise MaskError(
                f"layer {layer!r}: mask breaks channel pruning at rows {u * group}-{(u + 1) * group - 1} "
                f"(unit {u} of {group} rows): {int(per_unit[u])} of {group} rows kept; a head is kept or pruned whole")


def _resolve(module: torch.nn.Module, param_name: str) -> tuple[torch.nn.Module, str]:
    if "." in param_name:
        owner, local = param_name.rsplit(".", 1)
        return module.get_submodule(owner), local
    return module, param_name


def existing_mask(module: torch.nn.Module, param_name: str = "weight") -> torch.Tensor | None:
    """The mask already in effect for `module.<param_name>`, or None if the weight has no zeros.

    Picks up `torch.nn.utils.prune` reparametrisations (a `<name>_mask` buffer next to
    `<name>_orig`; the forward pre-hook recomputes `<name>` from them) and exact zeros already
    stored in the weight. `param_name` may be dotted relative to `module`.
    """
    owner, local = _resolve(module, param_name)
    if local.endswith("_orig"):
        local = local[: -len("_orig")]
    orig = getattr(owner, local + "_orig", None)
    prune_mask = getattr(owner, local + "_mask", None)
    if isinstance(orig, torch.Tensor) and isinstance(prune_mask, torch.Tensor):
        w = orig.detach() * prune_mask
    else:
        w = getattr(owner, local, None)
        if not isinstance(w, torch.Tensor):
            raise MaskError(f"layer {param_name!r}: module {type(owner).__name__} has no tensor {local!r}")
        w = w.detach()
    if w.device.type == "meta":
        return None
    keep = w != 0
    if bool(keep.all()):
        return None
    return keep.to(w.dtype if w.dtype.is_floating_point else torch.float32)
