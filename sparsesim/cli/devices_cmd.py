"""`sparsesim devices`: the built-in device files; `sparsesim devices show DEV`: every field of one,
with value, unit and source, and the fit date and error of fitted fields."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

NAME = "devices"
HELP = "list the device files (or `devices show DEV`: every field with its unit and source)"
# dtypes shown first among per-dtype peaks in the listing (the common inference/training dtypes)
PEAK_DTYPES = ("fp16", "bf16", "int8", "fp32")
MAX_PEAKS = 4
# field-name words that mark a device's main (off-chip) memory bandwidth
OFFCHIP_WORDS = ("dram", "offchip", "memory", "hbm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=("list", "show"), default="list",
                        help="list (default) or show one device")
    parser.add_argument("device", nargs="?", help="device name (file stem) or path to a .toml device file")
    parser.epilog = "Devices are files in accelerators/; add a device by adding a file (see `devices show a100-sxm4-80gb`)."


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sparsesim.core.errors import DeviceFileError
    from sparsesim.hw.devices import builtin_device_files, load_device, parse_device_file

    if args.action == "show":
        if not args.device:
            raise DeviceFileError("`devices show` needs a device name or a .toml path")
        return {"device": describe(load_device(args.device))}
    if args.device:
        raise DeviceFileError(f"unexpected argument {args.device!r}: use `sparsesim devices show {args.device}`")
    return {"devices": [summarize(parse_device_file(p)) for p in builtin_device_files().values()]}


def _fields(device) -> list[tuple[str, Any, Mapping[str, Any]]]:
    """(field name, SI value or setting, metadata) in schema order, per-dtype tables expanded."""
    out: list[tuple[str, Any, Mapping[str, Any]]] = []
    for f in dataclasses.fields(device.params):
        value = getattr(device.params, f.name)
        if f.metadata.get("per_dtype") and isinstance(value, dict):
            for dt, v in value.items():
                out.append((f"{f.name}.{dt}", v, f.metadata))
        else:
            out.append((f.name, value, f.metadata))
    return out


def _in_file_unit(value: Any, dim: str | None, unit: str) -> Any:
    from sparsesim.hw.devices import UNITS

    if dim is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return value
    factor = UNITS.get(dim, {}).get(unit)
    return value / factor if factor else value


def describe(device) -> dict[str, Any]:
    """Every field as the file gives it (value in the file's unit), its source and any fit."""
    fields = []
    for name, value, meta in _fields(device):
        prov = device.provenance.get(name)
        if prov is None:  # a field left at its schema default
            fields.append({"field": name, "value": value, "unit": "", "source": "default (not in the file)",
                           "fit_date": None, "fit_error": None})
            continue
        dim = meta.get("dim") if meta else None
        fields.append({
            "field": name,
            "value": _in_file_unit(value, dim, prov.unit),
            "unit": prov.unit if dim is not None else "",
            "source": prov.source,
            "fit_date": prov.fit_date,
            "fit_error": prov.fit_error,
            "inherited_from": prov.inherited_from,
        })
    fields.extend(_runtime_fields(device))
    from sparsesim.hw.devices import SOURCES_FILE, sources_file

    cited = any(SOURCES_FILE in f["source"] for f in fields)
    shipped = sources_file() if cited else None
    return {"name": device.name, "family": device.family, "description": device.description,
            "path": device.path, "fields": fields, "sources_file": str(shipped) if shipped else None}


def _runtime_fields(device) -> list[dict[str, Any]]:
    """The default runtime and every field of every runtime the file describes (hw.runtimes)."""
    import dataclasses

    out = []
    names = ["default_runtime"] if "default_runtime" in device.provenance else []
    for rt_name, params in (device.runtimes.by_name.items() if device.runtimes is not None else []):
        for f in dataclasses.fields(params):
            table = getattr(params, f.name)
            if f.metadata.get("per_dtype") and isinstance(table, dict):  # a per-kernel table, entry by entry
                names.extend(f"runtime.{rt_name}.{f.name}.{key}" for key in table)
            else:
                names.append(f"runtime.{rt_name}.{f.name}")
    for name in names:
        prov = device.provenance.get(name)
        if prov is None:
            continue  # a runtime field left at its default
        if name == "default_runtime":
            value: Any = device.default_runtime
            dim = None
        else:
            _, rt_name, fname, *key = name.split(".", 3)
            value = getattr(device.runtimes.by_name[rt_name], fname)
            if key:
                value = value[key[0]]
            dim = next(f.metadata.get("dim") for f in dataclasses.fields(device.runtimes.by_name[rt_name])
                       if f.name == fname)
        if isinstance(value, tuple):
            value = list(value)
        out.append({"field": name, "value": _in_file_unit(value, dim, prov.unit), "unit": prov.unit if dim else "",
                    "source": prov.source, "fit_date": prov.fit_date, "fit_error": prov.fit_error,
                    "inherited_from": prov.inherited_from})
    return out


def summarize(device) -> dict[str, Any]:
    """Name, family, description and a few key peaks: compute rates first, then bandwidths
    (for a per-dtype table, its most common dtype: fp16, else bf16, int8, fp32)."""
    by_kind: dict[str, list[dict[str, Any]]] = {"flop_rate": [], "bandwidth": []}
    for kind, found in by_kind.items():
        candidates = [(n, v) for n, v, m in _fields(device) if m and m.get("dim") == kind]
        seen: set[str] = set()
        # sorted() is stable: schema order is kept within a rank
        for name, value in sorted(candidates, key=lambda t: _peak_rank(t[0])):
            base = name.split(".")[0]
            if base in seen:
                continue
            seen.add(base)
            prov = device.provenance.get(name)
            unit = prov.unit if prov else ""
            found.append({"field": name, "value": _in_file_unit(value, kind, unit), "unit": unit})
    bws = by_kind["bandwidth"][:2]
    peaks = by_kind["flop_rate"][: MAX_PEAKS - len(bws)] + bws
    return {"name": device.name, "family": device.family, "description": device.description,
            "path": device.path, "peaks": peaks, "fitted": sorted(device.fitted())}


def _peak_rank(name: str) -> int:
    """Per-dtype peaks at a common dtype first, then off-chip bandwidths, other scalars, other dtypes."""
    dt = name.split(".")[1] if "." in name else ""
    if dt in PEAK_DTYPES:
        return PEAK_DTYPES.index(dt)
    if not dt and any(w in name for w in OFFCHIP_WORDS):
        return len(PEAK_DTYPES)
    return len(PEAK_DTYPES) + (2 if dt else 1)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_fmt(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render(doc: dict[str, Any]) -> str:
    if "device" in doc:
        d = doc["device"]
        lines = [f"{d['name']}  ({d['family']})  {d['description']}", f"file: {d['path']}", ""]
        width = max((len(f["field"]) for f in d["fields"]), default=10)
        for f in d["fields"]:
            unit = "" if f["unit"] == "1" else f["unit"]  # a plain count or ratio
            val = f"{_fmt(f['value'])} {unit}".strip()
            fit = f"  [fitted {f['fit_date']}, error {f['fit_error']:g}]" if f["fit_date"] else ""
            base = f"  [from {Path(f['inherited_from']).stem}]" if f.get("inherited_from") else ""
            lines.append(f"{f['field']:<{width}}  {val:<22} {f['source']}{fit}{base}")
        if d.get("sources_file"):
            lines += ["", f"sources cited as 'published.md §N': {d['sources_file']}"]
        return "\n".join(lines)
    rows = []
    width = max((len(d["name"]) for d in doc["devices"]), default=10)
    for d in doc["devices"]:
        peaks = ", ".join(f"{p['field']} {_fmt(p['value'])} {p['unit']}" for p in d["peaks"])
        fitted = f"  (fitted: {len(d['fitted'])} fields)" if d["fitted"] else ""
        rows.append(f"{d['name']:<{width}}  {d['family']:<5} {d['description']}{fitted}\n{'':<{width + 8}}{peaks}")
    rows.append("")
    rows.append("details: sparsesim devices show NAME")
    return "\n".join(rows)
