"""Strict loading of device files: every malformed file is a DeviceFileError naming file and field,
and corrupted copies of the built-in files never raise anything else."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from sparsesim.core.errors import DeviceFileError
from sparsesim.hw.devices import (
    UNITS,
    Device,
    builtin_device_files,
    builtin_devices,
    load_device,
    parse_device_file,
)

A100 = builtin_device_files()["a100-sxm4-80gb"]


def _write(tmp_path: Path, text: str, name: str = "dev.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _replace_line(text: str, key: str, new: str | None) -> str:
    """Replace (or with None drop) the line that assigns `key`."""
    out, hit = [], False
    for line in text.splitlines():
        if re.match(rf"^{re.escape(key)}\s*=", line):
            hit = True
            if new is not None:
                out.append(new)
            continue
        out.append(line)
    assert hit, f"no line for {key}"
    return "\n".join(out) + "\n"


def _a100_with(tmp_path: Path, key: str, new: str | None, name: str = "dev.toml") -> Path:
    """The A100 file with the line assigning `key` replaced by `new` (or dropped), written out."""
    return _write(tmp_path, _replace_line(A100.read_text(), key, new), name)


def _load_error(path: Path) -> str:
    with pytest.raises(DeviceFileError) as e:
        parse_device_file(path)
    return str(e.value)


def test_every_builtin_device_loads_with_sources():
    devices = builtin_devices()
    names = {Path(d.path).stem for d in devices}
    assert {"a100-sxm4-80gb", "h100-sxm5", "jetson-agx-orin"} <= names
    for d in devices:
        assert d.provenance, d.name
        for field, prov in d.provenance.items():
            assert prov.source.strip(), f"{d.name}: {field} has no source"


def test_load_by_name_is_case_insensitive():
    assert load_device("A100-SXM4-80GB").name == load_device("a100-sxm4-80gb").name


def test_units_convert_to_si():
    d = load_device("a100-sxm4-80gb")
    assert d.params.tensor_peak["fp16"] == pytest.approx(312e12)
    assert d.params.dram_bandwidth == pytest.approx(2039e9)
    assert d.params.l2_size == pytest.approx(40e6)
    assert d.params.launch_overhead == pytest.approx(5e-6)
    assert d.params.mac_energy["fp16"] == pytest.approx(1.23e-12)


def test_unknown_key(tmp_path):
    p = _write(tmp_path, A100.read_text() + 'warp_size = { value = 32, unit = "1", source = "x" }\n')
    msg = _load_error(p)
    assert str(p) in msg and "warp_size" in msg and "unknown" in msg


def test_duplicate_key(tmp_path):
    text = A100.read_text()
    line = next(l for l in text.splitlines() if l.startswith("sm_count"))
    p = _write(tmp_path, text + line + "\n")
    msg = _load_error(p)
    # tomllib reports the line of the second assignment; the message names the file and that line
    lineno = len(text.splitlines()) + 1
    assert str(p) in msg and f"line {lineno}" in msg


def test_duplicate_per_dtype_key(tmp_path):
    text = A100.read_text()
    line = next(l for l in text.splitlines() if l.startswith("tensor_peak.fp16"))
    msg = _load_error(_write(tmp_path, text + line + "\n"))
    assert "dev.toml" in msg


def test_missing_field(tmp_path):
    p = _a100_with(tmp_path, "l2_size", None)
    msg = _load_error(p)
    assert str(p) in msg and "missing field 'l2_size'" in msg


def test_wrong_unit(tmp_path):
    p = _a100_with(tmp_path, "dram_bandwidth",
                   'dram_bandwidth = { value = 2039, unit = "TFLOP/s", source = "x" }')
    msg = _load_error(p)
    assert "dram_bandwidth" in msg and "wrong unit" in msg and "'TFLOP/s'" in msg


def test_wrong_unit_in_per_dtype_table(tmp_path):
    p = _a100_with(tmp_path, "tensor_peak.fp16",
                   'tensor_peak.fp16 = { value = 312, unit = "GB/s", source = "x" }')
    msg = _load_error(p)
    assert "tensor_peak.fp16" in msg and "wrong unit" in msg


def test_missing_source(tmp_path):
    p = _a100_with(tmp_path, "sm_count", 'sm_count = { value = 108, unit = "1" }')
    msg = _load_error(p)
    assert str(p) in msg and "sm_count" in msg and "source" in msg


def test_empty_source(tmp_path):
    p = _a100_with(tmp_path, "clock", 'clock = { value = 1410, unit = "MHz", source = "  " }')
    assert "clock" in _load_error(p)


def test_non_numeric_value(tmp_path):
    p = _a100_with(tmp_path, "l2_bandwidth",
                   'l2_bandwidth = { value = "fast", unit = "GB/s", source = "x" }')
    msg = _load_error(p)
    assert "l2_bandwidth" in msg and "number" in msg


def test_boolean_is_not_a_number(tmp_path):
    p = _a100_with(tmp_path, "sm_count", 'sm_count = { value = true, unit = "1", source = "x" }')
    assert "sm_count" in _load_error(p)


def test_negative_and_non_finite_values(tmp_path):
    neg = _a100_with(tmp_path, "tdp", 'tdp = { value = -400, unit = "W", source = "x" }', "neg.toml")
    assert "tdp" in _load_error(neg)
    nan = _a100_with(tmp_path, "sm_count", 'sm_count = { value = nan, unit = "1", source = "x" }', "nan.toml")
    assert "sm_count" in _load_error(nan)
    inf = _a100_with(tmp_path, "gemm_tile_m", 'gemm_tile_m = { value = inf, unit = "1", source = "x" }', "inf.toml")
    assert "gemm_tile_m" in _load_error(inf)


def test_bad_family(tmp_path):
    p = _a100_with(tmp_path, "family", 'family = "tpu"')
    msg = _load_error(p)
    assert str(p) in msg and "family" in msg and "tpu" in msg


def test_missing_name(tmp_path):
    msg = _load_error(_a100_with(tmp_path, "name", None))
    assert "'name'" in msg


def test_fit_needs_date_and_error(tmp_path):
    p = _a100_with(tmp_path, "clock",
                   'clock = { value = 1410, unit = "MHz", source = "fit", fit_date = "2026-11-22" }')
    msg = _load_error(p)
    assert "clock" in msg and "fit_error" in msg


def test_fitted_field_is_reported(tmp_path):
    p = _a100_with(tmp_path, "clock",
                   'clock = { value = 1400, unit = "MHz", source = "fit", fit_date = "2026-11-22", fit_error = 0.03 }')
    d = parse_device_file(p)
    assert d.fitted()["clock"].fit_error == 0.03


def test_gpu_cross_field_checks(tmp_path):
    bad_ratio = _a100_with(tmp_path, "sparse_ratio",
                           'sparse_ratio = { value = { fp16 = "2-4", bf16 = "2:4", int8 = "2:4", tf32 = "1:2" }, source = "x" }',
                           "r.toml")
    assert "sparse_ratio.fp16" in _load_error(bad_ratio)
    eff = _a100_with(tmp_path, "dense_gemm_efficiency",
                     'dense_gemm_efficiency = { value = 1.5, unit = "1", source = "x" }', "e.toml")
    assert "dense_gemm_efficiency" in _load_error(eff)
    flag = _a100_with(tmp_path, "fp32_uses_tf32", 'fp32_uses_tf32 = { value = "yes", source = "x" }', "f.toml")
    assert "fp32_uses_tf32" in _load_error(flag)
    no_energy = _a100_with(tmp_path, "mac_energy.int8", None, "m.toml")
    assert "mac_energy" in _load_error(no_energy)
    setting_unit = _a100_with(tmp_path, "fp32_conv_uses_tf32",
                              'fp32_conv_uses_tf32 = { value = false, unit = "W", source = "x" }', "s.toml")
    assert "fp32_conv_uses_tf32" in _load_error(setting_unit)


def test_unknown_device_name():
    with pytest.raises(DeviceFileError, match="unknown device 'no-such-gpu'"):
        load_device("no-such-gpu")


def test_device_path_that_is_not_a_file(tmp_path):
    with pytest.raises(DeviceFileError, match=r"device file .*absent\.toml: does not exist"):
        load_device(str(tmp_path / "absent.toml"))
    (tmp_path / "d.toml").mkdir()
    with pytest.raises(DeviceFileError, match=r"device file .*d\.toml: is a directory"):
        load_device(str(tmp_path / "d.toml"))


def test_unreadable_and_malformed_files(tmp_path):
    assert "cannot read" in _load_error(tmp_path / "absent.toml")
    assert "not valid TOML" in _load_error(_write(tmp_path, "name = \n"))


# ----------------------------------------------------------------------------- fuzzed corpus

_ALL_UNITS = sorted({u for units in UNITS.values() for u in units} | {"furlongs", ""})


def _mutate(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    if not lines:
        return text
    kind = rng.choice(("drop", "dup", "unit", "truncate", "value", "char", "swap", "family"))
    i = rng.randrange(len(lines))
    if kind == "drop":
        del lines[i]
    elif kind == "dup":
        lines.insert(rng.randrange(len(lines) + 1), lines[i])
    elif kind == "unit":
        units = [j for j, l in enumerate(lines) if 'unit = "' in l]
        if units:
            j = rng.choice(units)
            lines[j] = re.sub(r'unit = "[^"]*"', f'unit = "{rng.choice(_ALL_UNITS)}"', lines[j], count=1)
    elif kind == "truncate":
        return text[: rng.randrange(len(text))]
    elif kind == "value":
        vals = [j for j, l in enumerate(lines) if "value = " in l]
        if vals:
            j = rng.choice(vals)
            new = rng.choice(('"x"', "-1", "0", "nan", "inf", "true", "[1, 2]", "{ a = 1 }", "1e308", "3.5"))
            lines[j] = re.sub(r"value = (\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"|[^,}]+)", f"value = {new}", lines[j], count=1)
    elif kind == "char":
        line = lines[i]
        if line:
            k = rng.randrange(len(line))
            lines[i] = line[:k] + line[k + 1:]
    elif kind == "swap":
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "family":
        lines = [re.sub(r'^family = "[^"]*"', f'family = "{rng.choice(("gpu", "cpu", "fpga", "s4", "npu"))}"', l)
                 for l in lines]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("stem", sorted(builtin_device_files()))
def test_corrupted_builtin_files_fail_cleanly(stem, tmp_path):
    """Each built-in file, mutated 60 ways (seeded): loading succeeds or raises DeviceFileError."""
    text = builtin_device_files()[stem].read_text()
    rng = random.Random(f"corpus-{stem}")
    p = tmp_path / f"{stem}.toml"
    outcomes = {"loaded": 0, "rejected": 0}
    for n in range(60):
        mutated = text
        for _ in range(rng.choice((1, 1, 2, 3))):
            mutated = _mutate(mutated, rng)
        p.write_text(mutated)
        try:
            parse_device_file(p)
            outcomes["loaded"] += 1
        except DeviceFileError as e:
            assert str(p) in str(e), f"mutation {n}: error does not name the file: {e}"
            outcomes["rejected"] += 1
        except Exception as e:  # pragma: no cover - the failure this test exists to catch
            pytest.fail(f"{stem} mutation {n}: {type(e).__name__}: {e}\n--- file ---\n{mutated}")
    assert outcomes["rejected"] > 0


# ----------------------------------------------------------------------------- the `devices` verb

def test_devices_lists_every_builtin_with_peaks(cli):
    import json

    rc, out, _ = cli("devices", "--json")
    assert rc == 0
    doc = json.loads(out)
    by_name = {d["name"]: d for d in doc["devices"]}
    assert {"a100-sxm4-80gb", "h100-sxm5", "jetson-agx-orin"} <= set(by_name)
    a100 = by_name["a100-sxm4-80gb"]
    assert a100["family"] == "gpu"
    peaks = {p["field"]: (p["value"], p["unit"]) for p in a100["peaks"]}
    assert peaks["tensor_peak.fp16"] == (312, "TFLOP/s")
    assert peaks["dram_bandwidth"] == (2039, "GB/s")
    rc, text, _ = cli("devices")
    assert rc == 0 and "a100-sxm4-80gb" in text and "tensor_peak.fp16 312 TFLOP/s" in text


def test_devices_show_prints_every_field_with_unit_and_source(cli):
    import json

    rc, out, _ = cli("devices", "show", "h100-sxm5", "--json")
    assert rc == 0
    dev = json.loads(out)["device"]
    fields = {f["field"]: f for f in dev["fields"]}
    d = load_device("h100-sxm5")
    assert set(fields) == set(d.provenance)
    assert fields["dram_bandwidth"]["value"] == 3350 and fields["dram_bandwidth"]["unit"] == "GB/s"
    assert "published.md" in fields["sparse_tensor_peak.fp8"]["source"]
    assert fields["sparse_ratio"]["value"]["tf32"] == "1:2" and fields["sparse_ratio"]["unit"] == ""
    rc, text, _ = cli("devices", "show", "h100-sxm5")
    assert rc == 0 and "launch_overhead" in text and "assumed:" in text


def test_devices_show_reports_fits(tmp_path, cli):
    p = _a100_with(tmp_path, "clock",
                   'clock = { value = 1400, unit = "MHz", source = "fit", fit_date = "2026-11-22", fit_error = 0.03 }')
    rc, out, _ = cli("devices", "show", str(p))
    assert rc == 0 and "[fitted 2026-11-22, error 0.03]" in out


def test_devices_show_errors_exit_2(cli, tmp_path):
    rc, _, err = cli("devices", "show", "no-such-gpu")
    assert rc == 2 and "unknown device 'no-such-gpu'" in err
    rc, _, err = cli("devices", "show")
    assert rc == 2 and "needs a device name" in err
    bad = _a100_with(tmp_path, "tdp", None)
    rc, _, err = cli("devices", "show", str(bad))
    assert rc == 2 and "missing field 'tdp'" in err and str(bad) in err


# ----------------------------------------------------------------------------- extends, sources

def _readme_example() -> str:
    """The A100 PCIe device file printed in the README."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.DOTALL)
    (example,) = [b for b in blocks if 'name = "a100-pcie"' in b]
    return example


