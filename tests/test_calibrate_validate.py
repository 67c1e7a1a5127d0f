"""calibrate + validate machinery on the real host: a quick calibration into a temporary file and
a quick validation against it, through the CLI. Only the structure is asserted, never a timing or
an error size (timings on a shared machine vary); the fidelity figures are printed by
benchmarks/bench_fidelity.py."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from contextlib import redirect_stdout

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sparsesim.cli import main
from sparsesim.fidelity import calibrate as cal
from sparsesim.fidelity import validate as val
from sparsesim.hw.devices import parse_device_file

FITTED = ("gemm_efficiency.fp32", "gemm_half_m.fp32", "sparse_nnz_cycles", "sparse_vector_cycles",
          "sparse_row_cycles", "sparse_call_overhead", "bsr_vector_cycles.4x4",
          "bsr_row_cycles", "bsr_value_cycles.4x4", "bsr_value_cycles.16x16")


def _cli_json(argv: list[str]) -> dict:
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(argv + ["--json"])
    assert rc == 0
    return json.loads(buf.getvalue())


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """`calibrate` with no --out: the device goes to the user config directory (a temporary one),
    from where `--device host` finds it."""
    torch.set_num_threads(1)
    config = tmp_path_factory.mktemp("config")
    before = os.environ.get("SPARSESIM_CONFIG_DIR")
    os.environ["SPARSESIM_CONFIG_DIR"] = str(config)
    try:
        doc = _cli_json(["calibrate", "--quick"])
        yield config / "accelerators" / "host.toml", doc
    finally:
        if before is None:
            os.environ.pop("SPARSESIM_CONFIG_DIR", None)
        else:
            os.environ["SPARSESIM_CONFIG_DIR"] = before


@pytest.fixture(scope="module")
def validated(calibrated):
    return _cli_json(["validate", "--quick"])  # the default device: `host`, found by name


def test_calibrate_writes_to_the_user_config_directory(calibrated):
    path, doc = calibrated
    assert doc["path"] == str(path) and doc["default_location"] and path.is_file()


def test_calibrated_file_loads_strictly_with_fits(calibrated):
    path, doc = calibrated
    dev = parse_device_file(path)
    assert dev.family == "cpu" and dev.params.threads == 1
    fitted = dev.fitted()
    for name in FITTED:
        assert name in fitted, name
        assert fitted[name].fit_date == doc["date"]
        assert math.isfinite(fitted[name].fit_error) and 0 <= fitted[name].fit_error < 1
    if dev.params.gemm_tile_m:  # a dense tile was kept: both fields fitted, with the tiles tried in the source
        for name in ("gemm_tile_m.fp32", "gemm_tail_cost.fp32"):
            assert fitted[name].fit_date == doc["date"] and 0 <= fitted[name].fit_error < 1
        assert "rows tried" in dev.provenance["gemm_tile_m.fp32"].source
    if dev.params.csr_register_columns:  # passes were kept (not one walk): both fields fitted, pairs tried listed
        for name in ("csr_register_columns", "csr_pass_columns"):
            assert fitted[name].fit_date == doc["date"] and 0 <= fitted[name].fit_error < 1
        assert "tried" in dev.provenance["csr_register_columns"].source
    if dev.params.bsr_vector_columns:  # a width was kept (not fractional steps): both fields fitted
        for name in ("bsr_vector_columns", "bsr_column_cycles"):
            assert fitted[name].fit_date == doc["date"] and 0 <= fitted[name].fit_error < 1
    for name in ("l2_bandwidth", "dram_bandwidth", "call_overhead", "clock"):
        assert "measured on" in dev.provenance[name].source
    assert doc["cpu"] in dev.description
    assert set(doc["fit_error"]) >= {"fp32", "csr", "bsr"}


def test_calibrated_host_times_its_functions_and_runs_pytorchs_runtimes(calibrated):
    """The host's transcendental functions are timed (cycles an element, each with its source), and
    the host runs PyTorch's eager (its default) and compiled runtimes, int8 as torch.ao's
    dynamically quantised linear."""
    from sparsesim.fidelity.measure import FUNCTIONS

    path, _ = calibrated
    dev = parse_device_file(path)
    cycles = dev.params.function_cycles
    assert set(cycles) <= set(FUNCTIONS) and {"gelu", "exp", "tanh"} <= set(cycles)
    assert all(0 < c < 1000 for c in cycles.values())
    assert "measured: torch's gelu" in dev.provenance["function_cycles.gelu"].source
    assert dev.default_runtime == "eager" and set(dev.runtimes.by_name) == {"eager", "compiled"}
    assert dev.runtime("eager")[1].dynamic_quant_scheme == "quantized-linear"


def test_quick_validation_table_is_complete_and_sane(validated):
    doc = validated
    patterns = {r["pattern"] for r in doc["rows"]}
    assert patterns == {"dense", "csr", "bsr", "channel"}
    for r in doc["rows"]:
        assert r["measured_s"] > 0 and r["predicted_s"] > 0
        assert math.isfinite(r["latency_error"])
    for pat in ("dense", "csr", "bsr", "channel"):
        s = doc["summary"][pat]
        assert s["cases"] > 0
        assert math.isfinite(s["median_abs_error"]) and math.isfinite(s["p90_abs_error"])
        assert 0 <= s["median_abs_error"] <= s["p90_abs_error"]
    cross = doc["crossover"]["cases"]
    assert cross and all({"measured", "predicted", "within_target"} <= set(c) for c in cross)
    assert doc["gpu_published"]["available"] and doc["gpu_published"]["cases"] >= 1


def test_validation_shapes_never_reuse_the_fit_set():
    fit = set(cal.FIT_NK) | set(cal.FIT_CSR_NK) | set(cal.FIT_BSR_NK)
    assert not fit & (set(val.VALIDATE_NK) | set(val.QUICK_NK))
    fit_m = (set(cal.FIT_M) | set(cal.FIT_CSR_M) | set(cal.FIT_BSR_M) | set(cal.FIT_BSR_LEFTOVER_M) | set(cal.FIT_INT8_M)
             | set(cal.FIT_DENSE_TAIL_M))
    assert not fit_m & (set(val.VALIDATE_M) | set(val.QUICK_M) | set(val.VALIDATE_LEFTOVER_M) | set(val.QUICK_LEFTOVER_M))
    assert not val.fit_overlap()
    # the leftover-column cases: M no multiple of 8 on both sides, on shapes validate runs
    assert all(m % 8 for m in (*cal.FIT_BSR_LEFTOVER_M, *val.VALIDATE_LEFTOVER_M, *val.QUICK_LEFTOVER_M))
    # the dense tail tiles: M no multiple of 4, with every remainder mod 4 among them
    assert {m % 4 for m in cal.FIT_DENSE_TAIL_M} == {1, 2, 3}
    assert set(val.VALIDATE_LEFTOVER_NK) <= set(val.VALIDATE_NK) and set(val.QUICK_LEFTOVER_NK) <= set(val.QUICK_NK)


def test_crossing_interpolates_log_log():
    assert val._crossing([0.1, 0.4], [2.0, 0.5]) == pytest.approx(0.2)
    assert val._crossing([0.1, 0.2], [3.0, 2.0]) is None
    assert val._crossing([0.1, 0.2], [0.9, 0.5]) == 0.1


def test_error_summary_judges_speedups_in_the_target_range():
    rows = [
        val.Row("dense", "fp32", 8, 64, 64, 1.0, 1, 1.0, 1.1, None, None),
        val.Row("csr", "fp32", 8, 64, 64, 0.1, 1, 1.0, 1.0, 2.0, 2.2),
        val.Row("csr", "fp32", 8, 64, 64, 0.9, 1, 1.0, 1.0, 0.5, 1.5),  # outside 0.01-0.5: not judged
    ]
    s = val.error_summary(rows)
    assert s["dense"]["median_abs_error"] == pytest.approx(0.1)
    assert s["csr"]["cases"] == 1 and s["csr"]["median_abs_error"] == pytest.approx(0.1)
    assert s["csr"]["met"] is True
    assert "csr M%8" not in s  # every case at M = 8


def test_error_summary_has_lines_of_its_own_for_m_no_multiple_of_8():
    rows = [
        val.Row("bsr", "fp32", 8, 64, 64, 0.1, 4, 1.0, 1.0, 2.0, 2.0),
        val.Row("bsr", "fp32", 13, 64, 64, 0.1, 4, 1.0, 1.0, 2.0, 3.0),
    ]
    s = val.error_summary(rows)
    assert s["bsr"]["cases"] == 2
    assert s["bsr M%8"]["cases"] == 1 and s["bsr M%8"]["median_abs_error"] == pytest.approx(0.5)
    assert s["bsr M%8"]["met"] is None


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["validate", "--quick", "--device", str(tmp_path / "nope.toml")]) == 2
    assert main(["calibrate", "--quick", "--out", str(tmp_path / "host.txt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("sparsesim ") for line in err)


def test_bsr_fit_tells_the_per_value_cost_from_the_vector_steps():
    """Cases over M = 4..256 and densities 0.02..0.3 pin both per-value figures of each block shape
    and the output pass: latencies made by the model from known figures are fitted back to them
    (terms that scaled alike over M, density and block shape could not be told apart). The cost
    per block is folded into the per-value costs: with one per shape, no timing can split the two."""
    from sparsesim.hw.devices import load_device
    from sparsesim.sparsity.records import Pattern

    truth = cal.with_params(load_device("xeon-sapphire-rapids"), picks_faster_kernel=False, bsr_block_cycles=8.0,
                            bsr_row_cycles=12.0, bsr_value_cycles={"4x4": 1.5, "16x16": 4.5},
                            bsr_vector_cycles={"4x4": 1.8, "16x16": 2.4})
    cases = []
    for b in (4, 16):
        for d in (0.02, 0.3):
            mask = cal.measure.random_mask(512, 512, d, block=(b, b), seed=b)
            layer = cal.layer_for(mask, Pattern("block", d, block=(b, b)), "fp32")
            for m in cal.FIT_BSR_M:
                case = cal.Case("bsr", "fp32", m, 512, 512, d, b, 1.0, layer)
                cases.append(dataclasses.replace(case, seconds=cal.predict(case, truth)))
    start = cal.with_params(truth, bsr_value_cycles={"4x4": 3.0, "16x16": 3.0},
                            bsr_vector_cycles={"4x4": 3.0, "16x16": 3.0})
    fitted, err = cal.fit_bsr(cases, start)
    p = fitted.params
    assert err < 0.01
    # the cost per block is folded into each shape's per-value cost: 8 / 16 and 8 / 256 more
    assert p.bsr_block_cycles == 0.0
    assert p.bsr_value_cycles == pytest.approx({"4x4": 1.5 + 8 / 16, "16x16": 4.5 + 8 / 256}, rel=0.05)
    assert p.bsr_vector_cycles == pytest.approx({"4x4": 1.8, "16x16": 2.4}, rel=0.05)
    assert p.bsr_row_cycles == pytest.approx(12.0, rel=0.05)


def test_bsr_column_fit_finds_the_vector_steps_width_and_the_leftover_cost():
    """Timings made by the model with vector steps of 4 columns and a known cost per leftover
    column, at M = 4..256 and the leftover M: the width with the lowest error is 4 (not the lanes,
    their halves, or fractional steps) and the leftover column's cost is fitted back."""
    from sparsesim.hw.devices import load_device
    from sparsesim.sparsity.records import Pattern

    truth = cal.with_params(load_device("xeon-sapphire-rapids"), picks_faster_kernel=False, bsr_block_cycles=8.0,
                            bsr_row_cycles=12.0, bsr_value_cycles={"4x4": 1.5, "16x16": 4.5},
                            bsr_vector_cycles={"4x4": 1.8, "16x16": 2.4}, bsr_vector_columns=4.0,
                            bsr_column_cycles=1.2)
    cases = []
    for b in (4, 16):
        for d in (0.02, 0.3):
            mask = cal.measure.random_mask(512, 512, d, block=(b, b), seed=b)
            layer = cal.layer_for(mask, Pattern("block", d, block=(b, b)), "fp32")
            for m in (*cal.FIT_BSR_M, *cal.FIT_BSR_LEFTOVER_M):
                case = cal.Case("bsr", "fp32", m, 512, 512, d, b, 1.0, layer)
                cases.append(dataclasses.replace(case, seconds=cal.predict(case, truth)))
    start = cal.with_params(truth, bsr_vector_columns=0.0, bsr_column_cycles=0.0)
    assert cal.column_candidates(start) == [16, 8, 4, 2, 0]
    fitted, err, columns = cal.fit_bsr_columns(cases, start)
    assert columns.columns == 4 and set(columns.mean_errors) == {16, 8, 4, 2, 0}
    assert columns.mean_errors[4] < 0.01 < min(e for c, e in columns.mean_errors.items() if c != 4)
    assert err < 0.01
    assert fitted.params.bsr_vector_columns == 4.0
    assert fitted.params.bsr_column_cycles == pytest.approx(1.2, rel=0.05)


