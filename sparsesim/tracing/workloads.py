"""Turn a workload spec into a traced `Workload`.

A spec is one of
  * a recipe name with optional parameters: `resnet50`, `bert-base:batch=16,seq=384`,
    `llama2-7b:phase=decode,batch=8,kv=2048` (recipes are the TOML files in workloads/);
  * a recipe file path: `my/recipe.toml` (optionally `my/recipe.toml:batch=4`);
  * a single op: `gemm:M=4096,N=4096,K=4096,dtype=bf16` (a linear layer: M rows of
    activations, K in and N out features; its N x K weight is `gemm.weight`) or
    `conv:batch=1,cin=64,cout=64,h=56,w=56,kernel=3,stride=1,padding=1` (weight `conv.weight`);
  * a SCALE-Sim topology file: `net.csv` (optionally `net.csv:dtype=fp16`; `tracing.topology`);
  * `module.path:factory` for a user's own model: `factory()` returns `(model, example_inputs)`.

A recipe file has exactly these keys:
    description = "one line"                      (required)
    builder = "package.module:function"           (required; returns (model, example_inputs))
    dtype = "fp32"                                (optional default; a parameter like the rest)
    [params]                                      (optional defaults overriding the builder's)
    [train]                                       (optional: the model's usual training run, the
                                                   defaults of `sparsesim train`: dataset,
                                                   dataset_size, epochs, batch)
The parameters a recipe accepts are the builder's keyword parameters, plus `routing` (uniform,
zipf:A, measured, optionally +cf:C) for models with Mixture-of-Experts layers
(`sparsesim.tracing.routing`). Loading here caches nothing; `run.estimate` keeps traces on disk (`core.diskcache`).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import math
import os
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsesim.core import progress
from sparsesim.core.errors import SparsesimError, WorkloadError
from sparsesim.core.ir import ACTIVATION_QUANT_DTYPES, DTYPE_BYTES, WEIGHT_ONLY_DTYPES, WeightInfo, Workload
from sparsesim.core.lazy import lazy_module
from sparsesim.tracing import guard
from sparsesim.tracing.routing import route
from sparsesim.tracing.specs import SINGLE_OPS, builtin_recipe_files, parse_params
from sparsesim.tracing.topology import is_topology, load_topology

# torch (and the tracer) load when a model is built: reading recipes, listing them and loading
# a topology file need neither
if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from sparsesim.tracing import tracer
else:
    torch = lazy_module("torch")
    nn = lazy_module("torch.nn")
    tracer = lazy_module("sparsesim.tracing.tracer")

RECIPE_KEYS = {"description": str, "builder": str, "dtype": str, "params": dict, "train": dict}
TRAIN_KEYS: dict[str, type[Any] | tuple[type[Any], ...]] = {"dataset": str, "dataset_size": int, "epochs": (int, float), "batch": int}
REQUIRED_KEYS = ("description", "builder")
# a parameter every recipe takes: the routing model of its MoE layers (`tracing.routing`)
ROUTING_PARAM = "routing"
_A = {"int": "an integer", "float": "a number", "bool": "true or false"}
# Single-op weights up to this many elements get real random values (so masks can be built
# from them); bigger ones stay on the meta device. 2**24 = a 4096 x 4096 layer.
SINGLE_OP_REAL_WEIGHT_LIMIT = 2**24
# 2**53: element counts stay exact as floats and far inside int64 once multiplied by a dtype's bytes
SINGLE_OP_MAX_ELEMENTS = 2**53
SINGLE_OP_DEFAULT_DTYPE = "bf16"  # what a standalone GEMM benchmark is usually run in


# ---------------------------------------------------------------- recipes

@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    description: str
    builder: str
    defaults: dict[str, Any]
    train: dict[str, Any] = dataclasses.field(default_factory=dict)

    def builder_fn(self) -> Callable[..., tuple[nn.Module, Any]]:
        return _import_callable(self.builder, what=f"recipe {self.name!r} ({self.path}): builder")


def read_recipe(path: Path, name: str | None = None) -> Recipe:
    """Load and check a recipe file strictly: unknown or missing keys name the file and key."""
    name = name or path.stem
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise WorkloadError(f"recipe file {path} does not exist") from None
    except RecursionError:  # tomllib parses nested arrays/tables recursively
        raise WorkloadError(f"recipe file {path}: arrays or tables nested too deeply to be a recipe") from None
    except OSError as e:
        raise WorkloadError(f"recipe file {path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise WorkloadError(f"recipe file {path}: not a UTF-8 text file (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise WorkloadError(f"recipe file {path}: {e}") from None
    for key, value in data.items():
        if key not in RECIPE_KEYS:
            raise WorkloadError(f"recipe file {path}: unknown key {key!r} (allowed: {', '.join(RECIPE_KEYS)})")
        if not isinstance(value, RECIPE_KEYS[key]):
            raise WorkloadError(f"recipe file {path}: key {key!r} must be a {RECIPE_KEYS[key].__name__}")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise WorkloadError(f"recipe file {path}: missing key {key!r}")
    train = data.get("train", {})
    for key, value in train.items():
        if key not in TRAIN_KEYS:
            raise WorkloadError(f"recipe file {path}: [train] unknown key {key!r} (allowed: {', '.join(TRAIN_KEYS)})")
        if not isinstance(value, TRAIN_KEYS[key]) or isinstance(value, bool) or (
                not isinstance(value, str) and not value > 0):
            raise WorkloadError(f"recipe file {path}: [train] {key} = {value!r} must be "
                                + ("a string" if TRAIN_KEYS[key] is str else "a positive number"))
    recipe = Recipe(name, path, data["description"], data["builder"], {}, dict(train))
    sig_defaults = _builder_defaults(recipe)
    defaults = dict(sig_defaults)
    for key, value in data.get("params", {}).items():
        if key not in sig_defaults:
            raise WorkloadError(f"recipe file {path}: [params] {key!r} is not a parameter of {recipe.builder} "
                                f"(has: {', '.join(sig_defaults)})")
        defaults[key] = value
    if "dtype" in data:
        if "dtype" not in sig_defaults:
            raise WorkloadError(f"recipe file {path}: builder {recipe.builder} takes no dtype")
        defaults["dtype"] = data["dtype"]
    return dataclasses.replace(recipe, defaults=defaults)


def _builder_defaults(recipe: Recipe) -> dict[str, Any]:
    """The builder's parameters with their defaults: read off its source when every default is a
    literal (listing the recipes then imports no model code, nor torch), else from the imported
    function's signature."""
    static = _literal_defaults(recipe.builder)
    if static is not None:
        return static
    fn = recipe.builder_fn()
    out = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            raise WorkloadError(f"recipe {recipe.name!r}: builder {recipe.builder} parameter {p.name!r} "
                                "has no default")
        out[p.name] = p.default
    return out