def test_readme_device_example_extends_the_a100_and_loads_as_printed(tmp_path):
    p = _write(tmp_path, _readme_example(), "a100-pcie.toml")
    pcie, a100 = parse_device_file(p), load_device("a100-sxm4-80gb")
    assert pcie.name == "a100-pcie" and pcie.family == "gpu"
    assert pcie.params.dram_bandwidth == pytest.approx(1.935e12) and pcie.params.tdp == pytest.approx(300)
    assert pcie.params.sm_count == 108 and pcie.params.tensor_peak == a100.params.tensor_peak
    assert pcie.provenance["dram_bandwidth"].inherited_from is None
    assert Path(pcie.provenance["clock"].inherited_from).stem == "a100-sxm4-80gb"
    assert pcie.provenance["clock"].source == a100.provenance["clock"].source
    # a runtime table is merged field by field: one field set, the others inherited
    eager, base = pcie.runtime("eager")[1], a100.runtime("eager")[1]
    assert eager.host_dispatch == pytest.approx(10e-6) and base.host_dispatch == pytest.approx(8e-6)
    assert eager.kernel_dispatch == base.kernel_dispatch and eager.kernels == base.kernels


def test_the_builtin_h100_pcie_is_the_sxm5_die_with_the_pcie_columns_figures():
    pcie, sxm = load_device("h100-pcie"), load_device("h100-sxm5")
    assert pcie.params.sm_count == 114 and pcie.params.dram_bandwidth == pytest.approx(2.0e12)
    assert pcie.params.tensor_peak["bf16"] == pytest.approx(756e12)
    assert pcie.params.sparse_tensor_peak["fp8"] == pytest.approx(2 * pcie.params.tensor_peak["fp8"], rel=0.01)
    # the clock the tensor peak implies, as the SXM5 file's: 2,048 FMA an SM a clock
    for d in (pcie, sxm):
        fma = d.params.tensor_peak["fp16"] / (2 * d.params.sm_count * d.params.clock)
        assert fma == pytest.approx(2048, rel=0.01)
    assert pcie.params.sparse_tile_m == sxm.params.sparse_tile_m  # the same kernels