def test_csr_pass_fit_finds_the_register_and_pass_widths():
    """Timings made by the model with a CSR kernel that keeps 32 columns in registers and runs a
    wider M in 16-column passes, at the FIT M: that pair has the lowest error of those tried
    (one walk whatever M is among them) and its per-nonzero costs are fitted back."""
    from sparsesim.hw.devices import load_device
    from sparsesim.sparsity.records import Pattern

    # an index chain longer than a 16-column pass's vector work (as on the calibrated AMD host): every
    # pass pays the chain, so the passes show in the timings
    truth = cal.with_params(load_device("xeon-sapphire-rapids"), picks_faster_kernel=False, csr_register_columns=32.0,
                            csr_pass_columns=16.0, sparse_nnz_cycles=4.0, sparse_vector_cycles=2.0)
    cases = []
    for n, k in cal.FIT_CSR_NK[:2]:
        for d in (0.01, 0.1, 0.5):
            layer = cal.layer_for(cal.measure.random_mask(n, k, d, seed=n), Pattern("unstructured", d), "fp32")
            for m in cal.FIT_CSR_M:
                case = cal.Case("csr", "fp32", m, n, k, d, 1, 1.0, layer)
                cases.append(dataclasses.replace(case, seconds=cal.predict(case, truth)))
    start = cal.with_params(truth, csr_register_columns=0.0, csr_pass_columns=0.0)
    assert (32, 16) in cal.pass_candidates(start) and (0, 0) in cal.pass_candidates(start)
    fitted, err, passes = cal.fit_csr_passes(cases, start)
    assert (passes.register_columns, passes.pass_columns) == (32, 16) and err < 0.01
    assert passes.mean_errors[(32, 16)] < 0.01 < passes.mean_errors[(0, 0)]
    for name in ("sparse_nnz_cycles", "sparse_vector_cycles"):
        assert getattr(fitted.params, name) == pytest.approx(getattr(truth.params, name), rel=0.05), name


