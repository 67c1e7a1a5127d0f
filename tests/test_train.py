"""Training cost: hand-checked closed forms (a two-layer MLP's step FLOPs), ERK densities, the
memory facts of dense-to-sparse and masked training, the Zhu & Gupta schedule, the torchao 2:4
training linear, and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from sparsesim.core.errors import TrainError
from sparsesim.train import TrainConfig, train, train_tables
from sparsesim.train.distributions import (
    Layer,
    erdos_renyi,
    sparsifiable,
    target_patterns,
)
from sparsesim.train.methods import METHODS, zhu_gupta
from sparsesim.train.optimizers import OPTIMIZERS

B, D_IN, H, D_OUT = 64, 256, 512, 128
GPU = "a100-sxm4-80gb"


@pytest.fixture(scope="module")
def mlp():
    """A two-layer MLP (no biases), traced at batch B in fp32."""
    from sparsesim.tracing.tracer import trace

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D_IN, H, bias=False), nn.ReLU(), nn.Linear(H, D_OUT, bias=False))
    return trace(model, (torch.randn(B, D_IN),), name="mlp")


def _relu_flops(wl) -> int:
    return sum(op.flops for op in wl.ops if op.kind == "elementwise")


def _segments(wl, method, s, **cfg):
    config = TrainConfig(steps=1000, optimizer="sgd", **cfg)
    return train_tables(wl, [method], [s], ["uniform"], GPU, config)


def test_mlp_step_flops_equal_closed_forms(mlp):
    f1, f2 = 2 * B * D_IN * H, 2 * B * H * D_OUT
    relu = _relu_flops(mlp)
    params = D_IN * H + H * D_OUT
    sgd = OPTIMIZERS["sgd"].flops_per_param
    s = 0.75  # a whole number of kept weights in both layers
    d = 1 - s
    # dense: the first layer's input needs no gradient, so fc1 runs forward and grad-weight only
    dense = 2 * f1 + 3 * f2 + 2 * relu + sgd * params
    static = d * (2 * f1 + 3 * f2) + 2 * relu + sgd * d * params
    # RigL's update step: forward and grad-input sparse, grad-weight dense
    rigl_update = d * f1 + f1 + 2 * d * f2 + f2 + 2 * relu + sgd * d * params

    seg = _segments(mlp, "rigl", s).segments
    step = {(r.method, r.segment): r.step_flops for r in seg.itertuples()}
    assert step[("dense", "dense")] == pytest.approx(dense, rel=1e-12)
    assert step[("rigl", "sparse")] == pytest.approx(static, rel=1e-9)
    assert step[("rigl", "update steps (dense grad)")] == pytest.approx(rigl_update, rel=1e-9)
    # the whole run: ΔT = 100, updates until 75% of 1000 steps -> 7 update steps
    n = math.floor(0.75 * 1000 / 100)
    total = seg[(seg.method == "rigl")]["flops"].sum()
    assert total == pytest.approx((1000 - n) * static + n * rigl_update, rel=1e-9)
    static_seg = _segments(mlp, "static", s).segments
    assert static_seg[static_seg.method == "static"]["step_flops"].iat[0] == pytest.approx(static, rel=1e-9)


def test_input_grad_adds_the_first_layers_grad_input(mlp):
    with_grad = _segments(mlp, "dense", 0.9, input_grad=True).segments
    without = _segments(mlp, "dense", 0.9).segments
    assert with_grad["step_flops"].iat[0] - without["step_flops"].iat[0] == 2 * B * D_IN * H


def test_erk_densities_follow_the_formula_and_meet_the_global_sparsity():
    layers = [Layer("conv1.weight", "conv1", (64, 3, 7, 7)), Layer("conv2.weight", "conv2", (128, 64, 3, 3)),
              Layer("conv3.weight", "conv3", (256, 128, 3, 3)), Layer("fc.weight", "fc", (10, 256))]
    s = 0.9
    dens = erdos_renyi(layers, s)
    raw = {ly.weight: sum(ly.shape) / math.prod(ly.shape) for ly in layers}
    sparse = [ly for ly in layers if dens[ly.weight] < 1]
    eps = {dens[ly.weight] / raw[ly.weight] for ly in sparse}
    assert max(eps) == pytest.approx(min(eps), rel=1e-12)  # one scale for every sparse layer
    kept = sum(dens[ly.weight] * ly.size for ly in layers)
    assert kept == pytest.approx((1 - s) * sum(ly.size for ly in layers), rel=1e-12)
    # the small fc would exceed density 1: kept dense, the rest rescaled (and the raw scores alone
    # would not meet the global sparsity once it is dense)
    assert dens["fc.weight"] == 1.0
    assert all(0 < dens[ly.weight] < 1 for ly in layers[:3])
    # ER drops the kernel dims from the score
    er = erdos_renyi(layers, s, kernel=False)
    assert er["conv3.weight"] / er["conv2.weight"] == pytest.approx((256 + 128) / (256 * 128) / ((128 + 64) / (128 * 64)))


def test_uniform_first_dense_and_plan_distributions(mlp, tmp_path):
    pats = target_patterns(mlp, "uniform-first-dense", 0.8)
    names = [ly.weight for ly in sparsifiable(mlp)]
    assert pats[names[0]].kind == "dense" and pats[names[1]].density == pytest.approx(0.2)
    plan = tmp_path / "p.toml"
    plan.write_text(f'"{names[1]}" = "unstructured:0.75"\n')
    pats = target_patterns(mlp, str(plan), 0.0)
    assert pats[names[0]].kind == "dense" and pats[names[1]].density == pytest.approx(0.25)


def test_zhu_gupta_schedule():
    assert zhu_gupta(0, 10, 4, 5, 0.9) == 0.0
    assert zhu_gupta(10, 10, 4, 5, 0.9) == pytest.approx(0.0)
    assert zhu_gupta(20, 10, 4, 5, 0.9) == pytest.approx(0.9 * (1 - 0.5 ** 3))
    assert zhu_gupta(30, 10, 4, 5, 0.9) == pytest.approx(0.9)
    assert zhu_gupta(99, 10, 4, 5, 0.9) == pytest.approx(0.9)


@pytest.mark.parametrize("method", ["gmp", "oneshot", "imp"])
def test_dense_to_sparse_peak_memory_equals_dense(mlp, method):
    df = train(mlp, [method], [0.9], ["uniform"], GPU, TrainConfig(steps=10_000, optimizer="adam"))
    dense = df[df.method == "dense"]["peak_memory_bytes"].iat[0]
    assert df[df.method == method]["peak_memory_bytes"].iat[0] == dense
    # sparse-to-sparse keeps it below
    s2s = train(mlp, ["static", "rigl"], [0.9], ["uniform"], GPU, TrainConfig(steps=10_000, optimizer="adam"))
    assert (s2s[s2s.method != "dense"]["peak_memory_bytes"] < dense).all()


def test_masked_storage_saves_no_memory_and_no_time(mlp):
    cfg = TrainConfig(steps=1000, optimizer="adam", storage="masked")
    df = train(mlp, ["static", "rigl", "gmp", "2:4"], [0.9], ["uniform"], None, cfg)
    sparse = df[df.method != "dense"]
    assert (sparse["peak_memory_vs_dense"] >= 1.0).all()
    assert (sparse["time_vs_dense"] >= 1.0).all()
    assert (sparse["energy_vs_dense"] >= 1.0).all()
    # theoretical FLOPs do not depend on the storage
    stored = train(mlp, ["static"], [0.9], ["uniform"], GPU, TrainConfig(steps=1000, optimizer="adam"))
    masked = sparse[(sparse.method == "static") & (sparse.device == GPU)]
    assert masked["train_flops"].iat[0] == pytest.approx(stored[stored.method == "static"]["train_flops"].iat[0])


def test_step_multiplier_and_rigl_dense_gradient(mlp):
    cfg = TrainConfig(steps=1000, optimizer="sgd", step_multiplier={"rigl": 5})
    df = train(mlp, ["rigl"], [0.9], ["uniform"], GPU, cfg)
    r = df[df.method == "rigl"].iloc[0]
    assert r["steps"] == 5000
    assert r["train_flops_vs_dense"] > 5 * 0.1  # 5x the steps at ~0.1x the FLOPs, plus dense gradients


def test_torchao_training_linear_within_10_percent():
    """published.md §2.3: the 2:4 training linear (M, K, N) = (13008, 1024, 4096) on an A100,
    forward + backward: dense 1.6608 ms, 2:4 1.3420 ms (1.24x)."""
    from sparsesim.train.run import step_table

    cfg = TrainConfig(steps=1, input_grad=True)
    spec = "gemm:M=13008,N=4096,K=1024,dtype=bf16"
    t = {}
    for m in ("dense", "2:4"):
        df = step_table(spec, m, GPU, config=cfg)
        t[m] = df[df["pass"].isin(["forward", "grad-input", "grad-weight", "mask"])]["latency_s"].sum()
        kernels = dict(zip(df["pass"], df["kernel"]))
        if m == "2:4":
            assert "sparse tensor core" in kernels["forward"] and "sparse tensor core" in kernels["grad-input"]
            assert kernels["grad-weight"].startswith("dense")
    published = 1.6608 / 1.3420
    assert abs((t["dense"] / t["2:4"]) / published - 1) < 0.10


def test_bad_input_is_one_line(cli, mlp):
    with pytest.raises(TrainError, match="method 'nope'"):
        train(mlp, ["nope"], devices=GPU, config=TrainConfig(steps=1))
    with pytest.raises(TrainError, match="distribution 'erx'"):
        train(mlp, ["static"], [0.9], ["erx"], GPU, TrainConfig(steps=1))
    with pytest.raises(TrainError, match="give --steps"):
        train("gemm:M=64,N=64,K=64", ["static"], devices=GPU)
    rc, _, err = cli("train", "gemm:M=64,N=64,K=64", "--methods", "static,bogus", "--steps", "10")
    assert rc == 2 and err.count("\n") == 1 and "bogus" in err
    rc, _, err = cli("train", "gemm:M=64,N=64,K=64", "--sparsity", "1.5", "--steps", "10")
    assert rc == 2 and "sparsity" in err


def test_cli_json_rows(cli):
    rc, out, err = cli("train", "gemm:M=256,N=512,K=512,dtype=fp16", "--methods", "rigl,2:4", "--sparsity", "0.9",
                       "--steps", "100", "--device", GPU, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    need = {"method", "sparsity", "distribution", "device", "train_flops", "train_flops_vs_dense",
            "inference_flops_vs_dense", "time_s", "time_vs_dense", "energy_j", "peak_memory_bytes",
            "peak_memory_vs_dense"}
    assert {r["method"] for r in doc["rows"]} == {"dense", "rigl", "2:4"}
    for r in doc["rows"]:
        assert need <= set(r)
    rc, out, err = cli("train", "gemm:M=256,N=512,K=512,dtype=fp16", "--methods", "rigl", "--steps", "100",
                       "--device", GPU)
    assert rc == 0 and "rigl" in out and "x dense" in out


def test_methods_are_data():
    assert set(METHODS) >= {"dense", "gmp", "oneshot", "imp", "static", "snip", "set", "rigl", "2:4"}
    assert METHODS["rigl"].settings["every"] == 100


@pytest.mark.slow
def test_resnet50_dense_imagenet_100_epochs_is_about_3_2e18_flops():
    df = train("resnet50", ["dense"], devices=GPU)  # the recipe's [train] table: 100 epochs of ImageNet-1k
    flops = df["train_flops"].iat[0]
    assert 3.0e18 < flops < 3.3e18


def test_every_method_and_option_runs(mlp):
    """Each method under both storages, with checkpointing and Adam: positive totals, the dense
    row first, and the schedule's steps adding up to the run."""
    from sparsesim.train.methods import METHODS as ALL

    for storage in ("sparse", "masked"):
        cfg = TrainConfig(steps=2000, optimizer="adamw", storage=storage, checkpoint=True)
        tables = train_tables(mlp, list(ALL), [0.9], ["uniform"], GPU, cfg)
        df = tables.summary
        assert list(df["method"]) == ["dense", *[m for m in ALL if m != "dense"]]
        assert (df["time_s"] > 0).all() and (df["peak_memory_bytes"] > 0).all() and (df["train_flops"] > 0).all()
        seg = tables.segments
        for m in ("gmp", "oneshot", "static", "set", "rigl"):
            assert seg[(seg.method == m) & seg.train]["steps"].sum() == pytest.approx(2000)
        assert seg[(seg.method == "imp") & seg.train]["steps"].sum() == pytest.approx(2000 * 6)