def _a100_child(tmp_path: Path, line: str) -> tuple[Path, Device, Device]:
    """(base path, child device, base device): a file extending the A100 file by `line`."""
    base = _write(tmp_path, A100.read_text(), "base.toml")
    child = _write(tmp_path, f'extends = "base.toml"\nname = "child"\ndescription = "child"\n{line}\n', "child.toml")
    return base, parse_device_file(child), parse_device_file(base)


def test_extends_merges_per_dtype_tables_and_resolves_relative_paths(tmp_path):
    base, d, a100 = _a100_child(tmp_path, 'tensor_peak.fp16 = { value = 400, unit = "TFLOP/s", source = "assumed: test" }')
    assert d.params.tensor_peak["fp16"] == pytest.approx(400e12)
    assert d.params.tensor_peak["int8"] == a100.params.tensor_peak["int8"]  # other dtypes kept
    assert d.provenance["tensor_peak.fp16"].inherited_from is None
    assert d.provenance["tensor_peak.int8"].inherited_from == str(base)


def test_extends_merges_a_runtimes_per_kernel_table_kernel_by_kernel(tmp_path):
    """A file that sets one kernel's host time keeps the base's other kernels' host times."""
    _, d, a100 = _a100_child(tmp_path, 'runtime.eager.kernel_dispatch.bsr = { value = 200, unit = "us", source = "assumed: test" }')
    eager, base_eager = d.runtime("eager")[1], a100.runtime("eager")[1]
    assert eager.kernel_dispatch["bsr"] == pytest.approx(200e-6) and "bsr" not in base_eager.kernel_dispatch
    assert eager.kernel_dispatch["cusparselt"] == base_eager.kernel_dispatch["cusparselt"] > 0
    assert eager.host_dispatch == base_eager.host_dispatch