def _dense_cases(truth, shapes, ms, offset=None):
    """Dense fp32 cases timed by the model of `truth`, each shape's time shifted by `offset[shape]`
    seconds (a fixed cost the fitted model would get wrong)."""
    return [cal.Case("dense", "fp32", m, n, k, 1.0, 1, cal.predict(cal.Case("dense", "fp32", m, n, k, 1.0, 1, 1.0), truth)
                     + (offset or {}).get((n, k), 0.0)) for n, k in shapes for m in ms]


@pytest.mark.parametrize("tile,tail", [(4, 0.87), (8, 0.7), (2, 0.9)])
def test_dense_tile_is_read_off_the_tail_m_whatever_the_shapes_fixed_cost(tile, tail):
    """Timings made by the model with a register tile along M and a known tail-tile cost, with each
    shape's fixed cost off by up to 60 us: the tile with the lowest error is the true one and its tail
    cost is read back (each shape's own line cancels the fixed cost); then the dense fit keeps them.
    Sapphire Rapids' 16 fp32 lanes make 16, 8, 4 and 2 the candidates."""
    from sparsesim.hw.devices import load_device

    base = cal.with_params(load_device("xeon-sapphire-rapids"), gemv_rows_max=1.0)
    truth = cal.with_tile(base, "fp32", tile, tail)
    shapes = cal.FIT_NK
    offset = {nk: 20e-6 * i for i, nk in enumerate(shapes)}
    cases = _dense_cases(truth, shapes, (*cal.FIT_M, *cal.FIT_DENSE_TAIL_M), offset)
    read = cal.read_gemm_tile(cases, base, "fp32")
    assert read is not None and read.tile == tile and read.tail_cost == pytest.approx(tail, rel=0.02)
    # a wider tile whose wide tails take their own rows costs the same at every M (kept as the narrower);
    # a narrower tile, or none, misses the tails' cost
    assert read.mean_errors[tile] < 0.005 < min(e for t, e in read.mean_errors.items() if t < tile)
    fitted, _, tiles = cal.fit_dense(cases, base)
    assert tiles["fp32"].tile == tile
    assert fitted.params.gemm_tile_m == {"fp32": float(tile)}
    assert fitted.params.gemm_tail_cost["fp32"] == pytest.approx(tail, rel=0.02)


