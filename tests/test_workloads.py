"""Workload specs: recipes trace completely (exact weight-op counts), single ops, user
factories, the meta-device 7B config, and clear errors for bad specs."""

from __future__ import annotations

import os
import textwrap

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch.nn as nn

from sparsesim.core.errors import TraceError, WorkloadError
from sparsesim.core.ir import GemmShape
from sparsesim.tracing.workloads import list_recipes, load_workload

BUILTIN = {"resnet18", "resnet50", "mobilenetv2", "bert-base", "bert-large", "gpt2", "vit-base", "llama-tiny",
           "llama2-7b", "llama2-70b"}


# one torch thread for the whole file (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def _weight_modules(model: nn.Module) -> dict[str, str]:
    """Independent count: module name -> weight name (as named_parameters spells it) of every
    Linear, Conv and transformers Conv1D in the model."""
    ids = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) or type(mod).__name__ == "Conv1D":
            out[name] = ids[id(mod.weight)]
    return out


# spec, exact number of weight ops, exact number of distinct weights
COMPLETENESS = [
    ("resnet18:image=32", 21, 21),        # conv1 + 8 blocks x 2 convs + 3 downsamples + fc
    ("resnet50:image=32", 54, 54),        # conv1 + 16 blocks x 3 convs + 4 downsamples + fc
    ("mobilenetv2:image=32", 53, 53),     # stem + 2 + 16 x 3 + last 1x1 + classifier
    # the full-size transformers on the meta device (fast; real weights are covered below)
    ("bert-base:seq=16,device=meta", 73, 73),   # 12 x (q, k, v, out, intermediate, output) + pooler
    ("bert-large:seq=16,device=meta", 145, 145),  # 24 x (q, k, v, out, intermediate, output) + pooler
    ("sam-vit-h:image=64", 131, 131),           # patch conv + 32 x (qkv, proj, lin1, lin2) + 2 neck convs
    ("gpt2:seq=16,device=meta", 49, 49),        # 12 x (c_attn, c_proj, c_fc, c_proj) + lm_head (tied)
    ("vit-base:image=64,device=meta", 74, 74),  # patch conv + 12 x 6 + classifier
    ("llama-tiny:seq=8", 15, 15),         # 2 x (q, k, v, o, gate, up, down) + lm_head
]


@pytest.mark.parametrize("spec,n_ops,n_weights", COMPLETENESS)
def test_every_weight_appears_exact_counts(spec, n_ops, n_weights):
    wl = load_workload(spec)
    expected = _weight_modules(wl.model)
    ops = wl.weight_ops()
    assert len(ops) == n_ops == len(expected)
    assert len(wl.weights) == n_weights
    assert {op.module: op.weight for op in ops} == expected
    names = {n for n, _ in wl.model.named_modules()}
    assert all(op.module in names for op in wl.ops)
    assert wl.summary()["unknown_ops"] == 0


def test_gpt2_conv1d_weights_are_stored_transposed():
    wl = load_workload("gpt2:seq=8,layers=1")
    op = next(op for op in wl.weight_ops() if op.module == "transformer.h.0.mlp.c_fc")
    assert op.weight_shape == (3072, 768)  # N x K
    assert wl.weights[op.weight].shape == (768, 3072)  # Conv1D stores K x N
    assert op.weight_k_major  # a field the mask builders read, not the note's prose
    assert op.gemm == GemmShape(m=8, n=3072, k=768)
    assert wl.activation_norms[op.weight].shape == (768, 1)
    lm = next(op for op in wl.weight_ops() if op.module == "lm_head")
    assert lm.weight == "transformer.wte.weight"  # tied: named_parameters spells it once
    assert not lm.weight_k_major  # the tied embedding is an N x K nn.Linear weight


def test_bert_attention_one_op_per_layer():
    wl = load_workload("bert-base:seq=16,batch=2,layers=2")
    att = [op for op in wl.ops if op.kind == "attention"]
    assert len(att) == 2
    assert att[0].gemm == GemmShape(m=16, n=16, k=64, batch=2 * 12)
    assert att[0].module == "encoder.layer.0.attention.self"
    assert not any(op.kind == "softmax" for op in wl.ops)