def test_extends_errors_name_the_file(tmp_path):
    p = _write(tmp_path, 'extends = "no-such-gpu"\nname = "x"\ndescription = "x"\n')
    err = _load_error(p)
    assert str(p) in err and "extends" in err and "no-such-gpu" in err
    loop = _write(tmp_path, 'extends = "loop.toml"\nname = "x"\nfamily = "gpu"\ndescription = "x"\n', "loop.toml")
    assert "extends itself" in _load_error(loop)


def test_missing_fields_are_reported_all_at_once(tmp_path):
    text = _replace_line(_replace_line(_replace_line(A100.read_text(), "tdp", None), "sm_count", None), "clock", None)
    err = _load_error(_write(tmp_path, text))
    assert "missing fields" in err and all(f"'{k}'" in err for k in ("tdp", "sm_count", "clock"))


def test_every_cited_published_section_ships_with_the_devices():
    from sparsesim.hw.devices import sources_file

    shipped = sources_file()
    assert shipped is not None and shipped.parent == A100.parent
    headings = set(re.findall(r"^#+\s+(\d+(?:\.\d+)*)\.?\s", shipped.read_text(), re.MULTILINE))
    cited = set()
    for p in builtin_device_files().values():
        for cite in re.findall(r"published\.md[^)\"]*", p.read_text()):
            cited |= set(re.findall(r"§\s*(\d+(?:\.\d+)*)", cite))
    assert cited and cited <= headings, f"sections cited but missing from the shipped {shipped}: {sorted(cited - headings)}"