def test_checkpointing_trades_memory_for_a_second_forward():
    from sparsesim.tracing.tracer import trace

    layers = [m for _ in range(8) for m in (nn.Linear(256, 256, bias=False), nn.ReLU())]
    deep = trace(nn.Sequential(*layers), (torch.randn(B, 256),), name="deep")
    plain = train(deep, ["dense"], devices=GPU, config=TrainConfig(steps=10))
    ckpt = train(deep, ["dense"], devices=GPU, config=TrainConfig(steps=10, checkpoint=True))
    assert ckpt["memory_activations_bytes"].iat[0] < plain["memory_activations_bytes"].iat[0]
    assert ckpt["time_s"].iat[0] > plain["time_s"].iat[0]


def test_cli_settings_and_multipliers(cli):
    rc, out, err = cli("train", "gemm:M=256,N=512,K=512,dtype=fp16", "--methods", "rigl,set", "--steps", "1000",
                       "--device", GPU, "--step-multiplier", "rigl=5,set=2", "--settings", "rigl.every=50",
                       "--storage", "masked", "--optimizer", "adam", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    steps = {r["method"]: r["steps"] for r in doc["rows"]}
    assert steps == {"dense": 1000, "rigl": 5000, "set": 2000}
    assert doc["methods"]["rigl"]["settings"] == {"every": 50, "end": 0.75}
    upd = [s for s in doc["segments"] if s["method"] == "rigl" and s["segment"].startswith("update")]
    assert upd[0]["steps"] == math.floor(0.75 * 5000 / 50)
    rc, _, err = cli("train", "gemm:M=64,N=64,K=64", "--steps", "10", "--settings", "rigl.nope=1", "--methods", "rigl")
    assert rc == 2 and "nope" in err


def test_float8_training_casts_each_gemms_operands_and_keeps_the_rest_at_bf16():
    """fp8 training is torchao's Float8Linear: the linears' three GEMMs run at fp8 with their
    operands cast (forward: x and w; grad-input: dY, the weight copied into the layout
    `_scaled_mm` needs; grad-weight: dY^T and x copied), the weights, gradients and optimizer
    state stay bf16, so the peak memory barely moves; eager pays each cast op by op."""
    from sparsesim.cost.families import dynamic_quant
    from sparsesim.hw.devices import load_device
    from sparsesim.tracing.retype import float8_training
    from sparsesim.tracing.workloads import load_workload
    from sparsesim.train.run import step_table

    spec = "llama3-8b:device=meta,seq=2048,layers=1"
    wl = float8_training(load_workload(spec))
    assert {op.dtype for op in wl.ops if op.kind == "linear" and op.weight} == {"fp8"}
    assert all(op.deployed_from == "bf16" for op in wl.ops if op.dtype == "fp8")
    assert {w.dtype for w in wl.weights.values()} == {"bf16"}
    assert not any(op.dtype == "fp8" for op in wl.ops if op.kind != "linear")

    rt = load_device("h100-sxm5").runtime("compiled")[1]
    fwd, dgrad, wgrad = (dynamic_quant.quant_kernels("fp8", rt, model_dtype="bf16", training_gemm=g)
                         for g in ("forward", "grad-input", "grad-weight"))
    assert [q.name for q in fwd.on_input] == [q.name for q in fwd.on_weight] == ["amax", "scale and cast"]
    assert [q.name for q in dgrad.on_weight] == ["transposed copy"]
    assert [q.name for q in wgrad.on_input + wgrad.on_weight] == ["transposed copy"] * 2

    def run(dtype: str, runtime: str):
        cfg = TrainConfig(steps=1, dtype=dtype, runtime=runtime)
        return train(spec, ["dense"], devices=["h100-sxm5"], config=cfg).iloc[0]

    bf16, fp8, fp8_eager = run("bf16", "compiled"), run("fp8", "compiled"), run("fp8", "eager")
    assert abs(fp8["peak_memory_bytes"] / bf16["peak_memory_bytes"] - 1) < 0.05
    assert 1.0 < bf16["time_s"] / fp8["time_s"] < 2.0  # the fp8 GEMMs less the casts
    assert fp8_eager["time_s"] > fp8["time_s"]
    df = step_table(spec, "dense", "h100-sxm5", config=TrainConfig(steps=1, dtype="fp8", runtime="compiled"))
    gemms = df[df["pass"].isin(["forward", "grad-input", "grad-weight"]) & (df["kind"] != "attention")]
    linear = gemms[gemms["why"].str.contains("float8 training")]
    assert set(linear["pass"]) == {"forward", "grad-input", "grad-weight"}
