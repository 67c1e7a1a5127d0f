"""Device files: strict loading of TOML descriptions of hardware, one file per device.

A device file names its family and gives every number as a quantity with a unit and a source:

    name = "A100-SXM4-80GB"
    family = "gpu"
    description = "NVIDIA A100 SXM4 80 GB"
    sm_count = { value = 108, unit = "1", source = "NVIDIA Ampere whitepaper" }
    [tensor_peak]
    fp16 = { value = 312, unit = "TFLOP/s", source = "A100 datasheet" }

A fitted quantity also carries `fit_date` and `fit_error`. Each family declares its fields as a
frozen dataclass (see `register_family`); the loader converts units to SI and rejects unknown,
duplicate and missing keys and wrong units, naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from sparsesim.core.errors import DeviceFileError
from sparsesim.core.packaged import builtin_dirs, builtin_files

# dimension -> {unit spelling: factor to the SI base unit}
UNITS: Mapping[str, Mapping[str, float]] = {
    "count": {"1": 1.0, "count": 1.0},
    "ratio": {"1": 1.0, "%": 0.01},
    "frequency": {"Hz": 1.0, "kHz": 1e3, "MHz": 1e6, "GHz": 1e9},
    "flop_rate": {
        "FLOP/s": 1.0, "GFLOP/s": 1e9, "TFLOP/s": 1e12, "PFLOP/s": 1e15,
        "OP/s": 1.0, "GOP/s": 1e9, "TOP/s": 1e12, "GOPS": 1e9, "TOPS": 1e12,
    },
    "bandwidth": {"B/s": 1.0, "MB/s": 1e6, "GB/s": 1e9, "TB/s": 1e12, "GiB/s": 2.0**30},
    "bytes": {"B": 1.0, "KB": 1e3, "KiB": 2.0**10, "MB": 1e6, "MiB": 2.0**20, "GB": 1e9, "GiB": 2.0**30,
              "Kb": 125.0, "Mb": 1.25e5},
    "time": {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9},
    "energy": {"J": 1.0, "mJ": 1e-3, "uJ": 1e-6, "nJ": 1e-9, "pJ": 1e-12},
    "energy_per_byte": {"J/B": 1.0, "pJ/B": 1e-12, "pJ/bit": 8e-12, "nJ/B": 1e-9},
    "power": {"W": 1.0, "mW": 1e-3, "kW": 1e3},
    "per_cycle": {"1/cycle": 1.0, "FLOP/cycle": 1.0, "MAC/cycle": 1.0, "B/cycle": 1.0},
    "cycles": {"cycle": 1.0, "cycles": 1.0},
}

QUANTITY_KEYS = frozenset({"value", "unit", "source", "fit_date", "fit_error", "note"})
TOP_KEYS = ("name", "family", "description")


def quantity(dim: str, per_dtype: bool = False, default: Any = dataclasses.MISSING) -> Any:
    """Declare a family field holding a quantity of dimension `dim` (optionally one per dtype)."""
    if dim not in UNITS:
        raise ValueError(f"unknown dimension {dim!r}")
    meta = {"dim": dim, "per_dtype": per_dtype}
    if default is dataclasses.MISSING:
        return field(metadata=meta)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


def setting(default: Any = dataclasses.MISSING) -> Any:
    """Declare a family field holding a plain value (string, bool, list of numbers) with a source."""
    meta = {"dim": None, "per_dtype": False}
    if default is dataclasses.MISSING:
        return field(metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


FAMILIES: dict[str, type] = {}


def register_family(name: str):
    """Class decorator: the frozen dataclass of a hardware family's device-file fields."""

    def wrap(cls: type) -> type:
        FAMILIES[name] = cls
        return cls

    return wrap


@dataclass(frozen=True)
class Provenance:
    source: str
    unit: str = ""
    fit_date: str | None = None
    fit_error: float | None = None


@dataclass(frozen=True)
class Device:
    """A loaded device: its family's parameters (SI units) and where each number came from."""

    name: str
    family: str
    description: str
    path: str
    params: Any
    provenance: Mapping[str, Provenance] = field(default_factory=dict, compare=False, hash=False)

    def fitted(self) -> dict[str, Provenance]:
        return {k: p for k, p in self.provenance.items() if p.fit_date is not None}


def _load_families() -> None:
    # cost-model modules register their families on import
    import sparsesim.cost  # noqa: F401


def builtin_device_dirs() -> list[Path]:
    """Packaged device files (wheel install) or the repository's accelerators/ (checkout)."""
    return builtin_dirs("accelerators")


def builtin_device_files() -> dict[str, Path]:
    """Device name (file stem) -> file, the first directory winning."""
    return builtin_files(builtin_device_dirs())