def _literal_defaults(ref: str) -> dict[str, Any] | None:
    """`inspect.signature` defaults of sparsesim's own builder `module:name`, parsed from the
    module's source without importing it (tests/test_workloads.py checks every built-in recipe
    against the signature); None for a user's module (imported, as it may rebind the name),
    one already imported (read it there), or a function that is not a plain def with a literal
    default for every parameter and no *args/**kwargs."""
    module, _, attr = ref.partition(":")
    if not module.startswith("sparsesim.") or not attr or module in sys.modules:
        return None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    origin = spec.origin if spec is not None else None
    return source_defaults(Path(origin), attr) if origin and origin.endswith(".py") else None


def source_defaults(path: Path, name: str) -> dict[str, Any] | None:
    """The parameters and literal defaults of the top-level `def name` in the Python file `path`
    (None: see `_literal_defaults`)."""
    import ast

    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    if fn is None or fn.args.vararg or fn.args.kwarg or fn.args.posonlyargs:
        return None
    args = fn.args
    positional = list(zip(args.args[len(args.args) - len(args.defaults):], args.defaults))
    if len(positional) != len(args.args):
        return None
    keyword = list(zip(args.kwonlyargs, args.kw_defaults))
    out: dict[str, Any] = {}
    for arg, default in positional + keyword:
        if default is None:
            return None
        try:
            out[arg.arg] = ast.literal_eval(default)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):  # not a literal
            return None
    return out


