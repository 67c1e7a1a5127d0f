"""The fused (flash) attention kernel on GPUs: the softmax's exponentials on the special-function
units after the MMAs (FlashAttention-2) or overlapped with them (a warp-specialised Hopper
kernel), Ampere MMA instructions on Hopper, causal tiles skipped; and one kernel model for a
traced scaled_dot_product_attention and an eager-written attention a runtime fuses."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsesim.core.ir import GemmShape, Op
from sparsesim.cost import estimate_op
from sparsesim.cost.families.gpu_kernels import causal_tile_fraction
from sparsesim.cost.families.gpu_machine import tiling
from sparsesim.cost.record import RunContext
from sparsesim.hw.devices import load_device
from sparsesim.run.estimate import compare_tables

A100 = load_device("a100-sxm4-80gb")
H100 = load_device("h100-sxm5")


def sdpa(bh: int, lq: int, lk: int, d: int, *, causal: bool = False, dtype: str = "fp16") -> Op:
    """A traced scaled_dot_product_attention of `bh` batch x heads at head dim `d`."""
    q, kv = (1, bh, lq, d), (1, bh, lk, d)
    flops = 4 * bh * lq * lk * d
    moved = (2 * bh * lq * d + 2 * bh * lk * d) * 2
    return Op(0, "attention", "aten._scaled_dot_product_flash_attention", "attn", 0, dtype, (q, kv, kv), q, flops,
              moved, GemmShape(m=lq, n=lk, k=d, batch=bh), note="causal" if causal else "", causal=causal)


def run(op: Op, device, runtime: str):
    return estimate_op(op, None, device, RunContext(runtime=runtime))


def test_causal_tiles_are_the_lower_triangle():
    tl = tiling(A100.params, GemmShape(m=1024, n=1024, k=64, batch=1), 2.0)
    n_m, n_n = tl.tiles_m, tl.tiles_n
    assert (tl.tile_m, tl.tile_n) == (128, 128) and n_m == n_n == 8
    assert causal_tile_fraction(1024, 1024, tl) == pytest.approx(36 / 64)  # 1 + 2 + ... + 8 of 64
    # a decode step's one query sees every key; a query block behind a longer cache sees all of it
    one = tiling(A100.params, GemmShape(m=1, n=4096, k=128, batch=1), 2.0)
    assert causal_tile_fraction(1, 4096, one) == 1.0
    # a causal prefill costs about half the MMAs of a full one
    full, causal = run(sdpa(32, 4096, 4096, 128), A100, "compiled"), run(sdpa(32, 4096, 4096, 128, causal=True), A100, "compiled")
    assert causal.details["causal_share"] == pytest.approx(0.5 + 0.5 / 32)
    assert causal.latency_s == pytest.approx(full.latency_s * causal.details["causal_share"], rel=0.02)


def test_a_short_masked_window_pays_its_query_blocks_prologue_and_epilogue():
    """A thread block of torch's masked attention kernel loads its query tile before its loop over
    the keys and writes its output after it, for its real query rows: a 196-token window (4 key
    blocks, 196 of 256 rows real) pays 196/256 of a fifth, a 4,096-token sequence 65 for 64 (the
    H200 SAM profiles, a bias as attn_mask: windows 406-431 us, 344 us without the term). A
    decode step's one query pays almost nothing; without a mask (not measured) nothing."""
    window, long = (dataclasses.replace(sdpa(bh, s, s, 80), masked=True) for bh, s in ((3200, 196), (128, 4096)))
    bare = dataclasses.replace(A100, runtimes=dataclasses.replace(A100.runtimes, by_name={
        name: dataclasses.replace(rt, masked_attention_epilogue_blocks=0.0) for name, rt in A100.runtimes.by_name.items()}))
    w, w0 = run(window, A100, "compiled"), run(window, bare, "compiled")
    g, g0 = run(long, A100, "compiled"), run(long, bare, "compiled")
    assert w.details["compute_s"] == pytest.approx(w0.details["compute_s"] * (1 + 196 / 256 / 4))
    assert g.details["compute_s"] == pytest.approx(g0.details["compute_s"] * 65 / 64)
    assert "1 more of its 4 key blocks" in w.why
    step = dataclasses.replace(sdpa(32, 1, 1024, 128), masked=True)
    assert run(step, A100, "compiled").details["compute_s"] == pytest.approx(
        run(step, bare, "compiled").details["compute_s"] * (1 + 1 / 128 / 16))
    plain = sdpa(3200, 196, 196, 80)
    assert run(plain, A100, "compiled").latency_s == pytest.approx(run(plain, bare, "compiled").latency_s)