def find_device_file(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml":
        if p.is_file():
            return p
        raise DeviceFileError(f"device file {name_or_path}: {'is a directory' if p.is_dir() else 'does not exist'}")
    files = builtin_device_files()
    key = name_or_path.lower()
    for stem, path in files.items():
        if stem.lower() == key:
            return path
    raise DeviceFileError(
        f"unknown device {name_or_path!r}: not a .toml file and not one of {', '.join(sorted(files))}"
    )


def load_device(name_or_path: str) -> Device:
    """Load a device by built-in name (file stem, case-insensitive) or by path to a .toml file."""
    return parse_device_file(find_device_file(name_or_path))


def builtin_devices() -> list[Device]:
    return [parse_device_file(p) for p in builtin_device_files().values()]


def parse_device_file(path: Path) -> Device:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise DeviceFileError(f"{path}: cannot read device file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise DeviceFileError(f"{path}: not a UTF-8 text file (byte {e.start})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DeviceFileError(f"{path}: not valid TOML ({_toml_problem(text, e)})") from None
    return parse_device_doc(doc, str(path))


def _toml_problem(text: str, e: tomllib.TOMLDecodeError) -> str:
    """tomllib's message plus, for a duplicate key, the key's name read off the offending line."""
    msg = str(e)
    at = re.search(r"at line (\d+)", msg)
    if at and "overwrite" in msg.lower():
        lines = text.splitlines()
        n = int(at.group(1))
        if 0 < n <= len(lines):
            offending = lines[n - 1].split("=", 1)[0].strip()
            return f"duplicate key {offending!r}: {msg}"
    return msg


def parse_device_doc(doc: Mapping[str, Any], where: str) -> Device:
    _load_families()
    for key in TOP_KEYS:
        if not isinstance(doc.get(key), str) or not doc[key].strip():
            raise DeviceFileError(f"{where}: field '{key}' is missing or not a non-empty string")
    family = doc["family"]
    if family not in FAMILIES:
        raise DeviceFileError(f"{where}: field 'family': unknown family {family!r} (known: {', '.join(sorted(FAMILIES))})")
    schema = FAMILIES[family]
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = sorted(set(doc) - set(fields) - set(TOP_KEYS))
    if unknown:
        raise DeviceFileError(f"{where}: unknown field(s) {', '.join(unknown)} for family '{family}'")
    values: dict[str, Any] = {}
    provenance: dict[str, Provenance] = {}
    for name, f in fields.items():
        if name not in doc:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                raise DeviceFileError(f"{where}: missing field '{name}' (family '{family}')")
            continue
        dim, per_dtype = f.metadata.get("dim"), f.metadata.get("per_dtype", False)
        raw = doc[name]
        if per_dtype:
            if not isinstance(raw, dict) or not raw:
                raise DeviceFileError(f"{where}: field '{name}' must be a table of dtype = quantity")
            values[name] = {}
            for dt, q in raw.items():
                values[name][dt], provenance[f"{name}.{dt}"] = _quantity(q, dim, f"{name}.{dt}", where)
        else:
            values[name], provenance[name] = _quantity(raw, dim, name, where)
    try:
        params = schema(**values)
    except (TypeError, ValueError) as e:
        raise DeviceFileError(f"{where}: {e}") from None
    check = getattr(params, "validate", None)
    if check is not None:
        problem = check()
        if problem:
            raise DeviceFileError(f"{where}: {problem}")
    return Device(doc["name"], family, doc["description"], where, params, provenance)


def _quantity(raw: Any, dim: str | None, name: str, where: str) -> tuple[Any, Provenance]:
    if not isinstance(raw, dict):
        raise DeviceFileError(f"{where}: field '{name}' must be a table {{ value = ..., unit = ..., source = ... }}")
    extra = sorted(set(raw) - QUANTITY_KEYS)
    if extra:
        raise DeviceFileError(f"{where}: field '{name}': unknown key(s) {', '.join(extra)}")
    if "value" not in raw:
        raise DeviceFileError(f"{where}: field '{name}': missing 'value'")
    source = raw.get("source")
    if not isinstance(source, str) or not source.strip():
        raise DeviceFileError(f"{where}: field '{name}': missing 'source' (every number cites where it came from)")
    fit_date, fit_error = raw.get("fit_date"), raw.get("fit_error")
    if (fit_date is None) != (fit_error is None):
        raise DeviceFileError(f"{where}: field '{name}': a fitted value needs both 'fit_date' and 'fit_error'")
    if fit_error is not None and not isinstance(fit_error, (int, float)):
        raise DeviceFileError(f"{where}: field '{name}': 'fit_error' must be a number")
    value = raw["value"]
    unit = raw.get("unit", "")
    prov = Provenance(source, str(unit), None if fit_date is None else str(fit_date), fit_error)
    if dim is None:
        if "unit" in raw and unit not in ("", "1"):
            raise DeviceFileError(f"{where}: field '{name}': a setting takes no unit, got {unit!r}")
        return value, prov
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DeviceFileError(f"{where}: field '{name}': 'value' must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise DeviceFileError(f"{where}: field '{name}': 'value' must be a finite number >= 0, got {value}")
    units = UNITS[dim]
    if unit not in units:
        raise DeviceFileError(
            f"{where}: field '{name}': wrong unit {unit!r} for a {dim} (use one of {', '.join(units)})"
        )
    return float(value) * units[unit], prov