def list_recipes() -> list[dict[str, Any]]:
    """Every built-in recipe: name, description, builder, parameters with defaults, file."""
    out = []
    for name, path in builtin_recipe_files().items():
        r = read_recipe(path, name)
        out.append({"name": name, "description": r.description, "builder": r.builder,
                    "params": dict(r.defaults), "path": str(path)})
    return out


# ---------------------------------------------------------------- spec parsing

def coerce(value: str, default: Any, *, where: str, key: str) -> Any:
    """Convert a command-line string to the type of the parameter's default."""
    try:
        if isinstance(default, bool):
            low = value.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return low in ("true", "1", "yes")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        kind = _A.get(type(default).__name__, "a " + type(default).__name__)
        raise WorkloadError(f"{where}: parameter {key}={value!r} is not {kind}") from None
    return value


def load_workload(spec: str) -> Workload:
    """Build and trace the workload a spec names (see the module docstring). The user's code it
    runs (import, builder or factory, forward) is bounded by `guard.time_limit`, and its
    sys.exit or KeyboardInterrupt is a WorkloadError (see `sparsesim.tracing.guard`)."""
    spec = spec.strip()
    if not is_topology(spec):
        # torch and the tracer (over a second to import) are sparsesim's own imports: loaded
        # before the time limit on the user's code starts, not within it
        importlib.import_module(tracer.__name__)
    with guard.bounded(spec):
        return _load(spec)


def _load(spec: str) -> Workload:
    head, sep, tail = spec.partition(":")
    if is_topology(spec):
        return load_topology(spec)
    if head in SINGLE_OPS:
        return _single_op(head, parse_params(tail, where=f"workload {spec!r}"), spec)
    if head.endswith(".toml"):
        return _run_recipe(read_recipe(Path(head)), tail, spec)
    recipes = builtin_recipe_files()
    if head in recipes:
        return _run_recipe(read_recipe(recipes[head], head), tail, spec)
    if sep and tail and "=" not in tail:
        return _run_factory(head, tail, spec)
    raise WorkloadError(f"unknown workload {head!r}: not a recipe ({', '.join(recipes)}), a .toml file, "
                        f"{'/'.join(s + ':...' for s in SINGLE_OPS)}, a SCALE-Sim topology .csv, or module:factory")


def _run_recipe(recipe: Recipe, param_text: str, spec: str) -> Workload:
    where = f"recipe {recipe.name!r}"
    given = parse_params(param_text, where=where)
    # not a builder parameter: how a MoE's experts are loaded, applied to the traced workload
    routing = given.pop(ROUTING_PARAM, None)
    params = dict(recipe.defaults)
    for key, value in given.items():
        if key not in params:
            raise WorkloadError(f"{where}: unknown parameter {key!r} (has: {', '.join(params)})")
        params[key] = coerce(value, params[key], where=where, key=key)
    fn = recipe.builder_fn()
    guard.stage(f"running the builder {recipe.builder}")
    try:
        with progress.stage(f"{spec}: building the model"), \
                guard.user_code(f"builder {recipe.builder} ({guard.source_file(fn)})"):
            model, inputs = fn(**params)
    except SparsesimError as e:
        raise WorkloadError(f"{where}: {e}") from None
    except Exception as e:
        raise WorkloadError(f"{where}: builder {recipe.builder} raised {type(e).__name__}: {_line(e)}") from e
    if routing is not None:
        given[ROUTING_PARAM] = routing
    name = recipe.name + (":" + ",".join(f"{k}={v}" for k, v in given.items()) if given else "")
    wl = tracer.trace(model, inputs, name=name)
    if routing is not None:
        try:
            wl = route(wl, routing)
        except WorkloadError as e:
            raise WorkloadError(f"{where}: {e}") from None
    return dataclasses.replace(wl, params={**params, **({ROUTING_PARAM: routing} if routing else {})})


