"""Heavy modules imported where first used: scipy.stats alone takes most of a second to import,
and only analytic statistics need it."""

from __future__ import annotations

from types import ModuleType


def scipy_stats() -> ModuleType:
    from scipy import stats

    return stats
