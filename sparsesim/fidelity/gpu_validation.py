"""Check the model against published (and locally measured) GPU figures, runtime and kernel included.

The table `sparsesim/validation_data/gpu_published.csv` holds one row per published case, each
naming a device (a device file), a runtime (eager, compiled, engine), a dtype, a shape (a GEMM
M x N x K = activation rows, weight rows, weight cols; or a workload spec such as
`bert-base:batch=16,seq=384,device=meta`), the pattern, the kernel the source used where it
forced one (`kernel`; empty = the runtime picks), what was measured (`quantity`) and its value
(`measured`), the direction the source reports, and the source with its confidence tag:

* `speedup`: dense latency / sparse latency, same runtime and device;
* `runtime_ratio`: latency under `runtime` / latency under `ref_runtime` (same plan);
* `throughput`: samples (or tokens) per second, the workload's batch / latency;
* `energy`: joules per sample, the workload's modelled energy / batch, against a published
  power x time (e.g. MLPerf throughput at the card's power: the source shows the arithmetic);
* `op_rate`: operations per second on the nonzeros (2 x executed MACs / latency), the rate
  sparse accelerator papers report (GOP/s "on the compressed model").

The table holds the sparse engines' and FPGA designs' cases too, despite its name: every
published figure is checked through the same path.

A source that gives a range rather than one figure (XNNPACK's 1.3-2.4x over several models and
sparsities) is written `low..high` in `measured`: the error is 0 inside the range and the distance
to the nearer end outside it; `measured` then reads as the range's geometric middle.

GEMM rows have a phase: `forward` (one linear) or `training` (forward plus both backward GEMMs,
the weight-gradient GEMM dense, as torchao's 2:4 training runs it). `benchmarks/gpu_measure.py`
appends measured rows to the same table. None of these figures is an input to the device files,
except where a device-file field says it was fitted to one (its source names the fit).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from sparsesim.core.errors import SparsesimError, UnsupportedError, WorkloadError
from sparsesim.core.ir import DTYPE_BYTES, GemmShape, Op
from sparsesim.cost.record import Cost
from sparsesim.hw.devices import Device, load_device
from sparsesim.hw.runtimes import RUNTIMES
from sparsesim.sparsity.records import LayerSparsity, Pattern

TABLE_COLUMNS = (
    "case", "device", "runtime", "dtype", "workload", "M", "N", "K", "kernel", "pattern", "phase", "quantity",
    "dense_ms", "sparse_ms", "measured", "ref_runtime", "direction", "source", "conf", "date_added",
)
PHASES = ("forward", "training")
QUANTITIES = ("speedup", "runtime_ratio", "throughput", "energy", "op_rate")
# "-": the quantity has no direction (an absolute throughput)
DIRECTIONS = ("faster", "slower", "not_faster", "-")
# the ops whose executed FLOPs an `op_rate` counts (what "GOP/s on the compressed model" means)
GEMM_KINDS = ("linear", "conv", "matmul", "attention")
# "no meaningful speedup": within 10% of dense (the wording for batch-1 GEMV with 2:4)
NO_SPEEDUP_BAND = 0.10
# the acceptance targets over every speed case (speedup, runtime ratio, throughput, op rate) with
# a measured value; energy cases are held to their own band: within ENERGY_FACTOR of the measured
# energy either way (a power x time figure carries the power's uncertainty, often an upper bound)
TARGET_MEDIAN, TARGET_P90 = 0.10, 0.25
# measured rows whose case name starts so were timed for checking only: no fit may use them
HOLDOUT_PREFIX = "holdout-"
ENERGY_FACTOR = 2.0


def published_table_path() -> Path:
    """The packaged validation table (also where gpu_measure.py appends measured rows)."""
    return Path(str(resources.files("sparsesim").joinpath("validation_data", "gpu_published.csv")))


def measured_table_path() -> Path:
    """The packaged table of this project's own GPU measurements (benchmarks/gpu_measure.py appends
    to it); kept apart from the published cases so each set is summarised on its own."""
    return Path(str(resources.files("sparsesim").joinpath("validation_data", "gpu_measured.csv")))


def table_plan(pattern: str, table: str | Path | None = None) -> str:
    """The plan a row's `pattern` cell names: a pattern as written, or a `.toml` plan file (a
    case that sparsifies only some layers) relative to the table's own folder, else to the
    packaged table's (a measured table written elsewhere names the packaged plans)."""
    if not pattern.endswith(".toml"):
        return pattern
    packaged = published_table_path().parent / pattern
    if table is None:
        return str(packaged)
    beside = Path(table).parent / pattern
    return str(beside if beside.is_file() or not packaged.is_file() else packaged)


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
        _check_row(r, f"{p}:{i} (case {r.get('case')!r})")
        r["plan"] = table_plan(r["pattern"], p)
    return rows


