"""Ops, sparsity records and edited device files that several test files build."""

from __future__ import annotations

import tomllib

import torch

from sparsesim.core.ir import DTYPE_BYTES, GemmShape, Op
from sparsesim.hw.devices import Device, builtin_device_files, parse_device_doc
from sparsesim.sparsity.formats import format_bytes, storage_format
from sparsesim.sparsity.patterns import parse_pattern
from sparsesim.sparsity.records import LayerSparsity, Pattern
from sparsesim.sparsity.stats import measure_stats


def linear(m: int, n: int, k: int, dtype: str = "int8", act: float = 1.0, batch: int = 1) -> Op:
    """A linear layer `fc` with an N x K weight, M rows per batch element, activation density `act`."""
    return Op(0, "linear", "aten.mm", "fc", 0, dtype, ((m, k),), (m, n), 2 * m * n * k * batch, 0,
              GemmShape(m, n, k, batch=batch), None, "fc.weight", (n, k), activation_density=act,
              activation_measured=act < 1)


def fp16_linear(i: int, m: int, n: int, k: int, name: str, weight: str | None = None) -> Op:
    """Op `i`: an fp16 linear layer `name` (M x K activations, N x K weight `weight`, default
    `<name>.weight`), with its traced bytes."""
    return Op(index=i, kind="linear", aten="aten.addmm", module=name, call_index=0, dtype="fp16",
              input_shapes=((m, k), (n, k)), output_shape=(m, n), flops=2 * m * n * k,
              bytes_moved=2 * (m * k + n * k + m * n), gemm=GemmShape(m, n, k),
              weight=weight or f"{name}.weight", weight_shape=(n, k))


def layer_of(mask: torch.Tensor, pattern: Pattern | str, dtype: str = "int8") -> LayerSparsity:
    """What a plan attaches to a weight: measured stats and the bytes of its storage format."""
    pat = parse_pattern(pattern) if isinstance(pattern, str) else pattern
    stats = measure_stats(mask, pattern=pat)
    vb = DTYPE_BYTES[dtype]
    fmt = storage_format(pat, stats, value_bytes=vb)
    size = format_bytes(fmt, stats, value_bytes=vb, pattern=pat)
    return LayerSparsity("fc.weight", pat, stats, fmt, size.total, size.values, size.metadata)


def device_with(base: str, **fields) -> Device:
    """A built-in device file with some fields replaced: a dict replaces the whole entry (a
    per-dtype table), anything else the value only (the other numbers keep their sources)."""
    doc = tomllib.loads(builtin_device_files()[base].read_text())
    for key, value in fields.items():
        if isinstance(value, dict):
            doc[key] = value
        else:
            doc[key] = {**doc[key], "value": value}
    return parse_device_doc(doc, f"{base}.toml (test copy)")
