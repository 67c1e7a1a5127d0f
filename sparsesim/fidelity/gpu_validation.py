"""Check the GPU model against published (and locally measured) GPU figures.

The table `sparsesim/validation_data/gpu_published.csv` holds one row per published case: the
GPU (a device file name), dtype, GEMM shape M x N x K (activation rows, weight rows, weight cols),
the measured dense/sparse times and speedup when the source gives them, the pattern, the phase
(`forward`: one linear; `training`: forward plus both backward GEMMs, the weight-gradient GEMM
dense, as torchao's 2:4 training runs it), the direction the source reports, and the source with
its confidence tag. `benchmarks/gpu_measure.py` appends measured rows to the same table.

None of these figures is an input to the device files' kernel efficiencies; they are predicted.
"""

from __future__ import annotations

import csv
import math
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd

from sparsesim.cost import estimate_op
from sparsesim.hw.devices import Device, load_device
from sparsesim.core.errors import SparsesimError, WorkloadError
from sparsesim.core.ir import DTYPE_BYTES, GemmShape, Op
from sparsesim.sparsity.records import LayerSparsity, Pattern

TABLE_COLUMNS = (
    "case", "device", "dtype", "M", "N", "K", "dense_ms", "sparse_ms", "measured_speedup",
    "pattern", "phase", "direction", "source", "conf", "date_added",
)
PHASES = ("forward", "training")
DIRECTIONS = ("faster", "slower", "not_faster")
# "no meaningful speedup": within 10% of dense (the wording for batch-1 GEMV with 2:4)
NO_SPEEDUP_BAND = 0.10


def published_table_path() -> Path:
    """The packaged validation table (also where gpu_measure.py appends measured rows)."""
    return Path(str(resources.files("sparsesim").joinpath("validation_data", "gpu_published.csv")))


def load_table(path: str | Path | None = None) -> list[dict[str, str]]:
    """Rows of the validation table; a bad header or value raises naming the file and row."""
    p = Path(path) if path is not None else published_table_path()
    try:
        with p.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in TABLE_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise WorkloadError(f"{p}: validation table lacks column(s) {', '.join(missing)}")
            rows = [dict(r) for r in reader]
    except OSError as e:
        raise WorkloadError(f"{p}: cannot read validation table ({e.strerror})") from None
    for i, r in enumerate(rows, start=2):
        where = f"{p}:{i} (case {r.get('case')!r})"
        for c in ("M", "N", "K"):
            if not (r[c] or "").strip().isdigit() or int(r[c]) <= 0:
                raise WorkloadError(f"{where}: column {c} must be a positive integer, got {r[c]!r}")
        if r["phase"] not in PHASES:
            raise WorkloadError(f"{where}: phase must be one of {', '.join(PHASES)}, got {r['phase']!r}")
        if r["direction"] not in DIRECTIONS:
            raise WorkloadError(f"{where}: direction must be one of {', '.join(DIRECTIONS)}, got {r['direction']!r}")
        if r["dtype"] not in DTYPE_BYTES:
            raise WorkloadError(f"{where}: unknown dtype {r['dtype']!r}")
        for c in ("dense_ms", "sparse_ms", "measured_speedup"):
            if (r[c] or "").strip():
                try:
                    float(r[c])
                except ValueError:
                    raise WorkloadError(f"{where}: column {c} must be a number, got {r[c]!r}") from None
    return rows


def gemm_op(m: int, n: int, k: int, dtype: str, *, weight: str | None = "weight", index: int = 0) -> Op:
    """A linear op (x[M,K] @ W[N,K]^T) or, with weight=None, a weightless matmul, for one GEMM."""
    db = DTYPE_BYTES[dtype]
    return Op(
        index=index, kind="linear" if weight else "matmul", aten="aten.mm.default", module="validation",
        call_index=0, dtype=dtype, input_shapes=((m, k), (n, k) if weight else (k, n)), output_shape=(m, n),
        flops=2 * m * n * k, bytes_moved=int((m * k + n * k + m * n) * db), gemm=GemmShape(m, n, k),
        weight=weight, weight_shape=(n, k) if weight else None,
    )


def layer_for(weight: str, rows: int, cols: int, pattern: Pattern, dtype: str) -> LayerSparsity:
    """LayerSparsity of a rows x cols weight under `pattern`, with analytic stats (as on meta)."""
    from sparsesim.sparsity.formats import format_bytes, storage_format
    from sparsesim.sparsity.stats import analytic_stats

    stats = analytic_stats(rows, cols, pattern)
    vb = DTYPE_BYTES[dtype]
    fmt = storage_format(pattern, stats, value_bytes=vb)
    size = format_bytes(fmt, stats, value_bytes=vb, pattern=pattern)
    return LayerSparsity(weight=weight, pattern=pattern, stats=stats, format=fmt, format_bytes=size.total,
                         value_bytes=size.values, metadata_bytes=size.metadata)


def phase_ops(m: int, n: int, k: int, dtype: str, pattern: Pattern, phase: str
              ) -> list[tuple[Op, LayerSparsity | None, LayerSparsity | None]]:
    """(op, dense layer, sparse layer) for each GEMM of a case.

    training = forward Y = X W^T (W sparse), grad-input dX = dY W (W^T sparse: torchao keeps a
    transposed 2:4 copy) and grad-weight dW = dY^T X (dense: no weight operand).
    """
    fwd = gemm_op(m, n, k, dtype)
    out = [(fwd, None, layer_for("weight", n, k, pattern, dtype))]
    if phase == "training":
        bwd_in = gemm_op(m, k, n, dtype, weight="weight_t", index=1)
        out.append((bwd_in, None, layer_for("weight_t", k, n, pattern, dtype)))
        out.append((gemm_op(n, k, m, dtype, weight=None, index=2), None, None))
    return out