def _check_row(r: Mapping[str, str], where: str) -> None:
    if not (r["workload"] or "").strip():
        for c in ("M", "N", "K"):
            if not (r[c] or "").strip().isdigit() or int(r[c]) <= 0:
                raise WorkloadError(f"{where}: column {c} must be a positive integer, got {r[c]!r}")
    for col, allowed in (("phase", PHASES), ("direction", DIRECTIONS), ("quantity", QUANTITIES),
                         ("runtime", RUNTIMES)):
        if r[col] not in allowed:
            raise WorkloadError(f"{where}: {col} must be one of {', '.join(allowed)}, got {r[col]!r}")
    if r["quantity"] == "runtime_ratio" and r["ref_runtime"] not in RUNTIMES:
        raise WorkloadError(f"{where}: a runtime_ratio row needs ref_runtime, one of {', '.join(RUNTIMES)}")
    if r["dtype"] not in DTYPE_BYTES:
        raise WorkloadError(f"{where}: unknown dtype {r['dtype']!r}")
    for c in ("dense_ms", "sparse_ms"):
        if (r[c] or "").strip():
            try:
                float(r[c])
            except ValueError:
                raise WorkloadError(f"{where}: column {c} must be a number, got {r[c]!r}") from None
    if r["pattern"].endswith(".toml") and not (r["workload"] or "").strip():
        raise WorkloadError(f"{where}: a plan file ({r['pattern']}) needs a workload to name its layers")
    if (r["measured"] or "").strip() and measured_range(r["measured"]) is None:
        raise WorkloadError(f"{where}: column measured must be a number or a range low..high (0 < low <= high), "
                            f"got {r['measured']!r}")


def measured_range(text: str) -> tuple[float, float] | None:
    """(low, high) of a `measured` cell: one number (low == high) or `low..high`; None when it is
    neither, or a range is not 0 < low <= high, or a number is not finite."""
    parts = text.strip().split("..")
    if len(parts) > 2:
        return None
    try:
        vals = [float(x) for x in parts]
    except ValueError:
        return None
    if not all(math.isfinite(v) for v in vals):
        return None
    lo, hi = vals[0], vals[-1]
    if len(parts) == 2 and not 0 < lo <= hi:
        return None
    return lo, hi


