"""Hostile files and a machine without network: a pickled payload in a plan file never runs, a
damaged cached digits model is retrained with a warning naming it, and costing a Hugging Face
model and a recipe opens no connection."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import pytest

from sparsesim.core.errors import SparsesimWarning

RAN = []


class _Payload:
    def __reduce__(self):
        return (RAN.append, ("the payload ran",))


def test_a_pickled_payload_in_a_plan_file_never_runs(cli, tmp_path):
    plan = tmp_path / "plan.pt"
    plan.write_bytes(pickle.dumps({"rules": _Payload()}))
    rc, _, err = cli("estimate", "gemm:M=8,N=64,K=64", "--device", "a100-sxm4-80gb", "--plan", str(plan))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and str(plan) in err
    assert RAN == []


def test_a_damaged_cached_digits_model_is_retrained_with_a_warning(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    from sparsesim.tracing.models import digits

    monkeypatch.setattr(digits, "cache_dir", lambda: tmp_path)
    first = digits.pretrained()
    (cached,) = list(Path(tmp_path).glob("digits-cnn-*.pt"))
    cached.write_bytes(b"not a checkpoint")
    with pytest.warns(SparsesimWarning, match=str(cached.name)):
        again = digits.pretrained()
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert a.shape == b.shape
    assert cached.stat().st_size > 100  # rewritten whole


def test_costing_opens_no_network_connection(cli, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"a network connection was opened: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(None, *a))
    for spec in ("bert-base:layers=1,seq=16", "llama-tiny:device=meta"):
        rc, out, err = cli("compare", spec, "--devices", "a100-sxm4-80gb", "--plans", "dense,2:4", "--json")
        assert rc == 0, err
        assert '"speedup_vs_dense"' in out
