"""int8/fp8 under a framework runtime: each linear quantises its 16-bit input on the fly (torchao's
dynamic schemes), the other ops stay 16-bit; a vendor engine keeps 8-bit activations throughout."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsesim.core.errors import DeviceFileError
from sparsesim.cost.families import dynamic_quant
from sparsesim.hw.devices import load_device, parse_device_file
from sparsesim.run.estimate import compare_tables, prepare

BERT = "bert-base:batch=8,seq=128,device=meta"


def _per_op(dtype: str, runtime: str, device: str = "h100-sxm5", workload: str = BERT):
    return compare_tables(workload, [device], ["dense"], runtime=runtime, dtype=dtype).per_op


def test_deployment_remembers_the_width_a_single_int8_gemm_does_not():
    deployed = prepare(BERT, ["dense"], dtype="int8").workload
    linear = next(op for op in deployed.ops if op.kind == "linear")
    assert linear.dtype == "int8" and linear.deployed_from in ("fp16", "bf16", "fp32")
    native = prepare("gemm:M=64,N=1024,K=1024,dtype=int8", ["dense"]).workload
    assert all(not op.deployed_from for op in native.ops)


@pytest.mark.parametrize("dtype", ["int8", "fp8"])
def test_compiled_linears_pay_their_quantisation_the_engine_does_not(dtype):
    compiled = _per_op(dtype, "compiled")
    engine = _per_op(dtype, "engine")
    lin_c = compiled[compiled["kind"] == "linear"]
    lin_e = engine[engine["kind"] == "linear"]
    assert lin_c["why"].str.contains(f"dynamic {dtype} quantisation").all()
    assert not lin_e["why"].str.contains("quantisation").any()
    # the framework keeps the activations between linears 16-bit: twice the bytes of an engine's 8-bit ones
    elt_c = compiled[compiled["kind"] == "elementwise"]["bytes_dram"].sum()
    elt_e = engine[engine["kind"] == "elementwise"]["bytes_dram"].sum()
    assert elt_c > 1.5 * elt_e


def test_eager_quantises_op_by_op_each_a_host_dispatch():
    dev = load_device("h100-sxm5")
    eager = dev.runtime("eager")[1]
    compiled = dev.runtime("compiled")[1]
    model = next(op for op in prepare(BERT, ["dense"], dtype="int8").workload.ops if op.kind == "linear").deployed_from
    qe = dynamic_quant.quant_kernels("int8", eager, model_dtype=model)
    qc = dynamic_quant.quant_kernels("int8", compiled, model_dtype=model)
    assert qe.kernels > qc.kernels == 2  # inductor: one quantising kernel, one dequantising the int32 result
    per_op = _per_op("int8", "eager")
    lin = per_op[per_op["kind"] == "linear"].iloc[0]
    # every traced aten op of the quantisation is a framework dispatch of its own
    assert lin["latency_s"] >= (qe.kernels + 1) * eager.host_dispatch
    assert f"{qe.kernels} kernel(s)" in lin["why"]


def test_int8_output_is_int32_2to4_and_fp8_scale_in_the_epilogue():
    int8 = _per_op("int8", "compiled")
    fp8 = _per_op("fp8", "compiled")
    assert int8[int8["kind"] == "linear"]["why"].str.contains("writes int32 results").all()
    assert not fp8[fp8["kind"] == "linear"]["why"].str.contains("int32").any()
    sparse = compare_tables(BERT, ["h100-sxm5"], ["2:4"], runtime="compiled", dtype="int8").per_op
    lin = sparse[(sparse["plan"] == "2:4") & (sparse["kind"] == "linear") & sparse["kernel"].str.contains("2:4")]
    assert len(lin) and not lin["why"].str.contains("int32").any()
    rt = load_device("h100-sxm5").runtime("compiled")[1]
    assert dynamic_quant.quant_kernels("fp8", rt).on_output == ()
    assert [q.name for q in dynamic_quant.quant_kernels("int8", rt, semi_sparse=True).on_output] == ["x row scale"]


def test_a_gemm_specified_at_int8_runs_its_kernel_alone():
    t = compare_tables("gemm:M=4096,N=4096,K=4096,dtype=int8", ["h100-sxm5"], ["dense"], runtime="eager")
    assert "quantisation" not in t.per_op["why"].iat[0]


def test_a_gemm_that_falls_back_to_16_bits_quantises_nothing():
    # the A100 has no fp8 tensor cores: the linears run 16-bit and nothing is quantised
    per_op = _per_op("fp8", "compiled", device="a100-sxm4-80gb")
    assert not per_op[per_op["kind"] == "linear"]["why"].str.contains("dynamic fp8 quantisation").any()


@pytest.mark.parametrize("device,field,good,bad", [
    ("a100-sxm4-80gb", "dynamic_activation_quant", "true", '"yes"'),
    ("xeon-sapphire-rapids", "dynamic_quant_scheme", '"quantized-linear"', '"onnx"'),
])
def test_a_bad_dynamic_quantisation_field_is_named(tmp_path, device, field, good, bad):
    base = Path(load_device(device).path).read_text()
    broken = base.replace(f"runtime.eager.{field} = {{ value = {good}", f"runtime.eager.{field} = {{ value = {bad}")
    assert broken != base
    path = tmp_path / "bad.toml"
    path.write_text(broken)
    with pytest.raises(DeviceFileError, match=field):
        parse_device_file(path)


def test_an_fp16_models_int8_passes_run_in_fp32_a_bf16_models_in_bf16():
    """torchao keeps an fp16 model's per-token scales in fp32, so its quantisation passes compute in
    fp32 and cast back (traced); a bf16 model's stay bf16."""
    rt = load_device("h100-sxm5").runtime("eager")[1]
    bf16 = dynamic_quant.quant_kernels("int8", rt, model_dtype="bf16")
    fp16 = dynamic_quant.quant_kernels("int8", rt, model_dtype="fp16")
    assert [q.name for q in fp16.on_output] == ["int32 x row scale", "x column scale", "cast back"]
    assert [q.name for q in bf16.on_output] == ["int32 x row scale", "x column scale"]
    moved = [sum(q.read + q.write for q in k.on_input) for k in (bf16, fp16)]
    assert moved == [23, 39]  # bf16: 2-byte passes; fp16: the mul writes fp32 and the rest read and write it
    assert fp16.per_row == bf16.per_row + 1  # the scales' cast to fp32