def gemm_op(m: int, n: int, k: int, dtype: str, *, weight: str | None = "weight", index: int = 0) -> Op:
    """A linear op (x[M,K] @ W[N,K]^T) or, with weight=None, a weightless matmul, for one GEMM."""
    from sparsesim.core.ir import activation_dtype

    db, adb = DTYPE_BYTES[dtype], DTYPE_BYTES[activation_dtype(dtype)]
    return Op(
        index=index, kind="linear" if weight else "matmul", aten="aten.mm.default", module="validation",
        call_index=0, dtype=dtype, input_shapes=((m, k), (n, k) if weight else (k, n)), output_shape=(m, n),
        flops=2 * m * n * k, bytes_moved=int((m * k + m * n) * adb + n * k * db), gemm=GemmShape(m, n, k),
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
    out: list[tuple[Op, LayerSparsity | None, LayerSparsity | None]] = [
        (fwd, None, layer_for("weight", n, k, pattern, dtype))]
    if phase == "training":
        bwd_in = gemm_op(m, k, n, dtype, weight="weight_t", index=1)
        out.append((bwd_in, None, layer_for("weight_t", k, n, pattern, dtype)))
        out.append((gemm_op(n, k, m, dtype, weight=None, index=2), None, None))
    return out


def _gemm_latencies(row: Mapping[str, str], device: Device, runtime: str) -> tuple[float, float, list[Cost]]:
    from sparsesim.run.estimate import cost_one
    from sparsesim.sparsity.patterns import parse_pattern
    from sparsesim.sparsity.shrink import shrink_layer_op

    m, n, k = int(row["M"]), int(row["N"]), int(row["K"])
    pattern = parse_pattern(row["pattern"])
    dense_s = sparse_s = 0.0
    costs = []
    for op, dense_layer, sparse_layer in phase_ops(m, n, k, row["dtype"], pattern, row["phase"]):
        dense_s += cost_one(op, dense_layer, device, runtime=runtime).latency_s
        s = cost_one(shrink_layer_op(op, sparse_layer), sparse_layer, device, runtime=runtime, kernel=row["kernel"])
        sparse_s += s.latency_s
        costs.append(s)
    return dense_s, sparse_s, costs


def _workload_latencies(row: Mapping[str, str], device: Device, runtime: str) -> tuple[float, float, pd.DataFrame]:
    """(dense latency, latency of the row's plan, the per-op table of the row's plan)."""
    from sparsesim.run.estimate import compare_tables

    plan = row.get("plan") or table_plan(row["pattern"])
    plans = ["dense"] + ([plan] if plan != "dense" else [])
    dtype = row["dtype"] if row["dtype"] != _traced_dtype(row["workload"]) else ""
    t = compare_tables(row["workload"], [device], plans, runtime=runtime, kernel=row["kernel"], dtype=dtype)
    lat = dict(zip(t.summary["plan"], t.summary["latency_s"]))
    label = t.summary["plan"].iloc[-1]
    ops = t.per_op[t.per_op["plan"] == label]
    return float(lat["dense"]), float(lat[label]), ops


def _traced_dtype(spec: str) -> str:
    from sparsesim.run.estimate import resolve_workload

    wl = resolve_workload(spec)
    dts = [op.dtype for op in wl.ops if op.is_matmul]
    return max(set(dts), key=dts.count) if dts else ""


def _batch(spec: str) -> int:
    from sparsesim.run.estimate import resolve_workload

    return int(resolve_workload(spec).params.get("batch", 1))


def predict_case(row: Mapping[str, str], device: Device) -> dict:
    """The predicted value of one table row on `device`, with the latencies behind it; raises
    SparsesimError when the row names a kernel the device's family has no model of."""
    runtime = row["runtime"]
    if row["kernel"] and device.family == "gpu":
        from sparsesim.cost.families.gpu_kernels import KERNELS

        if row["kernel"] not in KERNELS:
            raise UnsupportedError(f"kernel {row['kernel']!r} is not modelled (known: {', '.join(KERNELS)})")
    whys: list[str] = []
    kernels: list[str] = []
    fallback = False
    if (row["workload"] or "").strip():
        dense_s, sparse_s, ops = _workload_latencies(row, device, runtime)
        if row["pattern"] != "dense":
            touched = ops[ops["pattern"] != "dense"]
            if len(touched):
                top = touched.groupby("kernel")["latency_s"].sum().idxmax()
                kernels.append(str(top))
                fallback = bool(touched["fallback"].any())
                whys.append(str(touched.sort_values("latency_s").iloc[-1]["why"]))
        gemm_rows = ops["kind"].isin(GEMM_KINDS)
        energy_j, executed = float(ops["energy_j"].sum()), float(ops.loc[gemm_rows, "flops_executed"].sum())
    else:
        dense_s, sparse_s, costs = _gemm_latencies(row, device, runtime)
        kernels = [c.kernel for c in costs]
        whys = [c.why for c in costs]
        fallback = any(c.fallback for c in costs)
        energy_j, executed = sum(c.energy_j for c in costs), sum(c.flops_executed for c in costs)
    quantity = row["quantity"]
    lat = sparse_s if row["pattern"] != "dense" else dense_s
    if quantity == "speedup":
        value = dense_s / sparse_s if sparse_s > 0 else math.nan
    elif quantity == "runtime_ratio":
        ref = dict(row, runtime=row["ref_runtime"])
        if (row["workload"] or "").strip():
            ref_dense, ref_sparse, _ = _workload_latencies(ref, device, row["ref_runtime"])
        else:
            ref_dense, ref_sparse, _ = _gemm_latencies(ref, device, row["ref_runtime"])
        mine, theirs = (dense_s, ref_dense) if row["pattern"] == "dense" else (sparse_s, ref_sparse)
        value = mine / theirs if theirs > 0 else math.nan
        whys.append(f"{runtime} {mine * 1e3:.3g} ms vs {row['ref_runtime']} {theirs * 1e3:.3g} ms")
    elif quantity == "energy":
        samples = _batch(row["workload"]) if (row["workload"] or "").strip() else 1
        value = energy_j / samples
        whys.append(f"{energy_j / samples * 1e3:.3g} mJ per sample over {lat / samples * 1e6:.3g} us: "
                    f"average {energy_j / lat if lat > 0 else math.nan:.3g} W")
    elif quantity == "op_rate":
        value = executed / lat if lat > 0 else math.nan
    else:
        value = _batch(row["workload"]) / lat if lat > 0 else math.nan
    return {
        "predicted_dense_ms": dense_s * 1e3,
        "predicted_sparse_ms": sparse_s * 1e3,
        "predicted": value,
        "kernel_used": " + ".join(kernels),
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
    """Whether a predicted speedup (or runtime ratio) agrees with the direction the source reports."""
    if expected == "-":
        return True
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


RESULT_COLUMNS = list(TABLE_COLUMNS) + ["measured_low", "measured_high", "predicted_dense_ms", "predicted_sparse_ms", "predicted", "abs_error",
                                        "predicted_direction", "direction_right", "kernel_used", "fallback", "why"]


def validate_gpu_published(
    devices: Iterable[Device | str] | Mapping[str, Device] | None = None,
    *,
    table: str | Path | None = None,
) -> pd.DataFrame:
    """Predict every row of the validation table and compare with what was published or measured.

    `devices` selects the devices to check (names, Device objects, or name -> Device); rows on
    other devices are skipped. With None every row is checked on its built-in device file; a
    row whose device has no file is kept with NaN predictions and a why saying so.
    Columns: `RESULT_COLUMNS` (abs_error = |predicted/measured - 1|, NaN for direction-only rows).
    """
    wanted = _device_map(devices)
    records = []
    for row in load_table(table):
        name = row["device"].lower()
        missing = ""
        device: Device | None
        if wanted is not None:
            if name not in wanted:
                continue
            device = wanted[name]
        else:
            try:
                device = load_device(row["device"])
            except SparsesimError as e:
                device, missing = None, str(e)
        rec: dict = {c: row[c] for c in TABLE_COLUMNS}
        for c in ("dense_ms", "sparse_ms"):
            rec[c] = float(row[c]) if (row[c] or "").strip() else math.nan
        lo, hi = measured_range(row["measured"] or "") or (math.nan, math.nan)
        rec["measured_low"], rec["measured_high"] = lo, hi
        rec["measured"] = math.sqrt(lo * hi) if lo != hi and lo > 0 else lo
        if device is None:
            rec.update(predicted_dense_ms=math.nan, predicted_sparse_ms=math.nan, predicted=math.nan,
                       kernel_used="", fallback=False, why=f"not predicted: {missing}")
        else:
            try:
                rec.update(predict_case(row, device))
            except SparsesimError as e:
                rec.update(predicted_dense_ms=math.nan, predicted_sparse_ms=math.nan, predicted=math.nan,
                           kernel_used="", fallback=False, why=f"not predicted: {e}")
        pred = rec["predicted"]
        known = not math.isnan(pred)
        rec["abs_error"] = range_error(pred, lo, hi) if known and not math.isnan(lo) and lo > 0 else math.nan
        directional = row["quantity"] in ("speedup", "runtime_ratio")
        rec["predicted_direction"] = direction_of(pred) if known and directional else "-"
        rec["direction_right"] = bool(known and direction_right(row["direction"], pred))
        records.append(rec)
    return pd.DataFrame.from_records(records, columns=RESULT_COLUMNS)


def range_error(predicted: float, low: float, high: float) -> float:
    """|predicted / published - 1| against the nearer end of [low, high]; 0 inside it."""
    if predicted < low:
        return abs(predicted / low - 1)
    if predicted > high:
        return abs(predicted / high - 1)
    return 0.0


def summary(df: pd.DataFrame) -> dict:
    """Median and 90th-percentile |predicted/measured - 1| over the speed rows with one published
    value, how many predictions fall inside the published range of rows that give a range, how many
    directions came out right (of the rows that have one), how many energies land within
    ENERGY_FACTOR of the measured figure, and whether the targets hold."""
    energy = df["quantity"] == "energy"
    ranged = df["measured_low"] != df["measured_high"]
    ranged &= df["measured_low"].notna()
    err = df.loc[~ranged & ~energy, "abs_error"].dropna()
    in_range = df.loc[ranged & ~energy, "abs_error"].dropna()
    directional = df[df["direction"] != "-"]
    med = float(err.median()) if len(err) else math.nan
    p90 = float(err.quantile(0.9)) if len(err) else math.nan
    right = int(directional["direction_right"].sum())
    inside = int((in_range == 0).sum())
    e = df[energy & df["predicted"].notna() & (df["measured"] > 0)]
    ratios = (e["predicted"] / e["measured"]).astype(float)
    within = int(((ratios >= 1 / ENERGY_FACTOR) & (ratios <= ENERGY_FACTOR)).sum())
    worst = float(ratios.iloc[int(np.abs(np.log(ratios.to_numpy())).argmax())]) if len(ratios) else math.nan
    return {
        "cases": len(df),
        "with_value": len(err),
        "median_abs_error": med,
        "p90_abs_error": p90,
        "range_cases": len(in_range),
        "inside_range": inside,
        "direction_cases": len(directional),
        "direction_right": right,
        "energy_cases": len(ratios),
        "energy_within": within,
        "energy_worst_ratio": worst,
        "energy_factor": ENERGY_FACTOR,
        "targets_met": bool(med <= TARGET_MEDIAN and p90 <= TARGET_P90 and right == len(directional)
                            and inside == len(in_range) and within == len(ratios)),
    }


def append_rows(rows: Sequence[Mapping[str, object]], path: str | Path | None = None) -> Path:
    """Append measured rows (TABLE_COLUMNS keys) to the validation table; returns its path."""
    p = Path(path) if path is not None else published_table_path()
    new = not p.exists() or p.stat().st_size == 0
    for i, r in enumerate(rows):
        _check_row({c: str(r.get(c, "")) for c in TABLE_COLUMNS}, f"{p}: appended row {i} (case {r.get('case')!r})")
    with p.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(TABLE_COLUMNS), extrasaction="raise")
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in TABLE_COLUMNS})
    return p
