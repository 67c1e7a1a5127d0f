"""Runtimes (eager, compiled, engine), the fusion pass shared by every family, kernel libraries
as choices, and deployment dtypes."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsesim.core.errors import DeviceFileError
from sparsesim.core.ir import Op
from sparsesim.cost import estimate_op
from sparsesim.fidelity.gpu_validation import gemm_op, layer_for
from sparsesim.hw.devices import builtin_devices, load_device, parse_device_file
from sparsesim.hw.runtimes import RUNTIMES
from sparsesim.run.estimate import compare_tables, cost_one, cost_ops
from sparsesim.runtime import apply_runtime, fuse
from sparsesim.runtime.fusion import OpFusion
from sparsesim.sparsity.patterns import parse_pattern

A100 = load_device("a100-sxm4-80gb")
H100 = load_device("h100-sxm5")
DEVICES = builtin_devices()
BERT_SMALL = "bert-base:batch=2,seq=64,layers=2,device=meta"


# ----------------------------------------------------------------------------- device files

def test_every_device_file_names_its_default_runtime_with_sources():
    for d in DEVICES:
        assert d.default_runtime in RUNTIMES, d.name
        assert "default_runtime" in d.provenance and d.provenance["default_runtime"].source.strip()
        name, _ = d.runtime()
        assert name == d.default_runtime
        for rt_name in d.runtimes.names():
            for key in ("host_dispatch", "host_overlaps", "fuse_elementwise", "fuse_epilogue"):
                assert d.provenance[f"runtime.{rt_name}.{key}"].source.strip(), (d.name, rt_name, key)
    gpus = [d for d in DEVICES if d.family == "gpu"]
    assert gpus and all(set(d.runtimes.names()) == set(RUNTIMES) for d in gpus)


def _a100_text() -> str:
    return Path(A100.path).read_text()


def test_runtime_errors_name_the_file_and_key(tmp_path):
    unknown = tmp_path / "u.toml"
    unknown.write_text(_a100_text().replace("runtime.engine.host_overlaps", "runtime.jit.host_overlaps"))
    with pytest.raises(DeviceFileError, match=r"u.toml: field 'runtime.jit': unknown runtime 'jit'"):
        parse_device_file(unknown)
    bad_field = tmp_path / "f.toml"
    bad_field.write_text(_a100_text().replace("runtime.eager.fuse_epilogue", "runtime.eager.fuse_everything"))
    with pytest.raises(DeviceFileError, match=r"f.toml: field 'runtime.eager': unknown field\(s\) fuse_everything"):
        parse_device_file(bad_field)
    bad_default = tmp_path / "d.toml"
    bad_default.write_text(_a100_text().replace('default_runtime = { value = "eager"', 'default_runtime = { value = "tvm"'))
    with pytest.raises(DeviceFileError, match=r"d.toml: field 'default_runtime': 'tvm' is not one of"):
        parse_device_file(bad_default)
    with pytest.raises(DeviceFileError, match=r"runtime 'compiled' is not described in its device file"):
        load_device("s4-antoum").runtime("compiled")


def test_runtime_on_every_costing_verb(cli):
    rc, out, _ = cli("estimate", "gemm:M=8,N=1024,K=1024,dtype=fp16", "--device", "a100-sxm4-80gb",
                     "--runtime", "compiled")
    assert rc == 0 and "runtime compiled" in out
    rc, out, _ = cli("compare", "gemm:M=8,N=1024,K=1024,dtype=fp16", "--devices", "a100-sxm4-80gb",
                     "--plans", "2:4", "--runtime", "engine", "--json")
    assert rc == 0 and json.loads(out)["rows"][0]["runtime"] == "engine"
    rc, out, _ = cli("simulate", "gemm:M=8,N=1024,K=1024,dtype=fp16", "--device", "h100-sxm5")
    assert rc == 0 and "runtime eager" in out
    rc, out, _ = cli("train", "gemm:M=256,N=1024,K=1024,dtype=fp16", "--devices", "a100-sxm4-80gb",
                     "--methods", "dense", "--steps", "10", "--runtime", "compiled", "--dtype", "bf16", "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["rows"][0]["runtime"] == "compiled" and doc["workload"].endswith("@bf16")
    rc, _, err = cli("train", "gemm:M=256,N=1024,K=1024,dtype=fp16", "--devices", "a100-sxm4-80gb",
                     "--steps", "10", "--dtype", "int4")
    assert rc == 2 and "--dtype 'int4': training is modelled at" in err
    rc, _, err = cli("train", "gemm:M=256,N=1024,K=1024,dtype=fp16", "--devices", "a100-sxm4-80gb",
                     "--steps", "10", "--kernel", "magic")
    assert rc == 2 and "--kernel 'magic': unknown kernel" in err
    rc, _, err = cli("estimate", "gemm:M=8,N=1024,K=1024", "--device", "s4-antoum", "--runtime", "eager")
    assert rc == 2 and "runtime 'eager'" in err and "s4-antoum" in err
    rc, _, err = cli("estimate", "gemm:M=8,N=1024,K=1024", "--device", "a100-sxm4-80gb", "--kernel", "magic")
    assert rc == 2 and "--kernel 'magic': unknown kernel" in err and "did you mean" not in err
    # the kernel column says "(cutlass)"; the name to force it by is suggested
    rc, _, err = cli("estimate", "gemm:M=8,N=1024,K=1024", "--device", "a100-sxm4-80gb", "--kernel", "cutlass")
    assert rc == 2 and "did you mean 'cutlass-24'?" in err and err.count("bsr") == 1


# ----------------------------------------------------------------------------- the fusion pass

def test_train_costs_under_the_runtime_and_kernel_asked_for():
    from sparsesim.train import TrainConfig, train_tables

    spec = "gemm:M=2048,N=4096,K=4096,dtype=fp16"
    t = {rt: train_tables(spec, ["dense", "2:4"], [0.5], ["uniform"], "a100-sxm4-80gb",
                          TrainConfig(steps=10, runtime=rt, kernel="cutlass-24")).summary for rt in ("eager", "engine")}
    assert set(t["eager"]["runtime"]) == {"eager"} and set(t["engine"]["runtime"]) == {"engine"}
    # eager pays host dispatch per op and the tensor subclass's: never faster than the engine
    assert (t["eager"]["time_s"].to_numpy() >= t["engine"]["time_s"].to_numpy()).all()


def test_search_costs_under_the_runtime_kernel_and_dtype_asked_for(tmp_path):
    from sparsesim.search.runner import SearchConfig, run_search

    cfg = SearchConfig(workload="digits", device="a100-sxm4-80gb", max_accuracy_drop=1.0, runtime="engine",
                       kernel="cusparselt", dtype="fp16", out=str(tmp_path))
    doc = run_search(cfg)
    assert (doc["runtime"], doc["kernel"], doc["dtype"]) == ("engine", "cusparselt", "fp16")
    assert doc["workload"].endswith("@fp16") and doc["check"]["agrees"]
    eager = run_search(SearchConfig(workload="digits", device="a100-sxm4-80gb", max_accuracy_drop=1.0,
                                    dtype="fp16", out=str(tmp_path / "eager")))
    assert eager["runtime"] == "eager" and eager["dense"]["latency_s"] > doc["dense"]["latency_s"]


def _mem_op(i: int, kind: str, shape: tuple[int, ...], inputs: int = 1, aten: str = "aten.add.Tensor") -> Op:
    n = 1
    for d in shape:
        n *= d
    return Op(index=i, kind=kind, aten=aten, module=f"m{i}", call_index=0, dtype="fp16",
              input_shapes=(shape,) * inputs, output_shape=shape, flops=n, bytes_moved=2 * n * (inputs + 1))


kinds = st.sampled_from(["elementwise", "norm", "softmax", "copy", "linear", "embedding"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seq=st.lists(st.tuples(kinds, st.integers(1, 2), st.booleans()), min_size=1, max_size=12),
       dev=st.sampled_from([d.name for d in DEVICES]))
def test_fusion_never_increases_latency_or_bytes(seq, dev):
    """Whatever the op chain, device and runtime, a fused op costs at most what it costs alone."""
    device = next(d for d in DEVICES if d.name == dev)
    ops = []
    for i, (kind, inputs, same_shape) in enumerate(seq):
        shape = (64, 768) if same_shape else (64, 3072)
        if kind == "linear":
            op = dataclasses.replace(gemm_op(64, shape[1], 768, "fp16"), index=i)
        else:
            op = _mem_op(i, kind, shape, inputs, "aten.native_batch_norm.default" if kind == "norm" else "aten.add.Tensor")
        ops.append(op)
    for rt_name in device.runtimes.names():
        _, rt = device.runtime(rt_name)
        fusion = fuse(ops, elementwise=True, epilogue=True)
        for op, fu in zip(ops, fusion):
            alone = apply_runtime(estimate_op(op, None, device), OpFusion(op.index, op.index), rt)
            fused = apply_runtime(estimate_op(op, None, device), fu, rt)
            assert 0.0 <= fu.dram_scale <= 1.0
            assert fused.latency_s <= alone.latency_s + 1e-15
            assert fused.energy_j <= alone.energy_j + 1e-15
            for level, b in fused.bytes_by_level.items():
                assert b <= alone.bytes_by_level[level] + 1e-9


def test_fusion_groups_chains_and_epilogues():
    lin = gemm_op(64, 768, 768, "fp16")
    add = _mem_op(1, "elementwise", (64, 768), 2)
    norm = _mem_op(2, "norm", (64, 768), 1, "aten.native_layer_norm.default")
    gelu = _mem_op(3, "elementwise", (64, 768), 1)
    ops = [lin, add, norm, gelu]
    chain = fuse(ops, elementwise=True, epilogue=False)
    assert [f.role for f in chain] == ["alone", "head", "fused", "fused"]
    assert chain[2].dram_scale < 1 and chain[2].launches == 0
    epi = fuse(ops, elementwise=True, epilogue=True)
    assert [f.role for f in epi] == ["head", "fused", "head", "fused"]
    assert epi[1].how == "epilogue" and epi[1].dram_scale == pytest.approx(1 / 3)  # the residual read only
    none = fuse(ops, elementwise=False, epilogue=False)
    assert all(f.role == "alone" and f.dram_scale == 1.0 for f in none)
    bn = _mem_op(1, "norm", (64, 768), 1, "aten._native_batch_norm_legit_no_training.default")
    assert fuse([lin, bn], elementwise=False, epilogue=True)[1].dram_scale == 0.0  # folded into the weights


def _bmm(i: int, bh: int, m: int, n: int, k: int) -> Op:
    from sparsesim.core.ir import GemmShape

    return Op(index=i, kind="matmul", aten="aten.bmm.default", module="attn", call_index=0, dtype="fp16",
              input_shapes=((bh, m, k), (bh, k, n)), output_shape=(bh, m, n), flops=2 * bh * m * n * k,
              bytes_moved=2 * bh * (m * k + k * n + m * n), gemm=GemmShape(m, n, k, batch=bh))


def _eager_attention(bh: int, s: int, d: int, masked: bool = True) -> list[Op]:
    """Ops of transformers' eager attention: Q, K made contiguous, Q K^T, scale, mask add,
    softmax, V made contiguous, P V, heads transposed back."""
    ops = [_mem_op(0, "copy", (bh, s, d)), _mem_op(1, "copy", (bh, d, s)), _bmm(2, bh, s, s, d),
           _mem_op(3, "elementwise", (bh, s, s))]
    if masked:
        ops.append(_mem_op(4, "elementwise", (bh, s, s), 2))
    ops += [_mem_op(5, "softmax", (bh, s, s)), _mem_op(6, "copy", (bh, s, d)), _bmm(7, bh, s, d, s),
            _mem_op(8, "copy", (bh, s, d))]
    return [dataclasses.replace(op, index=i) for i, op in enumerate(ops)]


def test_attention_fusion_keeps_the_scores_on_chip():
    ops = _eager_attention(192, 384, 64)
    fu = fuse(ops, elementwise=True, epilogue=False, attention=True)
    assert [f.role for f in fu] == ["fused", "fused", "head", "fused", "fused", "fused", "fused", "fused", "fused"]
    assert {f.how for f in fu} == {"attention"} and all(f.group == 2 for f in fu)
    assert fu[0].dram_scale == fu[1].dram_scale == fu[6].dram_scale == fu[8].dram_scale == 0.0  # layout copies
    head = ops[2]
    # the score matmul launches one flash-attention kernel: both matmuls, Q, K, V read and O written once
    kop = fu[2].kernel_op
    assert kop is not None and kop.kind == "attention" and kop.gemm == head.gemm
    assert kop.flops == head.flops + ops[7].flops
    assert kop.bytes_moved == 4 * 192 * 384 * 64 * 2  # Q, K, V and O at fp16, no scores
    assert fu[2].dram_scale == 1.0 and fu[7].dram_scale == 0.0  # the value matmul's traffic is the kernel's
    assert all(f.kernel_op is None for i, f in enumerate(fu) if i != 2)
    # without the switch, or without a softmax between the matmuls, nothing is fused as attention
    assert all(f.how != "attention" for f in fuse(ops, elementwise=True, epilogue=False))
    no_softmax = [op for op in ops if op.kind != "softmax"]
    assert all(f.how != "attention" for f in fuse(no_softmax, elementwise=True, epilogue=False, attention=True))
    assert head.gemm is not None and head.gemm.batch == 192


@settings(max_examples=40, deadline=None)
@given(bh=st.integers(1, 96), s=st.sampled_from([1, 7, 64, 384, 1024]), d=st.sampled_from([32, 64, 128]),
       masked=st.booleans(), dev=st.sampled_from(["a100-sxm4-80gb", "h100-sxm5", "jetson-agx-orin"]))
def test_attention_fusion_never_increases_latency_or_bytes(bh, s, d, masked, dev):
    device = next(x for x in DEVICES if x.name == dev)
    ops = _eager_attention(bh, s, d, masked)
    _, rt = device.runtime("compiled")
    alone = [apply_runtime(estimate_op(op, None, device), OpFusion(op.index, op.index), rt) for op in ops]
    fusions = fuse(ops, elementwise=True, epilogue=False, attention=True)
    # the head runs the fused attention kernel (its kernel_op), the other members nothing of their own
    fused = [apply_runtime(estimate_op(fu.kernel_op or op, None, device), fu, rt) for op, fu in zip(ops, fusions)]
    assert all(0.0 <= fu.dram_scale <= 1.0 for fu in fusions)
    for a, f, fu in zip(alone, fused, fusions):
        if fu.kernel_op is None:
            assert f.latency_s <= a.latency_s + 1e-15 and f.energy_j <= a.energy_j + 1e-15
    assert sum(f.latency_s for f in fused) <= sum(a.latency_s for a in alone) + 1e-15
    assert sum(f.energy_j for f in fused) <= sum(a.energy_j for a in alone) + 1e-15


def test_compiled_runs_eager_written_attention_fused():
    """BERT traced with transformers' eager attention: compiled (and engine) run it as one fused
    attention kernel, eager through DRAM op by op (published.md §2.2: eager ~1.7x compiled)."""
    spec = "bert-base:batch=2,seq=128,layers=2,device=meta,attn=eager,mask=1"
    per_op = {rt: compare_tables(spec, [A100], ["dense"], runtime=rt).per_op for rt in ("eager", "compiled")}
    comp, eager = per_op["compiled"], per_op["eager"]
    assert (comp["kind"].eq("softmax") & comp["kernel"].eq("fused (attention)")).sum() == 2
    assert not eager["kernel"].str.contains("attention").any()
    soft = comp[comp["kind"] == "softmax"]
    assert (soft["bytes_dram"] == 0).all()
    assert eager["latency_s"].sum() > 1.3 * comp["latency_s"].sum()


@pytest.mark.parametrize("dev", ["a100-sxm4-80gb", "h100-sxm5", "jetson-agx-orin"])
def test_bert_base_dense_runtime_ordering(dev):
    """Dense BERT-base: engine <= compiled <= eager on every GPU."""
    lat = {}
    for rt in RUNTIMES:
        t = compare_tables("bert-base:batch=8,seq=128,device=meta", [dev], ["dense"], runtime=rt)
        lat[rt] = float(t.summary["latency_s"].iat[0])
        assert set(t.per_op["runtime"]) == {rt}
    assert lat["engine"] <= lat["compiled"] <= lat["eager"], lat
    # with SDPA attention the gap is elementwise fusion and host dispatch only (both runtimes pay
    # each kernel's GPU-side ramp-up and tail); eager-written attention widens it (next test)
    assert lat["eager"] > 1.05 * lat["compiled"], lat


def test_eager_flips_a_small_batch_2to4_answer():
    """BERT-base at batch 16 x 128 tokens: eager's tensor-subclass dispatch per 2:4 linear makes
    2:4 slower than dense, while the compiled graph (no Python dispatch) makes it faster."""
    speed = {}
    for rt in ("eager", "compiled"):
        t = compare_tables("bert-base:batch=16,seq=128,device=meta", ["a100-sxm4-80gb"], ["2:4"], runtime=rt)
        speed[rt] = float(t.summary["speedup_vs_dense"].iat[0])
    assert speed["eager"] < 1 < speed["compiled"], speed


# ----------------------------------------------------------------------------- kernels

def test_runtime_picks_the_fastest_kernel_it_offers_and_says_which():
    op = gemm_op(4096, 4096, 4096, "fp16")
    layer = layer_for("weight", 4096, 4096, parse_pattern("2:4"), "fp16")
    picked = cost_one(op, layer, A100, runtime="eager")
    assert "eager picks cusparselt" in picked.why and "cutlass-24" in picked.why
    forced = cost_one(op, layer, A100, runtime="eager", kernel="cutlass-24")
    assert "(cutlass)" in forced.kernel and "kernel cutlass-24 forced" in forced.why
    assert forced.latency_s >= picked.latency_s
    assert "transpose not fused" in forced.why
    # the engine offers no CUTLASS path but runs cuSPARSELt with split-K search and no torch layouts
    eng = cost_one(op, layer, A100, runtime="engine")
    assert "(cusparselt)" in eng.kernel and "layout kernels" not in eng.why


def test_unstructured_kernels_by_runtime():
    op = gemm_op(32, 21504, 7168, "fp16")
    layer = layer_for("weight", 21504, 7168, parse_pattern("unstructured:0.8"), "fp16")
    dense = cost_one(op, None, A100, runtime="engine").latency_s
    eng = cost_one(op, layer, A100, runtime="engine")
    assert eng.kernel.startswith("flash-llm") and dense / eng.latency_s > 1.3
    eager = cost_one(op, layer, A100, runtime="eager")
    assert "cusparse" in eager.kernel and eager.latency_s > dense  # torch's CSR path: cuSPARSE


def test_sputnik_cost_depends_on_tokens_rows_and_row_length():
    layer = layer_for("weight", 4096, 4096, parse_pattern("unstructured:0.9"), "fp16")

    def t(m):
        return cost_one(gemm_op(m, 4096, 4096, "fp16"), layer, A100, runtime="engine", kernel="sputnik").details["compute_s"]

    # fewer tokens than the 1D tile leave lanes idle: 8 tokens cost as much compute as 32
    assert t(8) == pytest.approx(t(32), rel=1e-9)
    assert t(64) == pytest.approx(2 * t(32), rel=1e-9)
    short = layer_for("weight", 4096, 4096, parse_pattern("unstructured:0.999"), "fp16")
    per_nnz_short = cost_one(gemm_op(64, 4096, 4096, "fp16"), short, A100, runtime="engine",
                             kernel="sputnik").details["compute_s"] / short.stats.nnz
    assert per_nnz_short > t(64) / layer.stats.nnz  # 4 nonzeros per row waste most of a 32-step


# ----------------------------------------------------------------------------- dtypes

def test_int8_gemm_spec_estimates(cli):
    rc, out, _ = cli("estimate", "gemm:M=1024,N=1024,K=1024,dtype=int8", "--device", "h100-sxm5", "--plan", "2:4")
    assert rc == 0, out
    assert "int8" in out and "sparse tensor core" in out


def test_dtype_override_retypes_and_sizes_metadata():
    from sparsesim.run.estimate import prepare

    p = prepare("gemm:M=64,N=1024,K=1024,dtype=fp16", ["2:4"], dtype="int8")
    layer = next(iter(p.sparse["2:4"].layers.values()))
    assert layer.metadata_bytes / layer.value_bytes == pytest.approx(0.25)  # 2 bits per 8-bit value
    p16 = prepare("gemm:M=64,N=1024,K=1024,dtype=fp16", ["2:4"])
    layer16 = next(iter(p16.sparse["2:4"].layers.values()))
    assert layer16.metadata_bytes / layer16.value_bytes == pytest.approx(0.125)
    w4 = prepare("gemm:M=64,N=1024,K=1024,dtype=fp16", ["dense"], dtype="int4").workload
    op = w4.weight_ops()[0]
    assert op.dtype == "int4" and op.bytes_moved == 64 * 1024 * 2 * 2 + 1024 * 1024 // 2


def test_int4_weight_only_runs_one_layout_per_runtime():
    """A deployment stores its int4 layers in one layout per pattern: torch (torchao) in tinygemm's
    for dense layers and Sparse-Marlin's for 2:4; an engine (vLLM-style) in Marlin's and
    Sparse-Marlin's."""
    for runtime, kernel in (("compiled", "dense (tinygemm int4)"), ("eager", "dense (tinygemm int4)"),
                            ("engine", "dense (marlin int4)")):
        t = compare_tables("gemm:M=1,N=4096,K=4096,dtype=fp16", ["a100-sxm4-80gb"], ["2:4"], runtime=runtime,
                           dtype="int4")
        ops = t.per_op
        dense = ops[ops["plan"] == "dense"].iloc[0]
        sparse = ops[ops["plan"] == "2:4"].iloc[0]
        assert dense["kernel"] == kernel and "sparse-marlin" in sparse["kernel"], runtime
        assert not dense["fallback"] and not sparse["fallback"]
        # eager pays torchao's Python dispatch for the Sparse-Marlin subclass on one small GEMM
        assert (sparse["latency_s"] < dense["latency_s"]) == (runtime != "eager"), runtime


