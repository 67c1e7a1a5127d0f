"""Plans: which pattern each weight gets, and turning a traced Workload into a SparseWorkload.

A plan is an ordered list of (glob, pattern) rules matched with fnmatch against a weight's
name (`encoder.layer.0.attention.self.query.weight`) or its module's name
(`encoder.layer.0.attention.self.query`); the first match wins; unmatched weights get the
default (dense unless said otherwise); `exclude` globs force dense. A uniform plan (a bare
pattern string such as `2:4`) applies to every Linear/Conv weight. Only linear and conv ops are
sparsified: embeddings and weightless matmuls stay as they are.

Spellings accepted by `load_plan`:
- a pattern (`2:4`, `unstructured:0.9`, ...): uniform plan
- a TOML file: optional `name`, `default`, `exclude = [...]`, and rules either in a `[rules]`
  table or as top-level `"glob" = "pattern"` lines (order kept)
- a saved plan (`.safetensors` or `.pt`) written by `save_plan`: the rules as metadata plus masks
- a SCALE-Sim topology file (`.csv`): each layer its row's n:m sparsity column (`tracing.topology`)

Turning a plan into masks and a SparseWorkload is `sparsesim.sparsity.sparsify`.
"""

from __future__ import annotations

import fnmatch
import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsesim.core.errors import PlanError
from sparsesim.core.lazy import lazy_module
from sparsesim.sparsity.patterns import parse_pattern
from sparsesim.sparsity.records import DENSE, Pattern

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

_PLAN_FORMAT = "sparsesim-plan"
_META_KEY = "sparsesim.plan"
_TOML_KEYS = ("name", "default", "exclude", "rules")


@dataclass(frozen=True)
class Plan:
    """Ordered (glob, Pattern) rules, a default, exclude globs and optional explicit masks."""

    name: str
    rules: tuple[tuple[str, Pattern], ...] = ()
    default: Pattern = DENSE
    exclude: tuple[str, ...] = ()
    masks: Mapping[str, torch.Tensor] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def pattern_for(self, weight: str, module: str = "") -> Pattern:
        """First rule whose glob matches the weight or module name; exclude wins over rules."""
        names = (weight, module) if module else (weight,)
        if any(fnmatch.fnmatchcase(n, g) for g in self.exclude for n in names):
            return DENSE
        for glob, pattern in self.rules:
            if glob in names or any(fnmatch.fnmatchcase(n, glob) for n in names):
                return pattern
        return self.default

    def check_globs(self, layers: Iterable[tuple[str, str]]) -> None:
        """PlanError naming the first rule/exclude glob that matches no (weight, module) pair."""
        layers = list(layers)
        names = {n for pair in layers for n in pair if n}
        for glob in [g for g, _ in self.rules] + list(self.exclude):
            if glob in names:  # an exact name (a saved or searched plan names every weight)
                continue
            if not any(fnmatch.fnmatchcase(w, glob) or (m and fnmatch.fnmatchcase(m, glob)) for w, m in layers):
                shown = ", ".join(w for w, _ in layers[:4]) + (", ..." if len(layers) > 4 else "")
                raise PlanError(f"plan {self.name!r}: glob {glob!r} matches no layer ({len(layers)} layers, e.g. {shown})")
        for name in self.masks:
            if name not in {w for w, _ in layers}:
                raise PlanError(f"plan {self.name!r}: mask for {name!r} names no sparsifiable weight")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rules": [[g, p.label] for g, p in self.rules],
                "default": self.default.label, "exclude": list(self.exclude)}


def uniform_plan(pattern: Pattern | str, *, exclude: Iterable[str] = ()) -> Plan:
    p = parse_pattern(pattern)
    return Plan(name=p.label, default=p, exclude=tuple(exclude))


