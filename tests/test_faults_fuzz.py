"""Hostile input through the CLI: mutated device files, plan files, recipes and journals give a
result (valid JSON) or one clear line with exit 2 -- never a traceback, never NaN/Infinity.
Bounded by small example counts so it stays a few seconds, and by a time limit per case (one hang
fails its test, naming the case, instead of stalling CI)."""

from __future__ import annotations

import contextlib
import io
import json
import tomllib
import warnings
from pathlib import Path

import pytest
from case_timeout import CaseTimeout, per_case_timeout
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsesim.cli import main
from sparsesim.hw.devices import UNITS, builtin_device_files
from sparsesim.search.journal import repair, scan

WORKLOAD = "gemm:M=64,N=64,K=64"
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"


def _toml(doc: dict) -> str:
    return "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in doc.items())


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def _strict_json(text: str) -> None:
    def reject(token: str):
        raise AssertionError(f"non-JSON number {token} in the output")

    json.loads(text, parse_constant=reject)


def _check(rc: int, out: str, err: str) -> None:
    assert "Traceback" not in err, err
    if rc == 0:
        _strict_json(out)
    else:
        assert rc == 2 and len(err.strip().splitlines()) == 1, err


_DEVICES = {k: tomllib.loads(p.read_text()) for k, p in sorted(builtin_device_files().items())}
_DEVICES = {k: d for k, d in _DEVICES.items() if "extends" not in d}


def _quantities(doc: dict) -> list[tuple[str, ...]]:
    out = []
    for k, v in doc.items():
        if isinstance(v, dict) and "value" in v:
            out.append((k,))
        elif isinstance(v, dict):
            out += [(k, dt) for dt, q in v.items() if isinstance(q, dict) and "value" in q]
    return out


VALUES = st.one_of(st.sampled_from([0, 0.0, -1, 1e-300, 1e300, 2**63, 0.5, 1]),
                   st.floats(allow_nan=False, allow_infinity=False), st.integers(-10, 10**6))


@FUZZ
@given(device=st.sampled_from(sorted(_DEVICES)), data=st.data(), value=VALUES,
       plan=st.sampled_from(["dense", "2:4", "unstructured:0.9", "block4x4:0.5", "channel:0.5"]))
@per_case_timeout()
def test_mutated_device_files(tmp_path, device, data, value, plan):
    doc = json.loads(json.dumps(_DEVICES[device]))
    key = data.draw(st.sampled_from(_quantities(doc)))
    q = doc[key[0]] if len(key) == 1 else doc[key[0]][key[1]]
    if data.draw(st.booleans()):
        q["value"] = value
    else:
        dim = next((d for d, us in UNITS.items() if q.get("unit", "") in us), "count")
        q["unit"] = data.draw(st.sampled_from(sorted(UNITS[dim])))
    path = tmp_path / f"{device}.toml"
    path.write_text(_toml(doc))
    _check(*_cli("estimate", WORKLOAD, "--device", str(path), "--plan", plan, "--json"))


NESTED = st.recursive(st.one_of(st.integers(), st.text(max_size=5), st.booleans()),
                      lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text("abc", min_size=1, max_size=3), c,
                                                                                     max_size=3)), max_leaves=8)


@FUZZ
@given(rules=st.one_of(NESTED, st.lists(st.lists(NESTED, max_size=3), max_size=3)), extra=NESTED)
@per_case_timeout()
def test_mutated_plan_files(tmp_path, rules, extra):
    path = tmp_path / "plan.toml"
    path.write_text(_toml({"name": "fuzz", "rules": rules, "x": extra}))
    _check(*_cli("estimate", WORKLOAD, "--device", "arm-cortex-a78", "--plan", str(path), "--json"))


@FUZZ
@given(doc=st.dictionaries(st.sampled_from(["description", "builder", "dtype", "params", "train", "other"]),
                           NESTED, max_size=5))
@per_case_timeout()
def test_mutated_recipes(tmp_path, doc):
    path = tmp_path / "recipe.toml"
    path.write_text(_toml(doc))
    _check(*_cli("estimate", str(path), "--device", "arm-cortex-a78", "--json"))


_SIZES = st.one_of(st.integers(-3, 5000), st.integers(2**20, 2**70), st.sampled_from(["x", "1e3", "", "-0"]))