def test_a_sparser_channel_plan_at_int4_never_stores_more():
    """The case a property search found when each op picked the fastest of two int4 layouts: a
    layer pruned to 32 outputs ran tinygemm (K padded to 1,024) and stored 4x what the one pruned
    to 64 stored in Marlin's layout. With one layout per runtime, and an engine padding a layer
    Marlin refuses to its 128 x 64 tile, the sparser plan stores at most as much."""
    from sparsesim.sparsity.shrink import shrink_layer_op

    def stored(runtime: str, plan: str) -> float:
        op = gemm_op(1, 127, 128, "int4")
        layer = layer_for("weight", 127, 128, parse_pattern(plan), "int4")
        return cost_one(shrink_layer_op(op, layer), layer, A100, runtime=runtime).memory_bytes

    for runtime in ("eager", "compiled", "engine"):
        assert stored(runtime, "channel:0.75") <= stored(runtime, "channel:0.5"), runtime
    narrow = cost_one(gemm_op(1, 32, 128, "int4"), None, A100, runtime="engine")
    assert narrow.kernel == "dense (marlin int4)" and not narrow.fallback
    assert "1x64x128, padded from 32x128 (engine pads channels to Marlin's tiles)" in narrow.why
    assert narrow.memory_bytes == pytest.approx(64 * 128 * (0.5 + 2 / 128))