def test_devices_show_prints_file_units_inheritance_and_the_sources_file(cli, tmp_path):
    p = _write(tmp_path, _readme_example(), "a100-pcie.toml")
    rc, text, _ = cli("devices", "show", str(p))
    assert rc == 0
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert "1410 MHz" in lines["clock"] and "[from a100-sxm4-80gb]" in lines["clock"]  # not 1.41e+09 Hz
    assert "1935 GB/s" in lines["dram_bandwidth"] and "[from" not in lines["dram_bandwidth"]
    assert "sources cited as 'published.md §N':" in text


def test_a_misspelt_kernel_in_a_runtime_is_an_error_naming_the_field(tmp_path):
    """A typo in a runtime's kernel list or its per-kernel host times would silently drop the
    kernel (or the host time): the loader names the field and the family's kernels."""
    listed = _a100_with(tmp_path, "runtime.eager.kernels",
                        'runtime.eager.kernels = { value = ["cublass", "cusparselt"], source = "x" }', "k.toml")
    msg = _load_error(listed)
    assert "runtime.eager.kernels" in msg and "'cublass'" in msg and "cusparse-csr" in msg
    timed = _write(tmp_path, A100.read_text() + 'runtime.eager.kernel_dispatch.bsrr = { value = 9, unit = "us", source = "x" }\n',
                   "d.toml")
    assert "runtime.eager.kernel_dispatch" in _load_error(timed) and "'bsrr'" in _load_error(timed)
    prologue = _write(tmp_path, A100.read_text() + 'sparse_kernel_fixed.cusparselts = { value = 2, unit = "us", source = "x" }\n',
                      "p.toml")
    assert "sparse_kernel_fixed" in _load_error(prologue) and "cusparselts" in _load_error(prologue)


