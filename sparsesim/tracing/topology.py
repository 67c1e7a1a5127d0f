"""SCALE-Sim topology files as workloads and plans: the same input, both tools.

A SCALE-Sim user already describes a network as a topology CSV (one layer per row, a header
line first, every row ending in a comma; peers.md). `sparsesim estimate net.csv` reads it as
SCALE-Sim does, so the two tools can be run side by side on one file:

* convolution rows: `name, IFMAP height, IFMAP width, filter height, filter width, channels,
  filters, stride[, n:m],`. SCALE-Sim models no padding and sizes outputs with a ceiling,
  ceil((H - F + s) / s); a row whose name contains `DP` is depthwise (SCALE-Sim runs one
  single-channel layer per channel; here one grouped convolution, groups = channels);
* GEMM rows: `name, M, N, K[, n:m],` (M output rows, N output columns, K reduction).

The file's kind is read from its header (`IFMAP` names a convolution file; `M, N, K` a GEMM one).
Batch is 1, as in SCALE-Sim. SCALE-Sim counts words, not bytes: the layers are `int8` (a
one-byte word) unless the spec says `file.csv:dtype=fp16`. The optional `n:m` column is the
layer's sparsity: `load_plan("net.csv")` is the plan with those ratios (a ratio n:m keeps n of
every m weights along K, as SCALE-Sim's layer-wise sparsity does).

Standard library only: a topology run imports no torch until a plan needs masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from sparsesim.core.errors import WorkloadError
from sparsesim.core.ir import DTYPE_BYTES, ConvGeometry, GemmShape, Op, WeightInfo, Workload
from sparsesim.tracing.specs import parse_params

SUFFIX = ".csv"
DEFAULT_DTYPE = "int8"  # SCALE-Sim's unit is a word; one byte
DEPTHWISE_MARK = "DP"   # SCALE-Sim's spelling for a depthwise layer (a substring of its name)
DENSE_RATIO = (1, 1)
PARAMS = ("dtype",)


@dataclass(frozen=True)
class TopologyLayer:
    """One row of a topology file, as SCALE-Sim reads it."""

    name: str
    kind: str                  # "conv" or "gemm"
    dims: tuple[int, ...]      # conv: (H, W, FH, FW, C, F, stride); gemm: (M, N, K)
    ratio: tuple[int, int]     # n:m kept along K (1:1 = dense)
    line: int


def is_topology(spec: str) -> bool:
    """Whether a workload spec names a topology file (`net.csv` or `net.csv:dtype=...`)."""
    return spec.strip().partition(":")[0].lower().endswith(SUFFIX)


def read_topology(path: str | Path) -> list[TopologyLayer]:
    """The layers of a topology file; WorkloadError naming the file, line and field otherwise."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise WorkloadError(f"topology file {str(p)!r} does not exist") from None
    except UnicodeDecodeError as e:
        raise WorkloadError(f"topology file {str(p)!r}: not a text file (byte {e.start})") from None
    except OSError as e:
        raise WorkloadError(f"topology file {str(p)!r}: cannot read ({e.strerror or e})") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise WorkloadError(f"topology file {str(p)!r}: empty (a header line, then one layer per line)")
    header = [h.strip().lower() for h in lines[0].split(",")]
    if any("ifmap" in h for h in header):
        kind, fields = "conv", 7
    elif header[1:4] == ["m", "n", "k"]:
        kind, fields = "gemm", 3
    else:
        raise WorkloadError(f"topology file {str(p)!r}: header {lines[0].strip()!r} is neither SCALE-Sim's "
                            "convolution header (Layer name, IFMAP Height, ...) nor its GEMM header (Layer, M, N, K)")
    layers, names = [], set()
    for no, raw in enumerate(lines[1:], start=2):
        row = raw.strip()
        if not row:
            continue
        where = f"topology file {str(p)!r} line {no}"
        cells = [c.strip() for c in row.split(",")]
        if cells and cells[-1] == "":
            cells = cells[:-1]  # SCALE-Sim's rows end in a comma
        if len(cells) not in (1 + fields, 2 + fields):
            raise WorkloadError(f"{where}: {len(cells)} fields; a {kind} row has a name, {fields} sizes and "
                                "an optional n:m ratio")
        name = cells[0]
        if not name or name in names:
            raise WorkloadError(f"{where}: layer name {name!r} is {'empty' if not name else 'repeated'}")
        names.add(name)
        dims = tuple(_positive(c, where, label) for c, label in zip(cells[1:1 + fields], _labels(kind)))
        ratio = _ratio(cells[1 + fields], where) if len(cells) == 2 + fields else DENSE_RATIO
        if kind == "conv":
            h, w, fh, fw = dims[:4]
            if fh > h or fw > w:
                raise WorkloadError(f"{where}: filter {fh}x{fw} is larger than the input {h}x{w} "
                                    "(SCALE-Sim models no padding: fold it into the input size)")
        layers.append(TopologyLayer(name, kind, dims, ratio, no))
    if not layers:
        raise WorkloadError(f"topology file {str(p)!r}: no layers after the header")
    return layers