def test_tinygemm_stores_a_scale_and_zero_per_64_weights_and_never_splits_k():
    from sparsesim.cost.families.gpu_kernels import TINYGEMM_GROUP_SIZE, TINYGEMM_SCALE_ZERO_BYTES

    op = gemm_op(1, 4096, 4096, "int4")
    tiny = cost_one(op, None, A100, runtime="compiled", kernel="tinygemm")
    marlin = cost_one(op, None, A100, runtime="compiled", kernel="marlin")
    assert tiny.kernel == "dense (tinygemm int4)" and not tiny.fallback
    weights = 4096 * 4096
    assert tiny.memory_bytes == pytest.approx(weights / 2 + weights / TINYGEMM_GROUP_SIZE * TINYGEMM_SCALE_ZERO_BYTES)
    assert tiny.memory_bytes > marlin.memory_bytes
    assert tiny.details["split_k"] == 1 and tiny.details["tiles"] == 4096 // 8
    # torchao's dense int4 layout is tinygemm's, so the compiled runtime runs it unless Marlin is
    # forced; forced, Marlin is faster: at one token its pipelined loads hide its dequantisation
    # where tinygemm's lock-step blocks cannot, and at 64 tokens its tiles win too
    assert cost_one(op, None, A100, runtime="compiled").kernel == "dense (tinygemm int4)"
    assert "not offered by compiled: forced" in marlin.why
    assert marlin.latency_s < tiny.latency_s
    batch = gemm_op(64, 4096, 4096, "int4")
    assert (cost_one(batch, None, A100, runtime="compiled", kernel="marlin").latency_s
            < cost_one(batch, None, A100, runtime="compiled", kernel="tinygemm").latency_s)
    fp16 = cost_one(gemm_op(64, 1024, 1024, "fp16"), None, A100, kernel="tinygemm")
    assert fp16.fallback and "tinygemm runs int4 weight-only GEMMs, not fp16" in fp16.why


