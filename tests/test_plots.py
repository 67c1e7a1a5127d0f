"""Figure logic that a reader relies on: a layer keeps its colour across workloads, every
heatmap shares one colour scale centred on 1x, a search front is the front of the two plotted
objectives, and no figure goes through pyplot's global state."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sparsesim.report import plots

REPO = Path(__file__).resolve().parent.parent


def test_layer_colours_depend_on_the_name_only():
    a = plots.layer_colors(["encoder.layer.*.attention (linear)", "all elementwise ops", "pooler (linear)"])
    b = plots.layer_colors(["all elementwise ops", "conv1 (conv)", "fc (linear)", plots.OTHER])
    assert a["all elementwise ops"] == b["all elementwise ops"]
    assert b[plots.OTHER] == plots.OTHER_COLOR
    many = [f"layer{i} (linear)" for i in range(len(plots.LAYER_COLORS))]
    assert len(set(plots.layer_colors(many).values())) == len(many)  # collisions resolved within a figure
    assert plots.OTHER_COLOR not in plots.LAYER_COLORS


def test_one_speedup_scale_for_all_heatmaps():
    s = pd.DataFrame({"speedup_vs_dense": [0.25, 1.0, 1.5, np.nan, 3.0]})
    assert plots.speedup_span(s) == 2.0  # |log2 0.25| is the largest: 0.25x and 4x get the end colours
    assert plots.speedup_span(s.iloc[1:2]) == 0.25  # never a zero-width scale


def test_search_front_is_the_front_of_the_two_plotted_objectives():
    pts = pd.DataFrame({"latency_s": [1.0, 2.0, 3.0, 2.5, 1.0], "accuracy": [0.5, 0.8, 0.9, 0.7, 0.4],
                        "on_front": [True] * 5})  # on a four-objective front, all of them
    on = plots.front_2d(pts, "latency_s", "accuracy")
    assert list(on) == [True, True, True, False, False]


@pytest.mark.slow  # a fresh interpreter importing pandas and matplotlib
def test_figures_do_not_use_pyplot():
    code = ("import pandas as pd, sys; from sparsesim.report import plots;"
            "s = pd.DataFrame({'device': ['d'], 'plan': ['2:4'], 'speedup_vs_dense': [1.3]});"
            "b = plots.speedup_heatmap(s, ['d'], ['2:4'], span=1.0);"
            "assert b[:4] == b'\\x89PNG', b[:8];"
            "print('matplotlib.pyplot' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "False"


def test_roofline_bounds_come_from_the_family_registry():
    """Every built-in device has a compute roof and a memory slope; the CPU's and the FPGA's
    derived peaks are the ones their cost models run at."""
    from sparsesim.cost.families import cpu
    from sparsesim.cost.roofline import device_roofs
    from sparsesim.hw.devices import builtin_devices

    for dev in builtin_devices():
        roofs = device_roofs(dev, {"fp16"})
        assert {r.kind for r in roofs} == {"compute", "memory"}, dev.name
        if dev.family == "cpu":
            p = dev.params
            peak = cpu.peak_flops(p, cpu.compute_dtype(p, "fp16"))
            assert any(r.kind == "compute" and r.value == peak for r in roofs), dev.name
