"""Physical limits the model must never break, over random shapes, dtypes, devices, runtimes and
patterns (hypothesis): a sparse plan never computes at a lower precision than its dense baseline;
N:M is never faster than M/N (2:4 never above 2x) beyond what a stated weak dense library (its rate
over the device's usual one) explains; unstructured at density d never faster than
1/d; channel pruning never faster than 1/(kept fraction of the weight); a sparser plan of one
pattern kind never stores more bytes."""

from __future__ import annotations

import itertools
import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsesim.cost.families.gpu_machine import PRECISIONS
from sparsesim.fidelity.gpu_validation import gemm_op, layer_for
from sparsesim.hw.devices import builtin_devices
from sparsesim.run.estimate import cost_one
from sparsesim.sparsity.patterns import parse_pattern
from sparsesim.sparsity.shrink import shrink_layer_op

DEVICES = {d.name: d for d in builtin_devices()}
# the speedup bounds are checked on the GPUs (the runtime and kernel models of this module's
# issue); on the PE-array families a fold of the array can hold a sparse column that the dense
# one spills, a tile-quantisation gain the bounds do not allow for (see the channel test)
GPUS = sorted(d for d in DEVICES if DEVICES[d].family == "gpu")
DTYPES = ("fp32", "fp16", "bf16", "fp8", "int8", "int8wo", "int4")
# relative slack for float rounding only
EPS = 1e-9
# SPARSESIM_PROPS raises the example count for a longer, random local search; without it the
# examples are the same on every run (derandomize), so CI checks a fixed set and a rare case a
# random draw finds is reported by a search, not as a CI run that fails once in a few hundred
PROPS = settings(max_examples=int(os.environ.get("SPARSESIM_PROPS", "60")), deadline=None,
                 derandomize="SPARSESIM_PROPS" not in os.environ, suppress_health_check=[HealthCheck.too_slow])
pytestmark = pytest.mark.slow

dims = st.integers(min_value=1, max_value=4096)
devices = st.sampled_from(sorted(DEVICES))
gpus = st.sampled_from(GPUS)
dtypes = st.sampled_from(DTYPES)


def _runtime(data, device) -> str:
    return data.draw(st.sampled_from(device.runtimes.names()), label="runtime")


def _pair(device, runtime, m, n, k, dtype, pattern):
    op = gemm_op(m, n, k, dtype)
    layer = layer_for("weight", n, k, parse_pattern(pattern), dtype)
    dense = cost_one(op, None, device, runtime=runtime)
    sparse = cost_one(shrink_layer_op(op, layer), layer, device, runtime=runtime)
    return dense, sparse, layer


def _where(dense, sparse) -> str:
    return f"dense {dense.latency_s:.4g}s ({dense.why}) vs sparse {sparse.latency_s:.4g}s ({sparse.why})"


@PROPS
@given(m=dims, n=dims, k=dims, dtype=dtypes, dev=gpus, nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (2, 8), (4, 8),
                                                                            (7, 8), (15, 16), (3, 16)]),
       data=st.data())
def test_nm_never_beats_m_over_n(m, n, k, dtype, dev, nm, data):
    device = DEVICES[dev]
    n_keep, m_group = nm
    dense, sparse, _ = _pair(device, _runtime(data, device), m, n, k, dtype, f"{n_keep}:{m_group}")
    # what the model states beyond the math: a dense library that runs this dtype below the
    # device's usual rate (cuBLASLt int8 on Hopper) lets the sparse kernel gain that much more
    # (cuBLASLt int8 on Hopper; a runtime's one dense int4 layout where a kernel it does not offer
    # is faster), or a dense layout that stores the weight padded and does that much more work
    # (tinygemm's int4 layout pads K to 1,024s), lets the sparse kernel gain that much more
    weak = [r.value for r in dense.reasons if r.code == "weak_dense_library"]
    padded = [r.value for r in dense.reasons if r.code == "padding"]
    slack = max(1 / weak[0] if weak else 1.0, padded[0] if padded else 1.0)
    assert dense.latency_s / sparse.latency_s <= m_group / n_keep * slack * (1 + EPS), _where(dense, sparse)
    if "sparse tensor core" in sparse.kernel:
        assert dense.latency_s / sparse.latency_s <= 2 * slack * (1 + EPS), _where(dense, sparse)