@pytest.mark.parametrize("device", [d.name for d in builtin_devices()])
def test_every_dtype_device_pattern_estimates_or_falls_back_with_a_reason(device):
    dev = load_device(device)
    for dtype in ("fp32", "fp16", "bf16", "fp8", "int8", "int8wo", "int4"):
        for pattern in ("dense", "2:4", "unstructured:0.9", "block8x8:0.5", "channel:0.5"):
            op = gemm_op(64, 256, 256, dtype)
            layer = None if pattern == "dense" else layer_for("weight", 256, 256, parse_pattern(pattern), dtype)
            c = cost_ops([op], [layer], dev)[0]
            assert c.latency_s > 0 and c.energy_j > 0, (device, dtype, pattern)
            if c.fallback:
                assert c.why.strip(), (device, dtype, pattern)


def test_tinygemm_blocks_load_then_compute_in_lock_step():
    """int4mm.cu: each warp loads one iteration's operands into registers, then dequantises and
    multiplies them before its next loads, and a block's 8 warps run the same few iterations
    together; an SM overlaps loads and math only across the 4 blocks its registers hold
    (closed-network mean-value analysis over its issue slots and DRAM share, DRAM latency as the
    delay). A 1024-column GEMV's 128 blocks leave most SMs one block: latency and both demands
    in series on every step."""
    from sparsesim.cost.families.gpu_machine import closed_network_throughput, dram_bw, lockstep_blocks_s

    # one customer: delay plus every demand in series; many: the largest demand's rate
    assert closed_network_throughput(1, (2.0, 3.0), 5.0) == pytest.approx(1 / 10)
    assert closed_network_throughput(200, (2.0, 3.0), 5.0) == pytest.approx(1 / 3, rel=1e-3)
    rates = [closed_network_throughput(n, (2.0, 3.0), 5.0) for n in range(1, 9)]
    assert rates == sorted(rates) and rates[-1] < 1 / 3
    p = A100.params
    sms = int(p.sm_count)
    one = lockstep_blocks_s(p, sms, 4, 4608, 1464, 8, 64)
    assert one.blocks_per_sm == 1
    step = 1464 / (p.issue_per_sm_clock * p.clock) + 4608 / (dram_bw(p) / p.sm_count) + p.dram_latency
    assert one.seconds == pytest.approx(4 * step)
    full = lockstep_blocks_s(p, 4 * sms, 4, 4608, 1464, 8, 64)
    assert full.blocks_per_sm == 4 and one.seconds < full.seconds < 4 * one.seconds

    narrow = cost_one(gemm_op(1, 1024, 4096, "int4"), None, A100, runtime="compiled", kernel="tinygemm")
    wide = cost_one(gemm_op(1, 4 * 1024, 4096, "int4"), None, A100, runtime="compiled", kernel="tinygemm")
    assert "loads and math in series within a block: 2 block(s) an SM x 8 warps" in narrow.why
    assert narrow.memory_bytes / narrow.details["memory_s"] < 0.5 * dram_bw(p)
    assert narrow.memory_bytes / narrow.details["memory_s"] < wide.memory_bytes / wide.details["memory_s"] < dram_bw(p)
    # a short K is padded to 1,024 by torchao's layout: every warp of a block gets one step
    short = cost_one(gemm_op(1, 1024, 256, "int4"), None, A100, runtime="compiled", kernel="tinygemm")
    assert "padded from 1024x256" in short.why and "x 8 warps, 1 step(s)" in short.why
    # never faster than its DRAM bytes or its issue slots alone
    for c in (narrow, wide, short):
        assert c.latency_s >= c.memory_bytes / dram_bw(p)


