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

A file may start from another device (`extends = "h100-sxm5"`, a name or a path relative to the
file) and give only what differs; a per-dtype table is merged dtype by dtype. Sources cited as
"published.md §N" are the reference file shipped next to the built-in devices (`sources_file()`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import re
import tomllib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsesim.core.errors import DeviceFileError, SparsesimWarning
from sparsesim.core.packaged import builtin_dirs, builtin_files, user_device_dir

if TYPE_CHECKING:
    from sparsesim.hw.runtimes import Runtimes

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

# Dimensions used as divisors (time = work / rate): zero is never a real device.
RATE_DIMS = frozenset({"frequency", "flop_rate", "bandwidth", "per_cycle"})
# Sanity ranges in SI units, wide enough for any real device from a microcontroller to a
# wafer-scale chip; a value outside one draws a warning that names the field (a sanity bound,
# not a model constant).
PLAUSIBLE: Mapping[str, tuple[float, float]] = {
    "frequency": (1e6, 1e11),          # 1 MHz .. 100 GHz
    "flop_rate": (1e6, 1e19),          # 1 MFLOP/s .. 10 EFLOP/s
    "bandwidth": (1e6, 1e16),          # 1 MB/s .. 10 PB/s
    "energy": (1e-16, 1e-6),           # per action: 0.1 fJ .. 1 uJ
    "energy_per_byte": (1e-15, 1e-6),  # 1 fJ/B .. 1 uJ/B
    "power": (1e-4, 1e5),              # 0.1 mW .. 100 kW
    "time": (1e-12, 10.0),             # overheads: 1 ps .. 10 s
}

QUANTITY_KEYS = frozenset({"value", "unit", "source", "fit_date", "fit_error", "note"})
TOP_KEYS = ("name", "family", "description")
EXTENDS_KEY = "extends"
# the reference file the device files cite as "published.md §N", shipped with them
SOURCES_FILE = "published.md"
# keys every family shares: the default runtime and the runtime.<name>.<field> tables (hw.runtimes)
RUNTIME_KEYS = ("default_runtime", "runtime")


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
    inherited_from: str | None = None  # the device file this value came from through `extends`


@dataclass(frozen=True)
class Device:
    """A loaded device: its family's parameters (SI units) and where each number came from."""

    name: str
    family: str
    description: str
    path: str
    params: Any
    provenance: Mapping[str, Provenance] = field(default_factory=dict, compare=False, hash=False)
    runtimes: Any = field(default=None, compare=False, hash=False)

    def fitted(self) -> dict[str, Provenance]:
        return {k: p for k, p in self.provenance.items() if p.fit_date is not None}

    @functools.cached_property
    def key(self) -> str:
        """Identity by content: a hash of the family, parameters and runtimes (not the name or
        path), so an edited file is a new device and one file under two names is the same one."""
        text = repr((self.family, self.params, self.runtimes))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def default_runtime(self) -> str:
        """The runtime the device file names as its default."""
        from sparsesim.hw.runtimes import Runtimes

        return (self.runtimes or Runtimes()).default

    def runtime(self, name: str | None = None) -> tuple[str, Any]:
        """(name, RuntimeParams) of runtime `name` on this device; None or "" is the default.
        An unknown or unoffered runtime raises DeviceFileError naming the device and its runtimes."""
        from sparsesim.hw.runtimes import RUNTIMES, Runtimes

        rts = self.runtimes or Runtimes()
        name = name or rts.default
        params = rts.by_name.get(name)
        if params is None:
            known = f"one of {', '.join(RUNTIMES)}" if name not in RUNTIMES else ""
            raise DeviceFileError(
                f"device {self.name}: runtime {name!r} is not {known or 'described in its device file'}"
                f" (it has: {', '.join(rts.by_name)}; {self.path})")
        return name, params


def _load_family(name: str) -> list[str]:
    """Register family `name` (its cost-model module registers it on import) unless it is
    already; the names of all families known, for messages."""
    from sparsesim.cost.families import FAMILY_MODULES, load_family

    if name not in FAMILIES:
        load_family(name)
    return sorted(set(FAMILIES) | set(FAMILY_MODULES))


def builtin_device_dirs() -> list[Path]:
    """Packaged device files (wheel install) or the repository's accelerators/ (checkout)."""
    return builtin_dirs("accelerators")


def builtin_device_files() -> dict[str, Path]:
    """Device name (file stem) -> file, the first directory winning."""
    return builtin_files(builtin_device_dirs())


def user_device_files() -> dict[str, Path]:
    """The user's own device files (e.g. `host` from `sparsesim calibrate`) in the user config
    directory, except those named like a built-in device (the built-in one wins)."""
    builtin = {k.lower() for k in builtin_device_files()}
    return {k: p for k, p in builtin_files([user_device_dir()]).items() if k.lower() not in builtin}


def default_device_files() -> dict[str, Path]:
    """Every device a comparison uses when none are named: built-in, then the user's."""
    return {**builtin_device_files(), **user_device_files()}


def sources_file() -> Path | None:
    """The shipped reference file that device-file sources cite as "published.md §N"."""
    for d in builtin_device_dirs():
        if (d / SOURCES_FILE).is_file():
            return d / SOURCES_FILE
    return None


def find_device_file(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml":
        if p.is_file():
            return p
        raise DeviceFileError(f"device file {name_or_path}: {'is a directory' if p.is_dir() else 'does not exist'}")
    files = default_device_files()
    key = name_or_path.lower()
    for stem, path in files.items():
        if stem.lower() == key:
            return path
    hint = " (`sparsesim calibrate` writes it)" if key == "host" else ""
    raise DeviceFileError(
        f"unknown device {name_or_path!r}{hint}: not a .toml file and not one of {', '.join(sorted(files))} "
        f"(built-in, or your own in {user_device_dir()})"
    )


def device_sources(devices: str | None) -> tuple[tuple[str, str], ...] | None:
    """What the devices of a comparison are read from, without building them (for cache keys):
    per device (None: the default set), its file and its document with `extends` applied. None
    when a name or file does not resolve (loading it reports why)."""
    try:
        paths = (list(default_device_files().values()) if devices is None
                 else [find_device_file(d.strip()) for d in devices.split(",") if d.strip()])
        return tuple((str(p.resolve()), repr(resolve_extends(_read_doc(p), str(p), p.parent)[0])) for p in paths)
    except DeviceFileError:
        return None


def load_device(name_or_path: str) -> Device:
    """Load a device by name (file stem, case-insensitive; built-in or in the user config
    directory) or by path to a .toml file."""
    return parse_device_file(find_device_file(name_or_path))


def builtin_devices() -> list[Device]:
    return [parse_device_file(p) for p in builtin_device_files().values()]


def default_devices() -> list[Device]:
    """The devices of a comparison that names none: built-in plus the user's (see
    `user_device_files`; callers announce the user's, since they join silently otherwise)."""
    return [parse_device_file(p) for p in default_device_files().values()]


def unknown_kernel(runtimes: Runtimes, kernel_names: Callable[[], tuple[str, ...]] | None) -> str | None:
    """A message naming the runtime field that lists a kernel its family does not have (a typo
    would otherwise leave the runtime without that kernel, or the host time unused), or None."""
    if kernel_names is None:
        return None
    from sparsesim.hw.runtimes import KERNEL_LISTS

    known = kernel_names()
    for name, rt in runtimes.by_name.items():
        lists = [(fname, getattr(rt, fname)) for fname in KERNEL_LISTS] + [("kernel_dispatch", tuple(rt.kernel_dispatch))]
        for fname, listed in lists:
            bad = [k for k in listed if k not in known]
            if bad:
                return (f"field 'runtime.{name}.{fname}': unknown kernel(s) {', '.join(map(repr, bad))} "
                        f"(known: {', '.join(known)})")
    return None


def parse_device_file(path: Path) -> Device:
    return parse_device_doc(_read_doc(Path(path)), str(path), base_dir=Path(path).parent)


def _read_doc(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise DeviceFileError(f"{path}: cannot read device file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise DeviceFileError(f"{path}: not a UTF-8 text file (byte {e.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DeviceFileError(f"{path}: not valid TOML ({_toml_problem(text, e)})") from None
    except RecursionError:  # tomllib parses nested arrays/tables recursively
        raise DeviceFileError(f"{path}: arrays or tables nested too deeply to be a device file") from None


def resolve_extends(doc: Mapping[str, Any], where: str, base_dir: Path | None,
                    seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """The document with `extends` applied (the base's fields, then this file's on top; per-dtype
    tables merged by dtype) and, per inherited field, the base file it came from."""
    base_ref = doc.get(EXTENDS_KEY)
    if base_ref is None:
        return dict(doc), {}
    if not isinstance(base_ref, str) or not base_ref.strip():
        raise DeviceFileError(f"{where}: field '{EXTENDS_KEY}' must be a device name or a .toml path")
    rel = Path(base_ref)
    if rel.suffix == ".toml" and not rel.is_absolute() and base_dir is not None:
        rel = base_dir / rel
    try:
        base_path = find_device_file(str(rel))
    except DeviceFileError as e:
        raise DeviceFileError(f"{where}: field '{EXTENDS_KEY}': {e}") from None
    key = str(base_path.resolve())
    if key in seen:
        raise DeviceFileError(f"{where}: field '{EXTENDS_KEY}': {base_ref!r} extends itself (through {' -> '.join(seen)})")
    base_doc, base_origin = resolve_extends(_read_doc(base_path), str(base_path), base_path.parent,
                                            (*seen, key))
    merged: dict[str, Any] = dict(base_doc)
    # field (or field.dtype of a per-dtype table) -> the file it was inherited from
    origin: dict[str, str] = {}
    for k, v in base_doc.items():
        for sub in ([f"{k}.{dt}" for dt in v] if _is_table(v) else [k]):
            origin[sub] = base_origin.get(sub, str(base_path))
    for k, v in doc.items():
        if k == EXTENDS_KEY:
            continue
        old = merged.get(k)
        if isinstance(old, dict) and _is_table(v) and _is_table(old):
            # a per-dtype table: this file's dtypes replace the base's; the runtime.<name> tables
            # field by field, and a per-kernel table inside one kernel by kernel
            merged[k] = _merge_tables(old, v)
            drop = {f"{k}.{dt}" for dt in v}
        else:
            merged[k] = v
            drop = {o for o in origin if o == k or o.startswith(f"{k}.")}
        for o in drop:
            origin.pop(o, None)
    merged.pop(EXTENDS_KEY, None)
    return merged, origin


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


def _merge_tables(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, entry by entry: an entry that is a table in both is merged the same way,
    any other entry of `top` replaces the base's."""
    return {**base, **{k: (_merge_tables(base[k], t) if _is_table(t) and _is_table(base.get(k)) else t)
                       for k, t in top.items()}}


def _is_table(v: Any) -> bool:
    """A per-dtype table (dtype -> quantity), as opposed to one quantity {value, unit, source}."""
    return isinstance(v, dict) and "value" not in v and all(isinstance(x, dict) for x in v.values())


def parse_device_doc(doc: Mapping[str, Any], where: str, base_dir: Path | None = None) -> Device:
    doc, origin = resolve_extends(doc, where, base_dir)
    for key in TOP_KEYS:
        if not isinstance(doc.get(key), str) or not doc[key].strip():
            raise DeviceFileError(f"{where}: field '{key}' is missing or not a non-empty string")
    family = doc["family"]
    known = _load_family(family)
    if family not in FAMILIES:
        raise DeviceFileError(f"{where}: field 'family': unknown family {family!r} (known: {', '.join(known)})")
    schema = FAMILIES[family]
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = sorted(set(doc) - set(fields) - set(TOP_KEYS) - set(RUNTIME_KEYS))
    if unknown:
        raise DeviceFileError(f"{where}: unknown field(s) {', '.join(unknown)} for family '{family}'")
    missing = [name for name, f in fields.items() if name not in doc
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    if missing:
        listed = ", ".join(f"'{m}'" for m in missing)
        raise DeviceFileError(f"{where}: missing field{'s' if len(missing) > 1 else ''} {listed} (family '{family}'; "
                              f"or start from a similar device with extends = \"NAME\")")
    values: dict[str, Any] = {}
    provenance: dict[str, Provenance] = {}
    for name, f in fields.items():
        if name not in doc:
            continue
        values[name] = parse_field(doc[name], f, name, where, provenance)
    try:
        params = schema(**values)
    except (TypeError, ValueError) as e:
        raise DeviceFileError(f"{where}: {e}") from None
    check = getattr(params, "validate", None)
    if check is not None:
        problem = check()
        if problem:
            raise DeviceFileError(f"{where}: {problem}")
    from sparsesim.hw.runtimes import parse_runtimes

    runtimes = parse_runtimes(doc, where, provenance)
    problem = unknown_kernel(runtimes, getattr(schema, "kernel_names", None))
    if problem:
        raise DeviceFileError(f"{where}: {problem}")
    for k, p in provenance.items():
        if k in origin:
            provenance[k] = dataclasses.replace(p, inherited_from=origin[k])
    return Device(doc["name"], family, doc["description"], where, params, provenance, runtimes)


def parse_field(raw: Any, f: dataclasses.Field, name: str, where: str, provenance: dict[str, Provenance],
                key: str = "dtype") -> Any:
    """One declared field's value: a quantity, or for a table field (`per_dtype` metadata) a table
    of `key` = quantity (a dtype; a kernel name for a runtime's per-kernel table). Provenance is
    recorded as `name` or `name.<key>`."""
    dim = f.metadata.get("dim")
    if not f.metadata.get("per_dtype", False):
        value, provenance[name] = parse_quantity(raw, dim, name, where)
        return value
    if not isinstance(raw, dict) or not raw or "value" in raw:
        raise DeviceFileError(f"{where}: field '{name}' must be a table of {key} = quantity")
    table = {}
    for k, q in raw.items():
        table[k], provenance[f"{name}.{k}"] = parse_quantity(q, dim, f"{name}.{k}", where)
    return table


def parse_quantity(raw: Any, dim: str | None, name: str, where: str) -> tuple[Any, Provenance]:
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
    si = float(value) * units[unit]
    if not math.isfinite(si):  # 1e300 GHz: finite as written, infinite in SI
        raise DeviceFileError(f"{where}: field '{name}': {value} {unit} is not a finite quantity")
    if dim in RATE_DIMS and not si > 0:
        raise DeviceFileError(f"{where}: field '{name}': a {dim} must be > 0, got {value} {unit} "
                              "(work at a zero rate never finishes)")
    _check_plausible(si, value, unit, dim, name, where)
    return si, prov


def _check_plausible(si: float, value: Any, unit: str, dim: str, name: str, where: str) -> None:
    """Warn (not fail: exotic hardware exists) when a quantity is far outside what any device of
    its dimension has: usually a valid but wrong unit, e.g. FLOP/s written for TFLOP/s."""
    span = PLAUSIBLE.get(dim)
    if span is None or si == 0 or span[0] <= si <= span[1]:
        return
    lo, hi = span
    base = next(u for u, f in UNITS[dim].items() if f == 1.0)
    warnings.warn(f"{where}: field '{name}' = {value} {unit} is outside the plausible range {lo:g}..{hi:g} {base} "
                  f"for a {dim}; is the unit right?", SparsesimWarning, stacklevel=4)