def _run_factory(module: str, attr: str, spec: str) -> Workload:
    fn = _import_callable(f"{module}:{attr}", what="factory")
    guard.stage(f"running the factory {spec}")
    try:
        with progress.stage(f"{spec}: building the model"), \
                guard.user_code(f"factory {spec} ({guard.source_file(fn)})"):
            result = fn()
    except WorkloadError:
        raise
    except Exception as e:
        raise WorkloadError(f"factory {spec} raised {type(e).__name__}: {_line(e)}") from e
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], nn.Module)):
        raise WorkloadError(f"factory {spec} must return (model, example_inputs), got {type(result).__name__}")
    model, inputs = result
    model.eval()  # estimates are for deployment: dropout off, batch norm on running statistics
    return tracer.trace(model, inputs, name=spec)


def _import_callable(ref: str, *, what: str) -> Callable[..., Any]:
    module, _, attr = ref.partition(":")
    if not module or not attr:
        raise WorkloadError(f"{what} {ref!r} is not 'module:function'")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # `sparsesim trace mymod:factory` finds mymod.py in the cwd
    guard.stage(f"importing {module!r}")
    try:
        with guard.user_code(lambda: f"{what} {ref!r}: importing {module!r} ({_module_file(module)})"):
            mod = importlib.import_module(module)
    except WorkloadError:
        raise
    except ModuleNotFoundError as e:
        raise WorkloadError(f"{what} {ref!r}: cannot import module {module!r} ({e})") from None
    except Exception as e:
        raise WorkloadError(f"{what} {ref!r}: importing {module!r} raised {type(e).__name__}: {_line(e)}") from e
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise WorkloadError(f"{what} {ref!r}: module {module!r} has no function {attr!r}")
    return fn