def _brute_force_chain(tokens: int, n: int, k: int, sms: int, sparse: bool, group: int) -> int:
    """The most blocks any column slice is shared by, walking every column of the partition."""
    from sparsesim.cost.families import marlin

    s = marlin.stripes(tokens, n, k, sms, sparse=sparse, group_size=group)
    k_tiles = math.ceil(k / s.tile_k)
    columns = math.ceil(n / s.tile_n) * min(math.ceil(tokens / marlin.TOKENS_PER_TILE), marlin.MAX_PARALLEL)
    walked = max(len({t // s.iters for t in range(c * k_tiles, (c + 1) * k_tiles)}) for c in range(columns))

    def kernel_slice_count(col: int) -> int:
        # init_slice() of marlin_24_cuda_kernel.cu / marlin_cuda_kernel.cu, as written there
        col_first = s.iters * math.ceil(k_tiles * col / s.iters)
        count = 1
        if col_first <= k_tiles * (col + 1):
            col_off = col_first - k_tiles * col
            count = math.ceil((k_tiles - col_off) / s.iters) + (1 if col_off > 0 else 0)
        return count

    assert walked == max(kernel_slice_count(c) for c in range(columns))
    return walked


@pytest.mark.parametrize("tokens,n,k,sms,sparse", [
    (1, 1024, 4096, 108, True), (1, 4096, 14336, 108, True), (1, 128256, 4096, 132, True),
    (16, 6144, 4096, 108, False), (64, 4096, 4096, 132, False), (300, 5120, 1280, 108, True),
])
def test_marlin_stripes_follow_the_kernels_partition(tokens, n, k, sms, sparse):
    """The partition of marlin_cuda / marlin_cuda_2_4: equal runs of tiles per block, rounded to
    whole quantisation groups; the chain length is what walking every column slice finds."""
    from sparsesim.cost.families import marlin

    s = marlin.stripes(tokens, n, k, sms, sparse=sparse, group_size=128)
    assert s.blocks <= sms and s.blocks * s.iters >= math.ceil(k / s.tile_k) * math.ceil(n / s.tile_n)
    assert s.iters % (2 if sparse and s.tile_k == 128 else 1) == 0
    assert s.chain == _brute_force_chain(tokens, n, k, sms, sparse, 128)


def test_marlin_one_token_narrow_layer_waits_on_its_serial_reductions():
    """Llama-3-8B's k_proj at one token on an A100 (kernel arithmetic, 108 SMs): 8 column slices of
    32 k-tiles, stripes of 4 tiles, so 64 blocks stream and 8 share each slice: 7 hand-offs
    through L2, each REDUCE_L2_ROUND_TRIPS L2 latencies. A wide layer shares a slice among 2."""
    from sparsesim.cost.families import marlin

    s = marlin.stripes(1, 1024, 4096, 108, sparse=True, group_size=128)
    assert (s.tile_k, s.tile_n, s.iters, s.blocks, s.chain) == (128, 128, 4, 64, 8)
    assert marlin.stripes(1, 14336, 4096, 108, sparse=True, group_size=128).chain == 2
    p = A100.params
    layer = layer_for("weight", 1024, 4096, parse_pattern("2:4"), "int4")
    # under the engine, which allocates the lock workspace once (no fill kernel a call)
    narrow = cost_one(gemm_op(1, 1024, 4096, "int4"), layer, A100, runtime="engine", kernel="sparse-marlin")
    chain = 7 * marlin.REDUCE_L2_ROUND_TRIPS * p.l2_latency
    assert narrow.details["overhead_s"] == pytest.approx(A100.runtime("engine")[1].kernel_launch + chain)
    assert "7 serial reduction(s) in L2" in narrow.why and "64 of 108 SMs" in narrow.why
    dense = cost_one(gemm_op(1, 1024, 4096, "int4"), None, A100, runtime="compiled", kernel="marlin")
    assert "serial reduction(s) in L2" in dense.why and dense.details["overhead_s"] > chain


@pytest.mark.parametrize("kernel,plan", [("marlin", "dense"), ("tinygemm", "dense"), ("sparse-marlin", "2:4")])
def test_int4_kernels_written_for_ampere_run_hoppers_mma_sync_rate(kernel, plan):
    """Marlin, Sparse-Marlin and tinygemm issue Ampere's mma.sync (mma.sp.sync) instructions: on an
    H100 their math runs at `mma_sync_fraction` of the tensor peak (a compute-bound prefill)."""
    op = gemm_op(4096, 4096, 4096, "int4")
    layer = None if plan == "dense" else layer_for("weight", 4096, 4096, parse_pattern(plan), "int4")
    # the tensor math alone: tinygemm's issue slots (it dequantises the weight again for every 16
    # rows) would bind a prefill this size before its MMAs do
    math_only = dataclasses.replace(H100, params=dataclasses.replace(H100.params, issue_per_sm_clock=0.0))
    full = dataclasses.replace(math_only, params=dataclasses.replace(math_only.params, mma_sync_fraction=1.0))
    slow = cost_one(op, layer, math_only, runtime="compiled", kernel=kernel)
    fast = cost_one(op, layer, full, runtime="compiled", kernel=kernel)
    assert H100.params.mma_sync_fraction < 1
    assert slow.details["compute_s"] == pytest.approx(fast.details["compute_s"] / H100.params.mma_sync_fraction)


def test_int4_kernels_run_only_the_shapes_their_checks_accept():
    """Marlin takes the first of its thread configurations whose tile divides K and N; Sparse-Marlin
    has one per batch size; tinygemm runs any layer whose K its groups of 64 divide, padded as
    torchao's int4 layout stores it (K to 1,024s, N to 8s: GPT-2's 50,257-word head). A shape none
    accepts runs as a 16-bit dense GEMM, saying why (torchao leaves such layers unquantised)."""
    from sparsesim.cost.families import marlin

    assert marlin.config(1, 4096, 4096, sparse=False, group_size=128) == (128, 128)
    assert marlin.config(1, 4160, 4096, sparse=False, group_size=128) == (128, 64)
    assert marlin.config(64, 4096, 4096, sparse=False, group_size=128) == (64, 256)
    assert "does not divide" in marlin.config(1, 4160, 4096, sparse=True, group_size=128)
    assert "quantisation group" in marlin.config(1, 4096, 4000, sparse=False, group_size=128)
    head = cost_one(gemm_op(1, 50257, 768, "int4"), None, A100, runtime="compiled")
    assert not head.fallback and head.kernel == "dense (tinygemm int4)"
    assert "1x50264x1024, padded from 50257x768" in head.why
    assert head.memory_bytes == pytest.approx(50264 * 1024 * (0.5 + 4 / 64))
    odd_k = cost_one(gemm_op(1, 4096, 4000, "int4"), None, A100, runtime="compiled")
    assert odd_k.fallback and "ran as a 16-bit dense GEMM" in odd_k.why
    assert "groups of 64 divide K (K = 4000)" in odd_k.why
    # an engine pads the layer to whole groups of 128 and Marlin's tile instead
    engine = cost_one(gemm_op(1, 4096, 4000, "int4"), None, A100, runtime="engine")
    assert not engine.fallback and "1x4096x4096, padded from 4096x4000" in engine.why
    odd = cost_one(gemm_op(1, 4160, 4096, "int4"), None, A100, runtime="compiled", kernel="marlin")
    assert not odd.fallback and "(128x64)" in odd.why


def test_a_runtime_that_fuses_cusparselts_transpose_pays_no_copy(tmp_path):
    """torch 2.13 has cuSPARSELt write a linear's result in place (`transpose_fused`); through
    torch 2.6 the transposed result costs its consumer a copy. A typo names the field and the kernels."""
    rts = A100.runtimes
    fused = dataclasses.replace(rts.by_name["eager"], transpose_fused=("cusparselt",))
    dev = dataclasses.replace(A100, runtimes=dataclasses.replace(rts, by_name={**rts.by_name, "eager": fused}))
    op = gemm_op(4096, 4096, 4096, "fp16")
    layer = layer_for("weight", 4096, 4096, parse_pattern("2:4"), "fp16")
    copied = cost_one(op, layer, A100, runtime="eager", kernel="cusparselt")
    direct = cost_one(op, layer, dev, runtime="eager", kernel="cusparselt")
    assert "result copied out" in copied.why and "result copied out" not in direct.why
    assert direct.latency_s < copied.latency_s
    cutlass = cost_one(op, layer, dev, runtime="eager", kernel="cutlass-24")
    assert "result copied out" in cutlass.why  # torch's CUTLASS path still copies
    text = Path(A100.path).read_text().replace(
        'runtime.eager.framework_layouts =', 'runtime.eager.transpose_fused = { value = ["cusparse-lt"], source = "x" }\n'
        'runtime.eager.framework_layouts =', 1)
    bad = tmp_path / "a100-typo.toml"
    bad.write_text(text)
    with pytest.raises(DeviceFileError, match=r"runtime.eager.transpose_fused.*cusparse-lt"):
        parse_device_file(bad)


@pytest.mark.parametrize("device,plan,kernel", [("a100-sxm4-80gb", "2:4", "sparse tensor core"),
                                                ("xeon-sapphire-rapids", "unstructured:0.9", "jit-spmm")])
def test_framework_runtimes_run_sparse_weights_in_matrix_products_only(device, plan, kernel):
    """torch's sparse tensors (semi-structured, CSR, BSR) dispatch mm/addmm/linear, never a
    convolution: under eager and compiled a sparse conv runs dense and says why; an engine runs it sparse."""
    wl = "conv:batch=8,cin=256,cout=256,h=28,w=28,kernel=1,dtype=fp16"

    def planned(workload, rt):
        t = compare_tables(workload, [device], [plan], runtime=rt).per_op
        return t[t["plan"] == plan].iloc[0]

    for rt in ("eager", "compiled"):
        row = planned(wl, rt)
        assert row["fallback"] and "run matrix products only" in row["why"], row["why"]
    row = planned(wl, "engine")
    assert kernel in row["kernel"] and not row["fallback"], row["why"]
    assert "matrix products only" not in planned("gemm:M=4096,N=4096,K=4096,dtype=fp16", "eager")["why"]


def test_tinygemm_is_held_to_its_compiled_loop_and_registers():
    """tinygemm's K loop issues 183 warp instructions per 1,024 weights and takes 64 registers a
    thread (its sm_80 build): at the A100's DRAM rate the weight's bytes still bind, on an H200
    (HBM3e) the issue slots do; and an SM holds 4 of its blocks, not the 8 its warp slots allow."""
    from sparsesim.cost.families.gpu_kernels import TINYGEMM_REGISTERS, TINYGEMM_WARPS
    from sparsesim.cost.families.gpu_machine import resident_blocks_per_sm

    op = gemm_op(1, 14336, 4096, "int4")
    a100 = cost_one(op, None, A100, runtime="compiled", kernel="tinygemm")
    h200 = cost_one(op, None, load_device("h200"), runtime="compiled", kernel="tinygemm")
    assert a100.bound == "memory" and h200.bound == "compute" and "issue-bound math" in h200.why
    p = A100.params
    assert resident_blocks_per_sm(p, TINYGEMM_WARPS) == 8
    assert resident_blocks_per_sm(p, TINYGEMM_WARPS, TINYGEMM_REGISTERS) == 4


def test_sparse_convolutions_is_the_runtime_field_that_decides(tmp_path):
    """The rule is the runtime's `sparse_convolutions`, not a family's guess: a device file that
    says its eager runtime takes sparse convolutions gets the 2:4 conv on sparse tensor cores."""
    f = tmp_path / "a100-sparse-conv.toml"
    f.write_text('name = "a100-sparse-conv"\nextends = "a100-sxm4-80gb"\n'
                 'runtime.eager.sparse_convolutions = { value = true, source = "test: a framework with sparse convs" }\n')
    wl = "conv:batch=8,cin=256,cout=256,h=28,w=28,kernel=1,dtype=fp16"
    t = compare_tables(wl, [str(f)], ["2:4"], runtime="eager").per_op
    row = t[t["plan"] == "2:4"].iloc[0]
    assert "sparse tensor core" in row["kernel"] and "matrix products only" not in row["why"], row["why"]


def test_torchao_zeroes_sparse_marlins_lock_workspace_every_call():
    """torchao's Sparse-Marlin linear allocates and zeroes the kernel's lock workspace on every
    call (a fill kernel before the GEMM, kept by the compiled graph); an engine allocates it once."""
    from sparsesim.cost.families import marlin

    assert marlin.workspace_bytes(4096) == 4096 // 128 * 16 * 4
    op = gemm_op(1, 4096, 4096, "int4")
    layer = layer_for("weight", 4096, 4096, parse_pattern("2:4"), "int4")
    compiled = cost_one(op, layer, A100, runtime="compiled", kernel="sparse-marlin")
    engine = cost_one(op, layer, A100, runtime="engine", kernel="sparse-marlin")
    assert "2,048 B lock workspace allocated and zeroed" in compiled.why
    assert "lock workspace" not in engine.why
    fill = A100.runtimes.by_name["compiled"].kernel_launch
    assert compiled.latency_s - engine.latency_s == pytest.approx(fill + 2048 / (A100.params.dram_bandwidth
                                                                                * A100.params.dram_efficiency), rel=0.05)
