"""Results a report reads rather than computes: a search's output directory (the search.json
`sparsesim search` writes) and a `sparsesim validate --json` document (or a quick validation run)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sparsesim.core.errors import SparsesimError


class ReportError(SparsesimError):
    """A report input (search directory, validation file) is missing or malformed."""


@dataclass
class SearchResult:
    """One search's outcome as the report shows it."""

    source: str
    workload: str
    device: str
    trials: pd.DataFrame  # one row per trial: accuracy, latency_s, speedup_vs_dense, ..., on_front
    chosen: dict[str, Any]
    uniform: pd.DataFrame  # uniform baselines (and dense) with the same columns
    extra: dict[str, Any] = field(default_factory=dict)
    patterns: dict[str, str] = field(default_factory=dict)  # the chosen plan: weight -> pattern


@dataclass
class ValidationResult:
    """A `sparsesim validate` document as tables: error per pattern, crossovers, every case,
    and the published GPU figures through the GPU model."""

    source: str
    meta: dict[str, Any]
    errors: pd.DataFrame
    crossover: pd.DataFrame
    cases: pd.DataFrame
    gpu: pd.DataFrame
    gpu_summary: dict[str, Any]


def read_search_dir(path: Path) -> list[SearchResult]:
    """Read a search's output directory (the JSON the search writes)."""
    if not path.is_dir():
        raise ReportError(f"--search {path}: not a directory")
    files = sorted(path.glob("*.json"))
    if not files:
        raise ReportError(f"--search {path}: no .json result in it")
    out = []
    for f in files:
        try:
            doc = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ReportError(f"{f}: not a readable JSON document ({e})") from None
        if isinstance(doc, dict) and "front" in doc:
            check_manifest(f, doc)
            out.append(search_result(doc, str(f)))
    if not out:
        raise ReportError(f"--search {path}: no JSON file in it holds a search result (a 'front')")
    return out


def check_manifest(path: Path, doc: dict[str, Any]) -> None:
    """Every file a search result lists in its `manifest` is there with the same sha256: a search
    killed while rewriting its outputs leaves new files beside an old search.json (or the reverse)."""
    from sparsesim.core.atomic import sha256

    listed = doc.get("manifest")
    if listed is None:
        return  # written before results carried a manifest
    if not isinstance(listed, dict):
        raise ReportError(f"{path}: 'manifest' is not a table of file hashes")
    for name, digest in listed.items():
        f = path.parent / str(name)
        if Path(str(name)).name != str(name):
            raise ReportError(f"{path}: manifest entry {name!r} is not a file name in {path.parent}")
        if not f.is_file():
            raise ReportError(f"{path}: lists {name}, which is missing (the search was interrupted?); rerun the search")
        if sha256(f) != digest:
            raise ReportError(f"{path}: {name} does not match this result (a later search was interrupted while "
                              "writing it?); rerun the search")


def search_result(doc: dict[str, Any], source: str) -> SearchResult:
    """A `sparsesim search` result document (search.json): the front, uniform baselines, the chosen plan."""
    front = pd.DataFrame(doc.get("front") or [])
    trials = pd.DataFrame(doc.get("trials") or [])
    if len(trials):
        trials = pd.concat([trials.assign(on_front=False), front.assign(on_front=True)], ignore_index=True)
    else:
        trials = front.assign(on_front=True)
    uniform = pd.DataFrame(doc.get("uniform") or [])
    if isinstance(doc.get("dense"), dict):
        uniform = pd.concat([pd.DataFrame([{**doc["dense"], "plan": "dense"}]), uniform], ignore_index=True)
    chosen: dict[str, Any] = {k: doc[k] for k in ("accuracy", "latency_s", "speedup_vs_dense", "energy_j", "memory_bytes",
                                  "chosen_source", "uniform_plan", "uniform_accuracy", "uniform_latency_s") if k in doc}
    patterns = {}
    if isinstance(doc.get("chosen"), dict) and isinstance(doc["chosen"].get("patterns"), dict):
        patterns = dict(doc["chosen"]["patterns"])
    extra = {k: v for k, v in doc.items() if k in ("algorithm", "signal", "seed", "evaluated", "wall_s")}
    if isinstance(doc.get("target"), dict):
        extra.update({f"target {k}": v for k, v in doc["target"].items() if v is not None})
    if isinstance(doc.get("dense"), dict) and "accuracy" in doc["dense"]:
        extra["dense accuracy"] = doc["dense"]["accuracy"]
    return SearchResult(source, str(doc.get("workload", "")), str(doc.get("device", "")), trials, chosen, uniform,
                        extra, patterns)


def read_validation(path: Path) -> ValidationResult:
    """A `sparsesim validate --json` document."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"--validation {path}: not a readable JSON document ({e})") from None
    return validation_result(doc, str(path))


def validation_result(doc: dict[str, Any], source: str) -> ValidationResult:
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list) or not isinstance(doc.get("summary"), dict):
        raise ReportError(f"{source}: not a `sparsesim validate --json` document (no 'rows' and 'summary')")
    meta = {k: v for k, v in doc.items() if isinstance(v, (int, float, str, bool)) or v is None}
    errors = []
    for pattern, e in doc["summary"].items():
        if isinstance(e, dict):
            latency = e.get("latency")
            lat = latency if isinstance(latency, dict) else {}
            errors.append({"pattern": pattern, "metric": e.get("metric"), "cases": e.get("cases"),
                           "median_abs_error": e.get("median_abs_error"), "p90_abs_error": e.get("p90_abs_error"),
                           "target": e.get("target"), "met": e.get("met"),
                           "latency_median_abs_error": lat.get("median_abs_error")})
    crossover, published = doc.get("crossover"), doc.get("gpu_published")
    cross = crossover if isinstance(crossover, dict) else {}
    gpu = published if isinstance(published, dict) else {}
    return ValidationResult(
        source, meta, pd.DataFrame(errors), pd.DataFrame(cross.get("cases") or []), pd.DataFrame(doc["rows"]),
        pd.DataFrame(gpu.get("rows") or []),
        {k: v for k, v in gpu.items() if k != "rows" and (isinstance(v, (int, float, str, bool)) or v is None)})


def run_quick_validation() -> ValidationResult:
    """Run the quick validation grid on this host (as `sparsesim validate --quick`) and read it."""
    from sparsesim.fidelity.validate import validate

    return validation_result(validate(quick=True), "sparsesim validate --quick (run for this report)")