def _plan_from_dict(doc: Mapping[str, Any], where: str, masks: Mapping[str, torch.Tensor] | None = None) -> Plan:
    def pat(value: Any, key: str) -> Pattern:
        if not isinstance(value, str):
            shown = repr(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise PlanError(f"{where}: {key!r} must be a pattern string, got {shown}")
        try:
            return parse_pattern(value)
        except PlanError as e:
            raise PlanError(f"{where}: {key!r}: {e}") from None

    rules_doc = doc.get("rules", {})
    if isinstance(rules_doc, list):  # saved plans keep rules as [glob, pattern] pairs
        for i, pair in enumerate(rules_doc):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str)):
                raise PlanError(f"{where}: 'rules' entry {i} must be a [\"glob\", \"pattern\"] pair")
        rules = tuple((str(g), pat(p, str(g))) for g, p in rules_doc)
    elif isinstance(rules_doc, Mapping):
        rules = tuple((g, pat(p, g)) for g, p in rules_doc.items())
    else:
        raise PlanError(f"{where}: 'rules' must be a table of \"glob\" = \"pattern\"")
    extra = tuple((g, pat(p, g)) for g, p in doc.items() if g not in _TOML_KEYS)
    exclude = doc.get("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(e, str) for e in exclude):
        raise PlanError(f"{where}: 'exclude' must be a list of globs")
    name = doc.get("name", Path(where).stem)
    if not isinstance(name, str):
        raise PlanError(f"{where}: 'name' must be a string")
    default = pat(doc["default"], "default") if "default" in doc else DENSE
    return Plan(name=name, rules=extra + rules, default=default, exclude=tuple(exclude), masks=dict(masks or {}))


def load_plan(spec: str | Plan | Path) -> Plan:
    """A Plan from a pattern string, a TOML plan file or a saved .safetensors/.pt plan."""
    if isinstance(spec, Plan):
        return spec
    text = str(spec)
    path = Path(text)
    if path.suffix == ".toml":
        if not path.is_file():
            raise PlanError(f"plan file {text!r} does not exist")
        try:
            doc = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise PlanError(f"plan file {text!r}: {e}") from None
        except RecursionError:  # tomllib parses nested arrays/tables recursively
            raise PlanError(f"plan file {text!r}: arrays or tables nested too deeply to be a plan") from None
        except UnicodeDecodeError as e:
            raise PlanError(f"plan file {text!r}: not a UTF-8 text file (byte {e.start})") from None
        except OSError as e:
            raise PlanError(f"plan file {text!r}: cannot read ({e.strerror or e})") from None
        return _plan_from_dict(doc, text)
    if path.suffix.lower() == ".csv":
        return _topology_plan(path)
    if path.suffix in (".safetensors", ".pt"):
        if not path.is_file():
            raise PlanError(f"plan file {text!r} does not exist")
        return _load_saved(path)
    try:
        return uniform_plan(text)
    except PlanError as e:
        raise PlanError(f"plan {text!r} is neither a pattern nor a .toml/.safetensors/.pt plan file nor a topology .csv: {e}") from None


def _topology_plan(path: Path) -> Plan:
    """The n:m ratios of a SCALE-Sim topology file's sparsity column, one rule per layer."""
    from sparsesim.core.errors import WorkloadError
    from sparsesim.tracing.topology import topology_ratios

    try:
        ratios = topology_ratios(path)
    except WorkloadError as e:
        raise PlanError(f"plan {e}") from None
    rules = tuple((name, parse_pattern(f"{n}:{m}")) for name, (n, m) in ratios.items())
    return Plan(name=f"{path.stem} (n:m column)", rules=rules)


def _load_saved(path: Path) -> Plan:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if _META_KEY not in meta:
                    raise PlanError(f"plan file '{path}': no {_META_KEY!r} metadata; not written by save_plan")
                masks = {k: f.get_tensor(k) for k in f.keys()}
        except PlanError:
            raise
        except Exception as e:  # safetensors raises its own error types for a corrupt file
            raise PlanError(f"plan file '{path}': not a readable .safetensors file ({_first_line(e)})") from None
        try:
            doc = json.loads(meta[_META_KEY])
        except json.JSONDecodeError as e:
            raise PlanError(f"plan file '{path}': {_META_KEY!r} metadata is not JSON ({e})") from None
        except RecursionError:
            raise PlanError(f"plan file '{path}': {_META_KEY!r} metadata is nested too deeply") from None
    else:
        try:
            blob = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as e:  # a pickle that is not plain data, or a corrupt file
            # torch's own message is a paragraph about weights_only; the type says enough
            raise PlanError(f"plan file '{path}': not readable by torch.load(weights_only=True) "
                            f"({type(e).__name__}); save plans with save_plan") from None
        if not isinstance(blob, dict) or blob.get("format") != _PLAN_FORMAT:
            raise PlanError(f"plan file '{path}': not a plan written by save_plan")
        doc, masks = blob.get("plan"), blob.get("masks", {})
        if not isinstance(masks, Mapping):
            raise PlanError(f"plan file '{path}': 'masks' must map weight names to mask tensors")
        masks = dict(masks)
    if not isinstance(doc, Mapping):
        raise PlanError(f"plan file '{path}': the plan must be a table of rules, got {type(doc).__name__}")
    return _plan_from_dict(doc, str(path), masks)


def _first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (some libraries write paragraphs)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def save_plan(path: str | Path, plan: Plan, masks: Mapping[str, torch.Tensor]) -> Path:
    """Write the plan's rules and `masks` (stored as bool) to .safetensors or .pt."""
    from sparsesim.core.atomic import replacing

    path = Path(path)
    doc = plan.to_dict()
    packed = {k: (v.detach() != 0).contiguous().cpu() for k, v in masks.items()}
    if path.suffix not in (".safetensors", ".pt"):
        raise PlanError(f"plan file '{path}': save as .safetensors or .pt")
    with replacing(path) as tmp:  # atomic: a kill leaves the previous plan file whole
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(packed, str(tmp), metadata={_META_KEY: json.dumps(doc)})
        else:
            torch.save({"format": _PLAN_FORMAT, "version": 1, "plan": doc, "masks": packed}, tmp)
    return path