def test_llama_tiny_decode_shapes():
    wl = load_workload("llama-tiny:phase=decode,batch=3,kv=10")
    att = [op for op in wl.ops if op.kind == "attention"]
    assert len(att) == 2
    # 3 sequences x 4 query heads of 16 against kv + 1 = 11 keys (transformers may fold the
    # GQA query heads into M: the GEMM is the same work either way)
    g = att[0].gemm
    assert (g.n, g.k, g.m * g.batch) == (11, 16, 3 * 4)
    assert att[0].flops == 2 * 3 * 4 * 1 * 11 * 16 * 2 == 8448
    q = next(op for op in wl.weight_ops() if op.module == "model.layers.0.self_attn.q_proj")
    assert q.gemm == GemmShape(m=3, n=64, k=64)
    # the cache write moves only the new token: index + (read + write) of 3 x 2 heads x 16 fp16
    writes = [op for op in wl.ops if op.aten == "aten.index_copy_.default"]
    assert len(writes) == 4 and writes[0].bytes_moved == 8 + 2 * (3 * 2 * 1 * 16 * 2)


def test_llama2_7b_on_meta_allocates_nothing():
    wl = load_workload("llama2-7b:phase=decode,batch=8,kv=2048")
    assert len(wl.ops) > 0 and wl.on_meta
    assert all(p.is_meta for p in wl.model.parameters())
    assert len(wl.weight_ops()) == 225  # 32 x 7 projections + lm_head
    # 32 x (4 x 4096^2 + 3 x 4096 x 11008) + 32000 x 4096 (norms and the embedding carry no op)
    assert sum(w.shape[0] * w.shape[1] for w in wl.weights.values()) == 6_607_077_376
    att = [op for op in wl.ops if op.kind == "attention"]
    assert len(att) == 32 and att[0].gemm == GemmShape(m=1, n=2049, k=128, batch=8 * 32)
    assert all(op.dtype == "fp16" for op in wl.weight_ops())
    assert not any(op.activation_measured for op in wl.ops)


def test_gptfast_llama_fuses_qkv_and_attends_over_its_whole_cache():
    """torchao's benchmark model (gpt-fast): one wqkv GEMM a layer, w1/w3/w2, and every decode step
    attends over the preallocated cache (rounded up to 8) whatever position it is at."""
    wl = load_workload("llama3-8b-gptfast:kv=106,max_seq=203")
    assert wl.on_meta and all(p.is_meta for p in wl.model.parameters())
    assert len(wl.weight_ops()) == 32 * 5 + 1
    qkv = next(op for op in wl.weight_ops() if op.module == "layers.0.attention.wqkv")
    assert qkv.gemm == GemmShape(m=1, n=4096 + 2 * 1024, k=4096) and qkv.dtype == "bf16"
    att = [op for op in wl.ops if op.kind == "attention"]
    assert len(att) == 32 and att[0].gemm == GemmShape(m=1, n=208, k=128, batch=32)
    # the same weights as Hugging Face's Llama-3-8B, grouped differently
    hf = load_workload("llama3-8b:phase=decode,kv=16")
    assert sum(w.shape[0] * w.shape[1] for w in wl.weights.values()) == \
        sum(w.shape[0] * w.shape[1] for w in hf.weights.values())
    prefill = load_workload("llama3-8b-gptfast:phase=prefill,seq=16,layers=2")
    assert next(op for op in prefill.ops if op.kind == "attention").gemm == GemmShape(m=16, n=16, k=128, batch=32)
    with pytest.raises(WorkloadError, match="max_seq=100"):
        load_workload("llama3-8b-gptfast:kv=106,max_seq=100")
    with pytest.raises(WorkloadError, match="phase"):
        load_workload("llama3-8b-gptfast:phase=train")


def test_single_gemm_op():
    wl = load_workload("gemm:M=64,N=32,K=16,dtype=bf16")
    (op,) = wl.ops
    assert op.kind == "linear" and op.weight == "gemm.weight" and op.module == "gemm"
    assert op.gemm == GemmShape(m=64, n=32, k=16) and op.flops == 2 * 64 * 32 * 16
    assert op.weight_shape == (32, 16) and op.dtype == "bf16"
    assert op.bytes_moved == (64 * 16 + 16 * 32 + 64 * 32) * 2
    w = wl.model.get_parameter("gemm.weight")
    assert not w.is_meta and w.shape == (32, 16)  # real weights so masks can be built