def load_topology(spec: str) -> Workload:
    """The workload of a topology spec (`net.csv`, `net.csv:dtype=fp16`): one op per layer."""
    head, _, tail = spec.strip().partition(":")
    given = parse_params(tail, where=f"workload {spec!r}")
    for key in given:
        if key not in PARAMS:
            raise WorkloadError(f"workload {spec!r}: unknown parameter {key!r} (a topology file takes: "
                                f"{', '.join(PARAMS)})")
    dtype = given.get("dtype", DEFAULT_DTYPE)
    if dtype not in DTYPE_BYTES:
        raise WorkloadError(f"workload {spec!r}: unknown dtype {dtype!r} (use one of {', '.join(DTYPE_BYTES)})")
    ops = tuple(_op(i, layer, dtype) for i, layer in enumerate(read_topology(head)))
    weights = {op.weight: WeightInfo(op.weight, op.weight_shape, dtype, True)
               for op in ops if op.weight is not None and op.weight_shape is not None}
    return Workload(name=spec.strip(), ops=ops, weights=weights,
                    params={"topology": str(Path(head)), "dtype": dtype},
                    notes=(f"read from the topology file {head} as SCALE-Sim reads it: batch 1, no padding",))


def topology_ratios(path: str | Path) -> dict[str, tuple[int, int]]:
    """Layer name -> the n:m ratio its row names, for the rows that are not dense (1:1)."""
    return {layer.name: layer.ratio for layer in read_topology(path)
            if layer.ratio[0] < layer.ratio[1]}


def _op(index: int, layer: TopologyLayer, dtype: str) -> Op:
    b = DTYPE_BYTES[dtype]
    weight = f"{layer.name}.weight"
    if layer.kind == "gemm":
        m, n, k = layer.dims
        return Op(index, "linear", "aten.mm", layer.name, 0, dtype, ((m, k),), (m, n), 2 * m * n * k,
                  round((m * k + n * k + m * n) * b), GemmShape(m, n, k), None, weight, (n, k))
    h, w, fh, fw, c, f, s = layer.dims
    oh, ow = math.ceil((h - fh + s) / s), math.ceil((w - fw + s) / s)
    if DEPTHWISE_MARK in layer.name:
        groups, cout, w_shape = c, c * f, (c * f, 1, fh, fw)
    else:
        groups, cout, w_shape = 1, f, (f, c, fh, fw)
    gemm = GemmShape(m=oh * ow, n=cout // groups, k=c // groups * fh * fw, batch=1, groups=groups)
    geom = ConvGeometry(c, cout, (fh, fw), (s, s), (0, 0), (1, 1), groups, (h, w), (oh, ow))
    moved = c * h * w + math.prod(w_shape) + cout * oh * ow
    return Op(index, "conv", "aten.convolution", layer.name, 0, dtype, ((1, c, h, w),), (1, cout, oh, ow),
              2 * gemm.macs, round(moved * b), gemm, geom, weight, w_shape)


def _labels(kind: str) -> tuple[str, ...]:
    if kind == "gemm":
        return ("M", "N", "K")
    return ("IFMAP height", "IFMAP width", "filter height", "filter width", "channels", "filters", "stride")


def _positive(cell: str, where: str, label: str) -> int:
    try:
        value = int(cell)
    except ValueError:
        raise WorkloadError(f"{where}: {label} {cell!r} is not an integer") from None
    if value < 1:
        raise WorkloadError(f"{where}: {label} {value} must be at least 1")
    return value


def _ratio(cell: str, where: str) -> tuple[int, int]:
    n, colon, m = cell.partition(":")
    try:
        ratio = (int(n), int(m))
    except ValueError:
        ratio = (0, 0)
    if not colon or not 1 <= ratio[0] <= ratio[1]:
        raise WorkloadError(f"{where}: sparsity {cell!r} is not an n:m ratio with 1 <= n <= m")
    return ratio