def test_dense_without_tiles_reads_no_tile_and_other_dtypes_keep_none():
    """Timings made by a model without a tile: no tile is kept (M rows cost M rows), and a dtype not
    timed at the tail M gets no tile either."""
    from sparsesim.hw.devices import load_device

    base = cal.with_params(load_device("xeon-sapphire-rapids"), gemv_rows_max=1.0)
    cases = _dense_cases(base, cal.FIT_NK[:2], (*cal.FIT_M, *cal.FIT_DENSE_TAIL_M))
    read = cal.read_gemm_tile(cases, base, "fp32")
    assert read is not None and read.tile == 0 and read.error < 1e-6
    bf16 = [dataclasses.replace(c, dtype="bf16") for c in _dense_cases(base, cal.FIT_NK[:2], cal.FIT_M)]
    fitted, _, tiles = cal.fit_dense(cases + bf16, base)
    assert set(tiles) == {"fp32"} and fitted.params.gemm_tile_m == {}


def test_csr_passes_that_do_not_clearly_beat_one_walk_are_not_kept():
    """Timings of a kernel that walks the nonzeros once whatever M is: no pass pair beats one
    walk by PASS_MIN_GAIN, so calibrate keeps one walk."""
    from sparsesim.hw.devices import load_device
    from sparsesim.sparsity.records import Pattern

    truth = cal.with_params(load_device("xeon-sapphire-rapids"), picks_faster_kernel=False,
                            sparse_nnz_cycles=4.0, sparse_vector_cycles=2.0)
    cases = []
    for d in (0.01, 0.1, 0.5):
        layer = cal.layer_for(cal.measure.random_mask(512, 512, d, seed=1), Pattern("unstructured", d), "fp32")
        for m in cal.FIT_CSR_M:
            case = cal.Case("csr", "fp32", m, 512, 512, d, 1, 1.0, layer)
            cases.append(dataclasses.replace(case, seconds=cal.predict(case, truth)))
    fitted, err, passes = cal.fit_csr_passes(cases, truth)
    assert (passes.register_columns, passes.pass_columns) == (0, 0) and err < 0.01
    assert fitted.params.csr_register_columns == 0.0