def test_a_conv_of_an_int8_deployment_stays_16_bit_under_a_framework_and_says_so():
    per_op = _per_op("int8", "compiled", device="a100-sxm4-80gb", workload="resnet50:batch=8,device=meta")
    convs = per_op[per_op["kind"] == "conv"]
    assert len(convs) and convs["why"].str.contains("quantises linears only").all()
    engine = _per_op("int8", "engine", device="a100-sxm4-80gb", workload="resnet50:batch=8,device=meta")
    assert not engine["why"].str.contains("quantises linears only").any()


def test_int8_weight_only_streams_int8_weights_when_the_runtime_fuses_the_conversion():
    gemv = "gemm:M=1,N=8192,K=8192,dtype=fp16"

    def latency(dtype: str, runtime: str) -> tuple[float, str]:
        t = compare_tables(gemv, ["a100-sxm4-80gb"], ["dense"], runtime=runtime, dtype=dtype).per_op
        return float(t["latency_s"].iat[0]), str(t["why"].iat[0])

    for runtime in ("compiled", "engine"):
        wo, why = latency("int8wo", runtime)
        assert "converted to fp16 as the GEMM loads them" in why
        assert latency("bf16", runtime)[0] > 1.6 * wo  # a memory-bound GEMV reads half the bytes
    eager, why = latency("int8wo", "eager")
    assert "converts the int8 weight to fp16 before the GEMM" in why and "int8 weight to 16 bits" in why
    assert eager > latency("bf16", "eager")[0]  # the conversion writes and the GEMM reads a 16-bit copy
    # the int4 kernels do not take it
    t = compare_tables(gemv, ["a100-sxm4-80gb"], ["dense"], runtime="compiled", dtype="int8wo", kernel="tinygemm")
    assert "tinygemm runs int4 weight-only GEMMs, not int8wo" in t.per_op["why"].iat[0]


