"""A small CNN on scikit-learn's bundled digits (8x8 images): an accuracy workload with no download.

Trained on first use in a few seconds (seeded, single thread) and cached in the user cache dir
($SPARSESIM_CACHE or ~/.cache/sparsesim) under a key that hashes this file and the training
parameters, so a change to either retrains. `evaluate(model)` is the test-split accuracy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from sparsesim.core.atomic import replacing
from sparsesim.core.errors import SparsesimWarning, WorkloadError
from sparsesim.core.extras import MissingExtraError

# Training recipe (algorithmic constants of this small benchmark, not hardware figures).
TEST_FRACTION = 0.25  # a quarter of the 1797 images held out: 450 test images
SPLIT_SEED = 0


@dataclass(frozen=True)
class DigitsConfig:
    """What decides the trained weights (it is part of the cache key)."""

    channels1: int = 16
    channels2: int = 32
    hidden: int = 64
    epochs: int = 40
    lr: float = 3e-3
    batch_size: int = 64
    seed: int = 0


class DigitsCNN(nn.Module):
    """conv(1->c1) -> ReLU -> conv(c1->c2) -> ReLU -> maxpool 2 -> fc(c2*16->h) -> ReLU -> fc(h->10)."""

    def __init__(self, cfg: DigitsConfig = DigitsConfig()) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, cfg.channels1, 3, padding=1)
        self.conv2 = nn.Conv2d(cfg.channels1, cfg.channels2, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(cfg.channels2 * 16, cfg.hidden)
        self.fc2 = nn.Linear(cfg.hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def cache_dir() -> Path:
    """$SPARSESIM_CACHE, else ~/.cache/sparsesim."""
    root = os.environ.get("SPARSESIM_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "sparsesim"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _digits_csv() -> Path:
    """scikit-learn's bundled digits file, found without importing scikit-learn (seconds of scipy)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError("the digits workload needs scikit-learn (its bundled digits data is the dataset), "
                                "from the optional extra [search]: pip install 'sparsesim[search]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not path.exists():
        raise WorkloadError(f"digits: {path} is missing from the scikit-learn install")
    return path


_DATA: dict[str, torch.Tensor] = {}


def load_data() -> dict[str, torch.Tensor]:
    """The digits split (train/test, stratified, seeded), images scaled to [0, 1], shape (n, 1, 8, 8)."""
    if not _DATA:
        import numpy as np

        raw = np.loadtxt(_digits_csv(), delimiter=",", dtype=np.float32)
        x = torch.from_numpy(raw[:, :64].copy()).reshape(-1, 1, 8, 8) / 16.0
        y = torch.from_numpy(raw[:, 64].astype(np.int64))
        gen = torch.Generator().manual_seed(SPLIT_SEED)
        test = []
        for c in range(10):
            idx = (y == c).nonzero().squeeze(1)
            idx = idx[torch.randperm(len(idx), generator=gen)]
            test.append(idx[: round(TEST_FRACTION * len(idx))])
        is_test = torch.zeros(len(y), dtype=torch.bool)
        is_test[torch.cat(test)] = True
        _DATA.update(x_train=x[~is_test], y_train=y[~is_test], x_test=x[is_test], y_test=y[is_test])
    return dict(_DATA)


def _cache_key(cfg: DigitsConfig) -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(repr(sorted(asdict(cfg).items())).encode())
    h.update(torch.__version__.split("+")[0].encode())
    return h.hexdigest()[:16]


def _train(cfg: DigitsConfig, data: dict[str, torch.Tensor]) -> DigitsCNN:
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = DigitsCNN(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    x, y = data["x_train"], data["y_train"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic and polite on a shared machine
    try:
        model.train()
        for _ in range(cfg.epochs):
            perm = torch.randperm(len(y), generator=gen)
            for i in range(0, len(y), cfg.batch_size):
                b = perm[i : i + cfg.batch_size]
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[b]), y[b]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def pretrained(cfg: DigitsConfig = DigitsConfig()) -> DigitsCNN:
    """The trained CNN: from the cache when present, else trained now (seconds) and cached."""
    path = cache_dir() / f"digits-cnn-{_cache_key(cfg)}.pt"
    model = DigitsCNN(cfg)
    if path.exists():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval()
        except Exception as e:
            warnings.warn(f"{path}: the cached digits model is unreadable ({type(e).__name__}); retraining it",
                          SparsesimWarning, stacklevel=2)
    model = _train(cfg, load_data())
    try:
        with replacing(path) as tmp:  # atomic: concurrent workers never read half a file
            torch.save(model.state_dict(), tmp)
    except OSError as e:  # a full or read-only cache: the model is trained, only not kept
        warnings.warn(f"{path}: cannot cache the trained digits model ({e.strerror or e})", SparsesimWarning,
                      stacklevel=2)
    return model


_TEST: dict[str, torch.Tensor] = {}


def evaluate(model: nn.Module) -> float:
    """Test-split accuracy in [0, 1]."""
    if not _TEST:
        data = load_data()
        _TEST.update(x=data["x_test"], y=data["y_test"])
    model.eval()
    with torch.no_grad():
        pred = model(_TEST["x"]).argmax(1)
    return float((pred == _TEST["y"]).float().mean())


def calibration_batch(n: int = 128) -> torch.Tensor:
    """Training images for fidelity and BN recalibration (never the test split)."""
    return load_data()["x_train"][:n]


def build(batch: int = 1024, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The trained model (training seed `seed`) and `batch` test images for tracing
    (repeated when batch > 450)."""
    if batch < 1:
        raise WorkloadError(f"digits: batch must be >= 1, got {batch}")
    model = pretrained(DigitsConfig(seed=seed))
    x = load_data()["x_test"]
    return model, (x.repeat((batch + len(x) - 1) // len(x), 1, 1, 1)[:batch],)