@PROPS
@given(m=dims, n=dims, k=dims, dtype=st.sampled_from(["fp16", "bf16", "fp8", "int8", "int8wo", "int4"]), dev=gpus,
       sparsity=st.floats(0.05, 0.999), data=st.data())
def test_unstructured_never_beats_one_over_density(m, n, k, dtype, dev, sparsity, data):
    """Not checked at fp32: a tiny fp32 GEMM on CUDA cores is modelled as one tile on one SM,
    while the CSR kernel spreads over every SM, so a 33x41x33 fp32 GEMM can beat 1/d (a known
    inconsistency of the CUDA-core dense model, listed in the issue's report)."""
    device = DEVICES[dev]
    dense, sparse, layer = _pair(device, _runtime(data, device), m, n, k, dtype, f"unstructured:{sparsity:.4f}")
    d = max(layer.stats.density, 1.0 / (n * k))
    assert dense.latency_s / sparse.latency_s <= (1 / d) * (1 + EPS), _where(dense, sparse)


@PROPS
@given(m=dims, j=st.integers(1, 5), k=st.integers(2, 4096), dtype=dtypes, dev=gpus, data=st.data())
def test_channel_never_beats_one_over_kept(m, j, k, dtype, dev, data):
    """Halving the output channels of a layer with 768 x j of them: the halves are whole tiles of
    every device's array (12, 16, 64, 128 wide). M is arbitrary, and a GPU library picks its
    tile per shape, so the pruned GEMM may pad less or fill its waves better than the dense one
    (a real effect): the bound allows exactly the SM utilisation gained."""
    device = DEVICES[dev]
    n = 768 * j
    dense, sparse, layer = _pair(device, _runtime(data, device), m, n, k, dtype, "channel:0.5")
    st_ = layer.stats
    kept = (st_.kept_rows * st_.kept_cols) / (st_.rows * st_.cols)
    # what memory explains: a dense working set that outgrows L2 re-reads operands from DRAM, so a
    # memory-bound dense op can save more DRAM bytes than the kept fraction alone
    dram_ratio = dense.bytes_by_level.get("dram", 0.0) / max(sparse.bytes_by_level.get("dram", 0.0), 1.0)
    # an op of several kernels (a weight-only GEMM and the passes converting its weight) is no
    # faster than its fastest-shrinking part: the GEMM's own DRAM bytes, apart from the passes'
    gemm_bytes = [c.bytes_by_level.get("dram", 0.0) - c.details.get("quant_dram_bytes", 0.0) for c in (dense, sparse)]
    dram_ratio = max(dram_ratio, gemm_bytes[0] / max(gemm_bytes[1], 1.0))
    # and what tiling explains: the pruned shape may pad less or fill the waves better (the
    # library picks its tile per shape), measured as the SM-time share doing useful MACs
    util = sparse.details.get("sm_utilisation", 1.0) / dense.details.get("sm_utilisation", 1.0)
    bound = max(1 / kept * max(util, 1.0), dram_ratio)
    assert dense.latency_s / sparse.latency_s <= bound * (1 + EPS), _where(dense, sparse)


@PROPS
@given(m=dims, n=st.integers(64, 4096), k=st.integers(64, 4096), dtype=dtypes,
       pattern=st.sampled_from(["2:4", "1:4", "unstructured:0.9",
                                                                      "unstructured:0.5", "block16x16:0.5"]),
       data=st.data())
def test_gpu_sparse_kernels_keep_the_dense_precision(m, n, k, dtype, pattern, data):
    """A sparse kernel computes at the dense baseline's precision (or at fp32 where dense ran tf32):
    a change of precision is never sold as a sparsity gain."""
    device = DEVICES[data.draw(st.sampled_from([d for d in DEVICES if DEVICES[d].family == "gpu"]))]
    dense, sparse, _ = _pair(device, _runtime(data, device), m, n, k, dtype, pattern)
    pd, ps = (PRECISIONS[int(c.details["precision"])] for c in (dense, sparse))
    assert ps == pd or (ps, pd) == ("fp32", "tf32"), _where(dense, sparse)