def _module_file(module: str) -> str:
    """Where `module` would be imported from (after its import failed), or its name."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError, SystemExit, KeyboardInterrupt):  # a parent package that exits on import
        return module
    return spec.origin if spec is not None and spec.origin else module


def _line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


# ---------------------------------------------------------------- single ops

_SINGLE_OP_PARAMS: dict[str, dict[str, Any]] = {
    "gemm": {"M": None, "N": None, "K": None, "dtype": SINGLE_OP_DEFAULT_DTYPE, "bias": False, "seed": 0},
    "conv": {"batch": 1, "cin": None, "cout": None, "h": None, "w": None, "kernel": 3, "stride": 1,
             "padding": 0, "dilation": 1, "groups": 1, "dtype": SINGLE_OP_DEFAULT_DTYPE, "bias": False,
             "seed": 0},
}


def _single_op(kind: str, given: dict[str, str], spec: str) -> Workload:
    """One linear or conv layer, traced on the meta device (its arithmetic is not needed);
    the workload's model holds real random weights when they are small enough to build masks."""
    from sparsesim.tracing.models import torch_dtype
    from sparsesim.tracing.models.one_layer import OneLayer

    where = f"workload {spec!r}"
    schema = _SINGLE_OP_PARAMS[kind]
    p: dict[str, Any] = {}
    for key, value in given.items():
        if key not in schema:
            raise WorkloadError(f"{where}: unknown parameter {key!r} (has: {', '.join(schema)})")
        default = schema[key]
        p[key] = coerce(value, default if default is not None else 0, where=where, key=key)
    for key, default in schema.items():
        if key not in p:
            if default is None:
                raise WorkloadError(f"{where}: missing parameter {key}=")
            p[key] = default
    if p["dtype"] not in DTYPE_BYTES:
        raise WorkloadError(f"{where}: unknown dtype {p['dtype']!r}")
    for key, value in p.items():
        if key not in ("dtype", "bias", "seed", "padding") and isinstance(value, int) and value < 1:
            raise WorkloadError(f"{where}: parameter {key}={value} must be at least 1")
    if p.get("padding", 0) < 0:
        raise WorkloadError(f"{where}: parameter padding={p['padding']} must be >= 0")
    # int8, fp8 and the weight-only dtypes are built and traced at 16 bits, then deployed at
    # the dtype (tracing.retype), as a quantised deployment of a 16-bit layer is
    from sparsesim.tracing.retype import retype

    narrow = p["dtype"] in ACTIVATION_QUANT_DTYPES or p["dtype"] in WEIGHT_ONLY_DTYPES
    dt = torch_dtype("fp16" if narrow else p["dtype"])

    # every tensor's element count bounded before anything is built (a 64-bit element count,
    # and shapes a meta tensor can describe): a typo such as M=10000000000 is a model on the meta
    # device, M=2**63 an error, never an allocation or an overflow
    sizes = ({"input": (p["M"], p["K"]), "weight": (p["N"], p["K"]), "output": (p["M"], p["N"])} if kind == "gemm"
             else {"input": (p["batch"], p["cin"], p["h"], p["w"]),
                   "weight": (p["cout"], p["cin"], p["kernel"], p["kernel"]),
                   "output": (p["batch"], p["cout"], p["h"], p["w"])})
    for what, dims in sizes.items():
        if math.prod(dims) > SINGLE_OP_MAX_ELEMENTS:
            raise WorkloadError(f"{where}: the {what} would hold {math.prod(dims):.3g} elements "
                                f"({' x '.join(map(str, dims))}); at most {SINGLE_OP_MAX_ELEMENTS:.3g} are described")

    def build(device: str) -> tuple[nn.Module, torch.Tensor]:
        root = OneLayer(kind)
        with torch.device(device):
            if kind == "gemm":
                root.gemm = nn.Linear(p["K"], p["N"], bias=p["bias"], dtype=dt)
                # the input is only traced (on meta): a real-weight layer never allocates it
                x = torch.empty(p["M"], p["K"], dtype=dt, device="meta")
            else:
                if p["cin"] % p["groups"] or p["cout"] % p["groups"]:
                    raise WorkloadError(f"{where}: groups={p['groups']} must divide cin and cout")
                root.conv = nn.Conv2d(p["cin"], p["cout"], p["kernel"], p["stride"], p["padding"],
                                      p["dilation"], p["groups"], bias=p["bias"], dtype=dt)
                x = torch.empty(p["batch"], p["cin"], p["h"], p["w"], dtype=dt, device="meta")
        return root, x

    meta_model, x = build("meta")
    try:
        # the layer's outputs feed layers outside the workload: its output channels may be pruned
        wl = tracer.trace(meta_model, (x,), name=spec, measure_activations=False, pin_outputs=False)
    except SparsesimError as e:
        raise WorkloadError(f"{where}: {e}") from None
    layer = getattr(meta_model, kind)
    model = meta_model
    if layer.weight.numel() <= SINGLE_OP_REAL_WEIGHT_LIMIT:
        torch.manual_seed(p["seed"])
        model, _ = build("cpu")
    weights = {n: WeightInfo(n, tuple(w.shape), tracer.dtype_name(w.dtype), w.is_meta)
               for n, w in model.named_parameters() if n in wl.weights}
    wl = dataclasses.replace(wl, params=p, model=model, weights=weights)
    if narrow:
        wl = dataclasses.replace(retype(wl, p["dtype"], deployment=False), name=spec, params=p)
    return wl


# ---------------------------------------------------------------- cache keys