def test_single_conv_op():
    wl = load_workload("conv:cin=16,cout=16,h=8,w=8,kernel=3,padding=1,groups=16,dtype=fp32")
    (op,) = wl.ops
    assert op.kind == "conv" and op.weight == "conv.weight"
    assert op.gemm == GemmShape(m=64, n=1, k=9, groups=16)


def test_recipe_file_by_path(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('description = "small resnet"\nbuilder = "sparsesim.tracing.models.resnet:build_resnet18"\n'
                 '[params]\nimage = 32\n')
    wl = load_workload(str(f))
    assert len(wl.weight_ops()) == 21 and wl.params["image"] == 32
    wl = load_workload(f"{f}:batch=2")
    assert wl.ops[0].input_shapes[0] == (2, 3, 32, 32)


def test_bad_recipe_file_names_key(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('description = "x"\nbuilder = "sparsesim.tracing.models.resnet:build_resnet18"\ncolour = 1\n')
    with pytest.raises(WorkloadError, match=r"bad.toml: unknown key 'colour'"):
        load_workload(str(f))


def test_user_factory(tmp_path, monkeypatch):
    (tmp_path / "user_model_mod.py").write_text(textwrap.dedent("""
        import torch, torch.nn as nn
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
            def forward(self, x):
                return self.body(x)
        def factory():
            return Net(), (torch.randn(2, 8),)
        def broken():
            class B(nn.Module):
                def forward(self, x):
                    raise ValueError("bad shape")
            return B(), (torch.randn(1),)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    wl = load_workload("user_model_mod:factory")
    assert [op.weight for op in wl.weight_ops()] == ["body.0.weight", "body.2.weight"]
    assert wl.weight_ops()[1].activation_measured
    with pytest.raises(WorkloadError, match="has no function 'nothere'"):
        load_workload("user_model_mod:nothere")
    with pytest.raises(TraceError, match="forward raised ValueError: bad shape"):
        load_workload("user_model_mod:broken")


@pytest.mark.parametrize("spec,message", [
    ("no-such-model", "unknown workload 'no-such-model'"),
    ("bert-base:colour=red", "unknown parameter 'colour'"),
    ("bert-base:seq=long", "seq='long' is not an integer"),
    ("bert-base:seq", "is not key=value"),
    ("llama2-7b:phase=train", "phase='train'"),
    ("llama2-7b:phase=decode", "decode needs a KV cache"),
    ("gemm:M=4,N=4", "missing parameter K="),
    ("gemm:M=4,N=4,K=4,dtype=fp4", "unknown dtype"),
    ("no_such_module_xyz:factory", "cannot import module 'no_such_module_xyz'"),
    ("resnet18:batch=0", "batch=0: must be at least 1"),
    ("resnet50:image=0", "image=0: must be at least 1"),
    ("mobilenetv2:width=0", "width=0.0: must be > 0"),
    ("conv:cin=3,cout=8,h=8,w=8,padding=-1", "padding=-1 must be >= 0"),
])
def test_bad_specs(spec, message):
    with pytest.raises(WorkloadError, match=message):
        load_workload(spec)


def test_list_recipes_has_builtins_with_params():
    recipes = {r["name"]: r for r in list_recipes()}
    assert BUILTIN <= set(recipes)
    assert recipes["bert-base"]["params"]["seq"] == 128 and recipes["bert-base"]["params"]["batch"] == 1
    assert recipes["llama2-7b"]["params"]["device"] == "meta"
    assert all(r["description"] for r in recipes.values())


def test_builder_defaults_read_from_source_match_the_signatures():
    """Listing recipes reads each builder's defaults off its source (no import): for every
    built-in recipe they are what inspect.signature gives once the module is imported."""
    import importlib
    import inspect
    import tomllib
    from pathlib import Path

    from sparsesim.tracing.specs import builtin_recipe_files
    from sparsesim.tracing.workloads import source_defaults

    for name, path in builtin_recipe_files().items():
        module, _, attr = tomllib.loads(path.read_text())["builder"].partition(":")
        mod = importlib.import_module(module)
        signature = {p.name: p.default for p in inspect.signature(getattr(mod, attr)).parameters.values()}
        assert source_defaults(Path(mod.__file__), attr) == signature, name


def test_listing_recipes_imports_no_torch():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys\nfrom sparsesim.cli import main\nmain(['workloads'])\n"
            "print('TORCH', 'torch' in sys.modules)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1000:]
    assert "bert-base" in out.stdout and "TORCH False" in out.stdout
