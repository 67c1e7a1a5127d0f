"""The dense systolic-array cycle model against SCALE-Sim's closed form (peers.md).

Expected values are worked by hand from folds x cycles-per-fold - 1; the ones marked
"SCALE-Sim" were also produced by scalesim 3.0.0 (CALC bandwidth mode) on this machine.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsesim.cost.families.systolic import conv_gemm, conv_output_size, gemm_cycles, normalize_dataflow

# (M, N, K, R, C, dataflow, expected total cycles, how it was worked out)
CASES = [
    # OS: ceil(100/32)*ceil(70/32) = 4*3 = 12 folds x (32+32+50-2 = 112) - 1   (SCALE-Sim: 1343)
    (100, 70, 50, 32, 32, "os", 1343),
    # OS: 2*2 = 4 folds x (32+32+64-2 = 126) - 1                                (SCALE-Sim: 503)
    (64, 64, 64, 32, 32, "os", 503),
    # OS: 8*8 = 64 folds x (32+32+256-2 = 318) - 1                              (SCALE-Sim: 20351)
    (256, 256, 256, 32, 32, "os", 20351),
    # WS: ceil(256/32)*ceil(256/32) = 64 folds x (64+32+256-2 = 350) - 1        (SCALE-Sim: 22399)
    (256, 256, 256, 32, 32, "ws", 22399),
    # IS: ceil(50/32)*ceil(100/32) = 2*4 = 8 folds x (64+32+70-2 = 164) - 1
    (100, 70, 50, 32, 32, "is", 1311),
    # OS, 128x128: ceil(3136/128)*ceil(64/128) = 25*1 folds x (128+128+576-2 = 830) - 1
    (3136, 64, 576, 128, 128, "os", 20749),
    # WS, 128x128: ceil(576/128)*ceil(64/128) = 5*1 folds x (256+128+3136-2 = 3518) - 1
    (3136, 64, 576, 128, 128, "ws", 17589),
    # IS, 128x128: ceil(576/128)*ceil(3136/128) = 5*25 folds x (256+128+64-2 = 446) - 1
    (3136, 64, 576, 128, 128, "is", 55749),
    # WS on a non-square 16x64 array: ceil(4608/16)*ceil(512/64) = 288*8 folds x (32+64+49-2 = 143) - 1
    (49, 512, 4608, 16, 64, "ws", 329471),
    # OS, a GEMV: 1*ceil(1000/32) = 32 folds x (32+32+512-2 = 574) - 1
    (1, 1000, 512, 32, 32, "os", 18367),
]


@pytest.mark.parametrize("m,n,k,r,c,df,expected", CASES)
def test_closed_form_matches_hand_values(m, n, k, r, c, df, expected):
    assert gemm_cycles(m, n, k, r, c, df).cycles == expected


def test_scalesim_resnet18_layers():
    # ResNet-18 layer2.0.downsample (1x1, 64->128, stride 2 on 56x56): M = 28*28 = 784, N = 128, K = 64.
    # OS 32x32: 25*4 = 100 folds x (32+32+64-2 = 126) - 1 = 12599 (SCALE-Sim: 12599)
    # WS 32x32: ceil(64/32)*ceil(128/32) = 8 folds x (64+32+784-2 = 878) - 1 = 7023 (SCALE-Sim: 7023)
    m, n, k = conv_gemm(56, 56, 1, 1, 64, 128, stride=2)
    assert (m, n, k) == (784, 128, 64)
    assert gemm_cycles(m, n, k, 32, 32, "os").cycles == 12599
    assert gemm_cycles(m, n, k, 32, 32, "ws").cycles == 7023


def test_repeats_run_back_to_back():
    one = gemm_cycles(64, 64, 64, 32, 32, "os")
    three = gemm_cycles(64, 64, 64, 32, 32, "os", repeats=3)
    # 3 x 4 folds x 126 cycles - 1
    assert three.cycles == 1511
    assert three.macs == 3 * one.macs


def test_conv_output_size_is_pytorch_floor():
    assert conv_output_size(224, 7, 2, 3) == 112
    assert conv_output_size(56, 3, 2, 1) == 28
    assert conv_output_size(56, 1, 2, 0) == 28
    assert conv_output_size(7, 3, 1, 1, dilation=2) == 5


def test_dataflow_spellings_and_errors():
    assert normalize_dataflow("ws") == "weight_stationary"
    assert normalize_dataflow("output_stationary") == "output_stationary"
    with pytest.raises(ValueError, match="unknown dataflow 'row_stationary'"):
        gemm_cycles(8, 8, 8, 4, 4, "row_stationary")
    with pytest.raises(ValueError, match="K must be a positive integer"):
        gemm_cycles(8, 8, 0, 4, 4, "os")


@settings(max_examples=150, deadline=None)
@given(
    m=st.integers(1, 3000), n=st.integers(1, 3000), k=st.integers(1, 3000),
    r=st.sampled_from([4, 8, 16, 32, 128]), c=st.sampled_from([4, 8, 16, 32, 128]),
    df=st.sampled_from(["os", "ws", "is"]),
)
def test_cycles_bound_and_utilisation(m, n, k, r, c, df):
    res = gemm_cycles(m, n, k, r, c, df)
    # an array can never beat its peak: cycles >= MACs / PEs, so SCALE-Sim's utilisation <= 1
    assert res.cycles * r * c >= m * n * k
    assert 0 < res.utilization <= 1.0
    # growing any dimension never makes the GEMM faster
    assert gemm_cycles(m + 1, n, k, r, c, df).cycles >= res.cycles
    assert gemm_cycles(m, n + 1, k, r, c, df).cycles >= res.cycles
    assert gemm_cycles(m, n, k + 1, r, c, df).cycles >= res.cycles


def test_padding_folding_gives_scalesim_the_pytorch_gemm():
    """The side-by-side benchmark folds padding into the input; SCALE-Sim's ceil output size
    of that input must be PyTorch's, so both tools see the same implicit GEMM."""
    import importlib.util
    import math
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "scalesim_compare.py"
    spec = importlib.util.spec_from_file_location("scalesim_compare", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("scalesim_compare", mod)  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    convs = mod.resnet18_convs()
    assert len(convs) == 20
    # ResNet-18's 1.814 GMAC (peers.md) are all in these convolutions, bar the 0.5 MMAC classifier
    assert sum(math.prod(c.gemm) for c in convs) == 1_813_561_344
    for c in convs:
        scalesim_out = math.ceil((c.folded_input - c.kernel + c.stride) / c.stride)
        assert scalesim_out == c.out == conv_output_size(c.size, c.kernel, c.stride, c.padding)
