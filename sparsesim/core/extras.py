"""Optional dependencies: what each extra holds is imported only by the verb that needs it, and a
missing one is a one-line error naming the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from sparsesim.core.errors import SparsesimError


class MissingExtraError(SparsesimError):
    """A verb needs a package from an optional extra that is not installed."""


def require(module: str, extra: str, needed_for: str) -> ModuleType:
    """Import `module`, or raise one line naming the extra (`pip install 'sparsesim[extra]'`)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{needed_for} needs {module.split('.')[0]}, from the optional extra [{extra}]: "
                                f"pip install 'sparsesim[{extra}]'") from None