@FUZZ
@given(kind=st.sampled_from(["gemm", "conv"]), data=st.data())
@per_case_timeout()
def test_single_op_shapes(kind, data):
    """Any sizes in a gemm:/conv: spec: costed (large ones on the meta device) or one line."""
    keys = ("M", "N", "K") if kind == "gemm" else ("batch", "cin", "cout", "h", "w", "kernel")
    required = ("cin", "cout", "h", "w") if kind == "conv" else ()
    given_ = {k: data.draw(_SIZES, label=k) for k in keys if k in required or data.draw(st.booleans(), label=f"set {k}")}
    spec = f"{kind}:" + ",".join(f"{k}={v}" for k, v in given_.items()) if given_ else kind
    _check(*_cli("estimate", spec, "--device", "h100-sxm5", "--plan", "2:4", "--json"))


@pytest.mark.parametrize("kind", ["device", "plan", "recipe"])
def test_deep_nesting_is_one_line(tmp_path, kind):
    deep = "[" * 3000 + "]" * 3000
    path = tmp_path / f"{kind}.toml"
    path.write_text(f'name = "x"\nfamily = "gpu"\ndescription = "d"\nrules = {deep}\n')
    args = {"device": ("estimate", WORKLOAD, "--device", str(path)),
            "plan": ("estimate", WORKLOAD, "--device", "arm-cortex-a78", "--plan", str(path)),
            "recipe": ("estimate", str(path), "--device", "arm-cortex-a78")}[kind]
    rc, _, err = _cli(*args)
    assert rc == 2 and "nested too deeply" in err and len(err.strip().splitlines()) == 1


@FUZZ
@given(cut=st.integers(1, 4000), garbage=st.binary(max_size=40))
@per_case_timeout()
def test_journal_repair_keeps_every_whole_record(tmp_path, cut, garbage):
    records = [json.dumps({"op_code": 6, "trial_id": i, "state": 1}).encode() + b"\n" for i in range(60)]
    whole = b"".join(records)
    path = tmp_path / "study.journal"
    path.write_bytes(whole[: max(0, len(whole) - cut)] + garbage)
    before = path.read_bytes()
    good, _, _ = scan(before)
    repair(path)
    after = path.read_bytes()
    assert scan(after)[1] == -1  # what is left reads cleanly
    assert after[:good] == before[:good]  # every whole record before the damage is kept
    for backup in tmp_path.glob("study.journal.damaged-*"):
        assert backup.read_bytes() == before
        backup.unlink()


def test_impossible_device_numbers_are_one_line(tmp_path):
    base = tomllib.loads(Path(builtin_device_files()["alveo-u250"]).read_text())
    for field, value in (("offchip_bandwidth", 0), ("onchip_buffer", 0), ("clock", 1e300)):
        doc = json.loads(json.dumps(base))
        doc[field]["value"] = value
        if field == "clock":
            doc[field]["unit"] = "GHz"
        path = tmp_path / f"{field}.toml"
        path.write_text(_toml(doc))
        rc, _, err = _cli("estimate", WORKLOAD, "--device", str(path), "--json")
        assert rc == 2 and field in err and str(path) in err, err


def test_wrong_unit_warns(tmp_path):
    doc = tomllib.loads(Path(builtin_device_files()["a100-sxm4-80gb"]).read_text())
    doc["tensor_peak"]["fp16"]["unit"] = "FLOP/s"
    path = tmp_path / "a100.toml"
    path.write_text(_toml(doc))
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "sparsesim", "estimate", WORKLOAD, "--device", str(path)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0 and "tensor_peak.fp16" in r.stderr and "is the unit right?" in r.stderr, r.stderr


def test_a_hanging_case_fails_within_its_time_limit():
    """The per-case limit itself: a case that never returns ends the property test within
    seconds, naming the case."""
    import time

    @settings(max_examples=3, deadline=None, database=None)
    @given(n=st.integers(0, 3))
    @per_case_timeout(0.5)
    def hangs(n):
        while True:
            time.sleep(0.01)

    t0 = time.monotonic()
    with pytest.raises(CaseTimeout, match="n="):
        hangs()
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("field, value", [("vector_bits", 8), ("matrix_macs_per_cycle", 0)])
def test_impossible_cpu_numbers_are_one_line(tmp_path, field, value):
    """The CPU reproducers: a vector narrower than the dtype, a matrix unit of zero MACs."""
    doc = tomllib.loads(Path(builtin_device_files()["xeon-sapphire-rapids"]).read_text())
    if field == "matrix_macs_per_cycle":
        for dt in doc[field]:
            if isinstance(doc[field][dt], dict):
                doc[field][dt]["value"] = value
    else:
        doc[field]["value"] = value
    path = tmp_path / f"{field}.toml"
    path.write_text(_toml(doc))
    rc, out, err = _cli("estimate", "gemm:M=64,N=128,K=128,dtype=bf16", "--device", str(path), "--json")
    _check(rc, out, err)
    if rc:
        assert field in err and str(path) in err, err