def _stored(device, runtime, m, n, k, dtype, pattern) -> int:
    op = gemm_op(m, n, k, dtype)
    layer = layer_for("weight", n, k, parse_pattern(pattern), dtype)
    return cost_one(shrink_layer_op(op, layer), layer, device, runtime=runtime).memory_bytes


@PROPS
@given(m=st.integers(1, 512), n=st.integers(8, 2048), k=st.integers(8, 2048), dtype=dtypes, dev=devices,
       group=st.sampled_from([4, 8, 16]), a=st.integers(1, 15), b=st.integers(1, 15), data=st.data())
def test_sparser_nm_never_stores_more(m, n, k, dtype, dev, group, a, b, data):
    lo, hi = sorted((a % group or 1, b % group or 1))
    device = DEVICES[dev]
    rt = _runtime(data, device)
    assert _stored(device, rt, m, n, k, dtype, f"{lo}:{group}") <= _stored(device, rt, m, n, k, dtype, f"{hi}:{group}")


@PROPS
@given(m=st.integers(1, 512), n=st.integers(64, 2048), k=st.integers(64, 2048), dtype=dtypes, dev=devices,
       kind=st.sampled_from(["unstructured:{s}", "block8x8:{s}", "channel:{s}"]),
       s1=st.floats(0.05, 0.95), s2=st.floats(0.05, 0.95), data=st.data())
def test_sparser_plans_never_store_more(m, n, k, dtype, dev, kind, s1, s2, data):
    denser, sparser = sorted((round(s1, 3), round(s2, 3)))
    device = DEVICES[dev]
    rt = _runtime(data, device)
    more = _stored(device, rt, m, n, k, dtype, kind.format(s=sparser))
    less = _stored(device, rt, m, n, k, dtype, kind.format(s=denser))
    assert more <= less or math.isclose(more, less, rel_tol=1e-9)


@pytest.mark.parametrize("dev,runtime,shape,dtype,said,dense_ok,dense_ok_runtime", [
    # cuBLASLt's dense int8 on Hopper is weak (measured on an H200: 2:4 int8 at 2-3x over
    # torch._int_mm); its fp8 is not
    ("h100-sxm5", "engine", (4096, 4096, 4096), "int8", "sparse kernel can beat them", "fp8", "engine"),
    # torchao's one dense int4 layout runs tinygemm, which dequantises the weight again for every
    # 16 rows: at a prefill Sparse-Marlin's 2:4 beats it by more than 2x, and the dense cost states
    # the gap to Marlin, which the runtime does not offer; an engine runs Marlin itself
    ("a100-sxm4-80gb", "compiled", (1750, 1024, 1024), "int4", "marlin (not offered)", "int4", "engine"),
])
def test_24_beats_2x_only_by_the_stated_dense_gap(dev, runtime, shape, dtype, said, dense_ok, dense_ok_runtime):
    """A weak dense baseline is stated (`weak_dense_library`), and 2:4's excess over 2x is within it."""
    device = DEVICES[dev]
    dense, sparse, _ = _pair(device, runtime, *shape, dtype, "2:4")
    weak = [r.value for r in dense.reasons if r.code == "weak_dense_library"]
    assert len(weak) == 1 and 0 < weak[0] < 1 and said in dense.why
    assert 2 < dense.latency_s / sparse.latency_s <= 2 / weak[0]
    dense, sparse, _ = _pair(device, dense_ok_runtime, *shape, dense_ok, "2:4")
    assert not [r for r in dense.reasons if r.code == "weak_dense_library"]
    assert dense.latency_s / sparse.latency_s <= 2


@pytest.mark.parametrize("shape", [(1, 127, 128), (33, 200, 320), (1, 1000, 1000)])
def test_int4_channel_plans_store_less_step_by_step(shape):
    """Every GPU and runtime, channel plans from 5 % to 95 % in steps of 5 %: at int4 each sparser
    plan stores at most what the one before it stored (one int4 layout per runtime; an engine pads
    a layer Marlin refuses to its tile rather than leave it at 16 bits)."""
    for dev in GPUS:
        device = DEVICES[dev]
        for rt in device.runtimes.names():
            stored = [_stored(device, rt, *shape, "int4", f"channel:{s / 20}") for s in range(1, 20)]
            assert all(b <= a * (1 + EPS) for a, b in itertools.pairwise(stored)), (dev, rt, stored)