BERT_FP32 = "bert-base:batch=1,seq=128,dtype=fp32,layers=2,device=meta"


def test_a_cpu_framework_quantises_inside_torchs_quantized_linear_an_engine_does_not():
    """On a CPU torch deploys int8 with quantize_dynamic: quantized::linear_dynamic finds the
    input's range and quantises it inside the op (no dispatch of their own) and writes fp32; the
    DeepSparse-class engine keeps 8-bit activations throughout."""
    eager = _per_op("int8", "eager", device="xeon-sapphire-rapids", workload=BERT_FP32)
    engine = _per_op("int8", "engine", device="xeon-sapphire-rapids", workload=BERT_FP32)
    lin = eager[eager["kind"] == "linear"]
    assert lin["why"].str.contains("inside the quantized linear").all()
    assert not lin["why"].str.contains("int32").any()
    assert not engine[engine["kind"] == "linear"]["why"].str.contains("quantisation").any()
    rt = load_device("xeon-sapphire-rapids").runtime("eager")[1]
    qk = dynamic_quant.quant_kernels("int8", rt, model_dtype="fp32")
    assert qk.in_op and qk.kernels == 0 and qk.on_output == ()
    assert [q.name for q in qk.on_input] == ["min and max", "quantise"]
    # the passes cost time: each linear is slower than the engine's int8 GEMM alone
    assert lin["latency_s"].sum() > engine[engine["kind"] == "linear"]["latency_s"].sum()


def test_the_ops_an_int8_deployment_widens_come_back_at_the_models_width():
    """An fp32 model deployed int8: attention is not narrowed (an engine runs it at fp16), and a
    framework runtime runs it as the model built it, fp32, not a CPU fallback from fp16."""
    deployed = prepare(BERT_FP32, ["dense"], dtype="int8").workload
    attn = next(op for op in deployed.ops if op.kind == "attention")
    assert attn.dtype == "fp16" and attn.deployed_from == "fp32"
    eager = _per_op("int8", "eager", device="xeon-sapphire-rapids", workload=BERT_FP32)
    row = eager[eager["kind"] == "attention"].iloc[0]
    assert not row["fallback"] and "no fp16 GEMM figure" not in row["why"]


def test_the_calibrated_host_runs_pytorchs_runtimes_copied_with_their_sources():
    from sparsesim.fidelity.calibrate import HOST_RUNTIMES, runtime_lines

    ref = load_device("xeon-sapphire-rapids")
    lines = runtime_lines(ref)
    assert lines[0].startswith('default_runtime = { value = "eager"')
    for name in HOST_RUNTIMES:
        assert any(line.startswith(f'runtime.{name}.dynamic_quant_scheme = {{ value = "quantized-linear"')
                   for line in lines)
    assert all("copied from xeon-sapphire-rapids.toml" in line for line in lines[1:])
    assert not any(line.startswith("runtime.engine.") for line in lines)


def test_runtime_lines_flatten_a_per_kernel_table_with_its_sources():
    from sparsesim.fidelity.calibrate import runtime_lines

    lines = runtime_lines(load_device("h100-sxm5"))
    dispatch = [line for line in lines if line.startswith("runtime.eager.kernel_dispatch.cusparselt = ")]
    assert len(dispatch) == 1 and 'unit = "us"' in dispatch[0] and "copied from h100-sxm5.toml" in dispatch[0]