def test_softmax_exponentials_run_on_the_special_function_units():
    p = A100.params
    op = sdpa(64, 4096, 4096, 64)
    c = run(op, A100, "compiled")
    scores = 64 * 4096 * 4096
    assert c.details["softmax_s"] == pytest.approx(scores / (p.sfu_ops_per_sm_clock * p.sm_count * p.clock))
    # FlashAttention-2 on an A100: the exponentials follow the MMAs, whose rate is the GEMM's
    no_sfu = dataclasses.replace(A100, params=dataclasses.replace(p, sfu_ops_per_sm_clock=0.0))
    assert c.details["compute_s"] == pytest.approx(run(op, no_sfu, "compiled").details["compute_s"] + c.details["softmax_s"])
    assert "softmax exponentials" in c.why and "after" in c.why


@settings(max_examples=25, deadline=None)
@given(bh=st.integers(1, 64), s=st.sampled_from([512, 1024, 4096, 8192]))
def test_a_larger_head_dim_spends_a_smaller_share_on_the_softmax(bh, s):
    """Per score the MMAs grow with the head dimension and the exponential does not, so the
    attained rate rises with head dim and stays under the GEMM's (FlashAttention-2 §3.1)."""
    rates = []
    for d in (64, 128):
        c = run(sdpa(bh, s, s, d), A100, "compiled")
        rates.append(c.flops_executed / c.details["compute_s"])
    gemm_rate = A100.params.tensor_peak["fp16"] * A100.params.dense_gemm_efficiency
    assert rates[0] < rates[1] < gemm_rate


def test_hopper_runtimes_differ_by_their_attention_kernel():
    """torch's SDPA (eager, compiled) runs FlashAttention-2 on an H100: Ampere MMA instructions at
    2/3 of the peak and the softmax after the MMAs; the engine's warp-specialised kernel uses
    Hopper's and overlaps the two."""
    op = sdpa(32, 8192, 8192, 128)
    torch_, engine = run(op, H100, "compiled"), run(op, H100, "engine")
    assert H100.runtime("engine")[1].attention_warp_specialised
    assert not H100.runtime("compiled")[1].attention_warp_specialised
    assert not A100.runtime("engine")[1].attention_warp_specialised  # no warpgroup MMAs on Ampere
    soft = engine.details["softmax_s"]
    assert torch_.details["softmax_s"] == pytest.approx(soft)
    mma_engine = engine.details["compute_s"]  # the MMAs hide the softmax at head dim 128
    assert mma_engine > soft
    assert torch_.details["compute_s"] == pytest.approx(mma_engine / H100.params.mma_sync_fraction + soft)
    assert "overlapped with" in engine.why and "Ampere MMA instructions" in torch_.why


def test_a_fused_eager_attention_costs_what_the_traced_sdpa_costs():
    """One kernel model: transformers' BERT with its eager attention (matmul, softmax, matmul)
    under a fusing runtime costs the same attention kernel as with SDPA traced as one op."""
    kernels = {}
    for attn in ("eager", "sdpa"):
        spec = f"bert-base:batch=2,seq=128,layers=1,device=meta,attn={attn},mask=0"
        per_op = compare_tables(spec, [A100], ["dense"], runtime="compiled").per_op
        rows = per_op[per_op["kernel"] == "flash attention"]
        assert len(rows) == 1
        kernels[attn] = (float(rows["latency_s"].iloc[0]), float(rows["bytes_dram"].iloc[0]))
    assert kernels["eager"] == pytest.approx(kernels["sdpa"])


def test_a_head_dim_between_kernel_sizes_runs_the_next_kernel_up():
    """torch's FlashAttention-2 kernels exist for head dims in multiples of 32: 80 runs the 96
    kernel (the MMAs over 96 columns, the softmax unchanged); the engine's kernels take 80 as is."""
    assert A100.runtime("compiled")[1].attention_head_dim_multiple == 32
    assert A100.runtime("engine")[1].attention_head_dim_multiple == 1
    no_sfu = dataclasses.replace(A100, params=dataclasses.replace(A100.params, sfu_ops_per_sm_clock=0.0))
    mma = {d: run(sdpa(32, 4096, 4096, d), no_sfu, "compiled").details["compute_s"] for d in (80, 96)}
    assert mma[80] == pytest.approx(mma[96])
    c80 = run(sdpa(32, 4096, 4096, 80), A100, "compiled")
    assert "head dim 80 runs the 96 kernel" in c80.why
    assert c80.flops_executed == pytest.approx(4 * 32 * 4096 * 4096 * 96)
    e80, e96 = (run(sdpa(32, 4096, 4096, d), no_sfu, "engine").details["compute_s"] for d in (80, 96))
    assert e80 < e96
    for d in (64, 128):  # multiples of 32 run as they are
        assert "runs the" not in run(sdpa(8, 1024, 1024, d), A100, "compiled").why


