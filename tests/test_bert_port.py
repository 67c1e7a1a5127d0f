"""The plain-torch BERT (`tracing.models.bert`) against transformers' BertModel: the same
traced workload op for op, the same parameters, the same outputs from the same weights; and
`bert-base` builds without importing transformers."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from sparsesim.core.errors import WorkloadError
from sparsesim.tracing.models.bert import build_bert
from sparsesim.tracing.workloads import load_workload

pytest.importorskip("transformers")

SPECS = [
    "seq=16,batch=2,layers=2,device=meta",
    "seq=16,layers=2,device=meta,attn=eager,mask=1",
    "seq=16,layers=1,device=meta,mask=1",
    "seq=16,batch=2,layers=2,dtype=fp16",  # real weights: densities and norms measured
    "seq=8,layers=1,attn=eager",
]


def _fields(op: object) -> dict:
    d = dataclasses.asdict(op)  # type: ignore[call-overload]
    d.pop("weight", None)  # the parameter itself (random values differ); its shape is compared
    return d


@pytest.mark.parametrize("params", SPECS)
def test_the_port_traces_to_the_same_workload_as_transformers(params: str) -> None:
    port = load_workload(f"bert-base:{params}")
    hf = load_workload(f"bert-base:{params},impl=hf")
    assert len(port.ops) == len(hf.ops) > 0
    for a, b in zip(port.ops, hf.ops, strict=True):
        assert _fields(a) == _fields(b), f"op {a.index} ({a.module})"
    assert {w: (i.shape, i.dtype) for w, i in port.weights.items()} == {
        w: (i.shape, i.dtype) for w, i in hf.weights.items()}


def test_bert_large_port_traces_as_transformers_bert_large() -> None:
    """The large shape reaches both builders: hidden 1024, 16 heads, 4096 intermediate."""
    port = load_workload("bert-large:seq=8,layers=2,device=meta")
    hf = load_workload("bert-large:seq=8,layers=2,device=meta,impl=hf")
    assert [_fields(a) for a in port.ops] == [_fields(b) for b in hf.ops]
    assert port.weights["encoder.layer.0.intermediate.dense.weight"].shape == (4096, 1024)
    assert port.summary()["weight_params"] == hf.summary()["weight_params"]


@pytest.mark.parametrize("attn,mask", [("sdpa", 0), ("eager", 1)])
def test_the_port_computes_what_transformers_computes(attn: str, mask: int) -> None:
    port, inputs = build_bert(batch=2, seq=12, layers=2, attn=attn, mask=mask)
    hf, hf_inputs = build_bert(batch=2, seq=12, layers=2, attn=attn, mask=mask, impl="hf")
    assert port.state_dict().keys() == hf.state_dict().keys()
    port.load_state_dict(hf.state_dict(), strict=True)
    with torch.no_grad():
        a, b = port(**inputs), hf(**hf_inputs)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, rtol=0, atol=0)


def test_the_port_initialises_as_transformers_does() -> None:
    port, _ = build_bert(layers=1)
    sd = port.state_dict()
    linear = sd["encoder.layer.0.intermediate.dense.weight"]
    assert abs(linear.std().item() - 0.02) < 0.001 and abs(linear.mean().item()) < 0.001
    assert not sd["encoder.layer.0.intermediate.dense.bias"].any()
    assert torch.equal(sd["embeddings.LayerNorm.weight"], torch.ones(768))
    assert not sd["embeddings.word_embeddings.weight"][0].any()  # the padding row
    a, _ = build_bert(layers=1, seed=3)
    b, _ = build_bert(layers=1, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_bert_base_is_built_and_traced_without_transformers() -> None:
    code = ("import sys; from sparsesim.tracing.workloads import load_workload; "
            "wl = load_workload('bert-base:seq=8,layers=1'); "
            "assert len(wl.ops) > 10; print('transformers' in sys.modules, 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.stdout.split() == ["False", "False"]


def test_an_unknown_implementation_names_the_parameter() -> None:
    with pytest.raises(WorkloadError, match="impl='jax'"):
        build_bert(impl="jax")