def test_convolution_channel_fields_are_checked(tmp_path):
    """The CUDA-core convolution rate is a share of a peak, and whether a runtime pads a
    convolution's channels is a yes or no: anything else names the field."""
    rate = _a100_with(tmp_path, "conv_cuda_core_efficiency",
                      'conv_cuda_core_efficiency = { value = 1.5, unit = "1", source = "x" }', "r.toml")
    assert "conv_cuda_core_efficiency" in _load_error(rate)
    pads = _a100_with(tmp_path, "runtime.engine.pads_channels",
                      'runtime.engine.pads_channels = { value = "yes", source = "x" }', "p.toml")
    assert "pads_channels" in _load_error(pads)


def test_alignment_stream_and_attention_epilogue_fields_are_checked(tmp_path):
    """The unaligned-GEMM rate and a 2:4 library's streaming rate are shares of a rate, the
    latter only for a dtype with sparse tensor cores; an attention epilogue is a count of key
    blocks: anything else names the field."""
    rate = _a100_with(tmp_path, "unaligned_gemm_efficiency",
                      'unaligned_gemm_efficiency = { value = 1.5, unit = "1", source = "x" }', "u.toml")
    assert "unaligned_gemm_efficiency" in _load_error(rate)
    stream = _write(tmp_path, A100.read_text() + 'sparse_stream_efficiency.int4 = { value = 0.5, unit = "1", source = "x" }\n',
                    "s.toml")
    assert "sparse_stream_efficiency" in _load_error(stream) and "int4" in _load_error(stream)
    blocks = _a100_with(tmp_path, "runtime.eager.masked_attention_epilogue_blocks",
                        'runtime.eager.masked_attention_epilogue_blocks = { value = -1, unit = "1", source = "x" }', "e.toml")
    assert "masked_attention_epilogue_blocks" in _load_error(blocks)