def predict_case(row: Mapping[str, str], device: Device) -> dict:
    """Predicted dense and sparse latency of one table row on `device` (sum over its GEMMs)."""
    from sparsesim.sparsity.patterns import parse_pattern

    m, n, k = int(row["M"]), int(row["N"]), int(row["K"])
    pattern = parse_pattern(row["pattern"])
    dense_s = sparse_s = 0.0
    kernels, whys, fallback = [], [], False
    for op, dense_layer, sparse_layer in phase_ops(m, n, k, row["dtype"], pattern, row["phase"]):
        d = estimate_op(op, dense_layer, device)
        s = estimate_op(op, sparse_layer, device)
        dense_s += d.latency_s
        sparse_s += s.latency_s
        kernels.append(s.kernel)
        whys.append(s.why)
        fallback = fallback or s.fallback
    return {
        "predicted_dense_ms": dense_s * 1e3,
        "predicted_sparse_ms": sparse_s * 1e3,
        "predicted_speedup": dense_s / sparse_s if sparse_s > 0 else math.nan,
        "kernel": " + ".join(kernels),
        "fallback": fallback,
        "why": " | ".join(whys),
    }


def direction_of(speedup: float) -> str:
    if speedup > 1 + NO_SPEEDUP_BAND:
        return "faster"
    if speedup < 1:
        return "slower"
    return "not_faster"


def direction_right(expected: str, speedup: float) -> bool:
    """Whether a predicted speedup agrees with the direction the source reports."""
    if expected == "faster":
        return speedup > 1
    if expected == "slower":
        return speedup < 1
    return speedup <= 1 + NO_SPEEDUP_BAND


def _device_map(devices: Iterable[Device | str] | Mapping[str, Device] | None) -> dict[str, Device] | None:
    if devices is None:
        return None
    if isinstance(devices, Mapping):
        return {str(k).lower(): v for k, v in devices.items()}
    out = {}
    for d in devices:
        dev = load_device(d) if isinstance(d, str) else d
        out[dev.name.lower()] = dev
        out[Path(dev.path).stem.lower()] = dev
    return out


def validate_gpu_published(
    devices: Iterable[Device | str] | Mapping[str, Device] | None = None,
    *,
    table: str | Path | None = None,
) -> pd.DataFrame:
    """Predict every row of the GPU validation table and compare with what was measured.

    `devices` selects the devices to check (names, Device objects, or name -> Device); rows on
    other devices are skipped. With None every row is checked on its built-in device file; a
    row whose device has no file is kept with NaN predictions and a why saying so.
    Columns: the table's, plus predicted_dense_ms, predicted_sparse_ms, predicted_speedup,
    abs_error (|predicted/measured - 1|, NaN for direction-only rows), predicted_direction,
    direction_right, kernel, fallback, why.
    """
    wanted = _device_map(devices)
    records = []
    for row in load_table(table):
        name = row["device"].lower()
        if wanted is not None:
            if name not in wanted:
                continue
            device: Device | None = wanted[name]
        else:
            try:
                device = load_device(row["device"])
            except SparsesimError as e:
                device, missing = None, str(e)
        rec: dict = {c: row[c] for c in TABLE_COLUMNS}
        for c in ("M", "N", "K"):
            rec[c] = int(row[c])
        for c in ("dense_ms", "sparse_ms", "measured_speedup"):
            rec[c] = float(row[c]) if (row[c] or "").strip() else math.nan
        if device is None:
            rec.update(predicted_dense_ms=math.nan, predicted_sparse_ms=math.nan, predicted_speedup=math.nan,
                       kernel="", fallback=False, why=f"not predicted: {missing}")
        else:
            rec.update(predict_case(row, device))
        pred, meas = rec["predicted_speedup"], rec["measured_speedup"]
        rec["abs_error"] = abs(pred / meas - 1) if meas == meas and pred == pred and meas > 0 else math.nan
        rec["predicted_direction"] = direction_of(pred) if pred == pred else ""
        rec["direction_right"] = bool(pred == pred and direction_right(row["direction"], pred))
        records.append(rec)
    cols = list(TABLE_COLUMNS) + ["predicted_dense_ms", "predicted_sparse_ms", "predicted_speedup", "abs_error",
                                  "predicted_direction", "direction_right", "kernel", "fallback", "why"]
    return pd.DataFrame.from_records(records, columns=cols)


def summary(df: pd.DataFrame) -> dict:
    """Median and 90th-percentile |predicted/measured - 1| over rows with a measured speedup,
    and how many directions came out right."""
    err = df["abs_error"].dropna()
    return {
        "cases": int(len(df)),
        "with_speedup": int(len(err)),
        "median_abs_error": float(err.median()) if len(err) else math.nan,
        "p90_abs_error": float(err.quantile(0.9)) if len(err) else math.nan,
        "direction_right": int(df["direction_right"].sum()),
    }


def append_rows(rows: Sequence[Mapping[str, object]], path: str | Path | None = None) -> Path:
    """Append measured rows (TABLE_COLUMNS keys) to the validation table; returns its path."""
    p = Path(path) if path is not None else published_table_path()
    new = not p.exists() or p.stat().st_size == 0
    with p.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(TABLE_COLUMNS), extrasaction="raise")
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in TABLE_COLUMNS})
    return p
