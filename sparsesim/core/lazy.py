"""Heavy modules imported where first used, not where named.

scipy.stats alone takes most of a second to import and only analytic statistics need it; torch
takes over a second and costing a workload that needs no model (a single op, a SCALE-Sim
topology) never touches it. A module that uses torch only inside functions binds the name to a
proxy instead, keeping static typing intact:

    if TYPE_CHECKING:
        import torch
    else:
        torch = lazy_module("torch")

The proxy imports the real module on its first attribute access and forwards every access to
it. It is not `importlib.util.LazyLoader`: that registers the module in `sys.modules` at once
(so "is torch loaded?" checks answer yes before it is) and resolving a submodule's spec
(`torch.nn.functional`) imports its parent packages eagerly.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any


def scipy_stats() -> ModuleType:
    from scipy import stats

    return stats


class _LazyModule(ModuleType):
    """Stands for module `name` until first used; then every attribute access is the module's."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__dict__["_lazy_module"] = None

    def _load(self) -> ModuleType:
        mod: ModuleType | None = self.__dict__["_lazy_module"]
        if mod is None:
            # import_module, not a look in sys.modules: while another thread is still running the
            # module's code (the first use of numpy on two threads at once), sys.modules holds it
            # half made; import_module waits for it under the import lock
            mod = importlib.import_module(self.__name__)
            self.__dict__["_lazy_module"] = mod
        return mod

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__") and attr not in ("__version__", "__path__", "__file__",
                                                                          "__all__", "__spec__"):
            raise AttributeError(attr)  # copy, pickle and friends probing for hooks must not load it
        return getattr(self._load(), attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        setattr(self._load(), attr, value)

    def __delattr__(self, attr: str) -> None:
        delattr(self._load(), attr)

    def __dir__(self) -> list[str]:
        return dir(self._load())

    def __repr__(self) -> str:
        state = "loaded" if self.__dict__["_lazy_module"] is not None else "not loaded yet"
        return f"<lazy module {self.__name__!r} ({state})>"


def lazy_module(name: str) -> ModuleType:
    """Module `name`, imported on first attribute access (at once when it is already loaded)."""
    loaded = sys.modules.get(name)
    initializing = getattr(getattr(loaded, "__spec__", None), "_initializing", False)
    return loaded if loaded is not None and not initializing else _LazyModule(name)