def test_the_head_dim_multiple_is_a_whole_number():
    rt = A100.runtime("compiled")[1]
    assert rt.validate() is None
    for bad in (0.0, 0.5, 40.5):
        problem = dataclasses.replace(rt, attention_head_dim_multiple=bad).validate()
        assert problem is not None and "attention_head_dim_multiple" in problem


def test_causal_is_a_field_the_costing_memo_keys_on():
    """A causal and a full attention of one shape are two costs, also when costed side by side
    through the shared memo; a traced causal prefill carries the field."""
    from sparsesim.run.estimate import cost_ops, resolve_workload

    full, causal = sdpa(32, 2048, 2048, 128), dataclasses.replace(sdpa(32, 2048, 2048, 128, causal=True), index=1)
    costs = cost_ops((full, causal), [None, None], A100, context=RunContext(runtime="compiled"))
    assert costs[1].latency_s < 0.6 * costs[0].latency_s
    wl = resolve_workload("llama2-7b:phase=prefill,seq=256,device=meta")
    attention = [op.causal for op in wl.ops if op.kind == "attention"]
    assert len(attention) == 32 and all(attention)


def test_the_attention_fields_of_a_gpu_file_are_checked():
    p = A100.params
    for bad in (0.0, 1.5):
        problem = dataclasses.replace(p, mma_sync_fraction=bad).validate()
        assert problem is not None and "mma_sync_fraction" in problem
    assert p.validate() is None and H100.params.mma_sync_fraction == pytest.approx(0.667)


def test_a_masked_attention_runs_the_runtimes_masked_kernel():
    """torch's SDPA cannot run FlashAttention with an attn_mask: a traced SDPA given a mask or
    bias tensor, and an eager-written attention whose scores add one, run the masked kernel at
    the runtime's `masked_attention_rate`; the engine's fused attention takes masks as they are."""
    from sparsesim.runtime.fusion import fuse

    rate = H100.runtime("compiled")[1].masked_attention_rate
    assert 0 < rate < 1 and H100.runtime("engine")[1].masked_attention_rate == 1.0
    plain = sdpa(32, 4096, 4096, 128)
    masked = dataclasses.replace(plain, masked=True)
    c_plain, c_masked = run(plain, H100, "compiled"), run(masked, H100, "compiled")
    # and pays its query blocks' prologue and epilogue as more of its 4096 / 64 key blocks
    epilogue = 1 + H100.runtime("compiled")[1].masked_attention_epilogue_blocks / 64
    assert c_masked.details["compute_s"] == pytest.approx(c_plain.details["compute_s"] * epilogue / rate)
    assert "masked kernel" in c_masked.why and "masked kernel" not in c_plain.why
    assert run(masked, H100, "engine").latency_s == pytest.approx(run(plain, H100, "engine").latency_s)
    # a traced SDPA call with attn_mask carries the field
    from sparsesim.run.estimate import resolve_workload

    attn = [op for op in resolve_workload("sam-vit-h:batch=1,device=meta").ops if op.kind == "attention"]
    assert attn and all(op.masked for op in attn)  # SAM's relative-position bias is an attn_mask
    # the fused eager attention is masked exactly when a score op adds a second tensor
    from tests.test_runtime import _eager_attention

    for with_mask in (True, False):
        fu = fuse(_eager_attention(12, 384, 64, with_mask), elementwise=True, epilogue=False, attention=True)
        kop = next(f.kernel_op for f in fu if f.kernel_op is not None)
        assert kop.masked is with_mask


def test_the_sequences_run_in_whole_attention_blocks():
    """torch's attention kernels take 128 queries and 64 keys per step: SAM's 196-token windows
    run as 256 x 256 scores; a sequence of whole blocks runs as it is."""
    rt = A100.runtime("compiled")[1]
    assert (rt.attention_block_q, rt.attention_block_k) == (128, 64)
    no_sfu = dataclasses.replace(A100, params=dataclasses.replace(A100.params, sfu_ops_per_sm_clock=0.0))
    window = run(sdpa(400, 196, 196, 64), no_sfu, "compiled")
    whole = run(sdpa(400, 256, 256, 64), no_sfu, "compiled")
    assert window.details["compute_s"] == pytest.approx(whole.details["compute_s"])
    assert "196x196 scores run as 256x256" in window.why
    assert "scores run as" not in run(sdpa(8, 1024, 1024, 64), A100, "compiled").why
    for name in ("attention_block_q", "attention_block_k"):
        problem = dataclasses.replace(rt, **{name: 0.5}).validate()
        assert problem is not None and name in problem
    assert "masked_attention_rate" in (dataclasses.replace(rt, masked_attention_rate=0.0).validate() or "")
