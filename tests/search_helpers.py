"""Evaluate functions the search tests pass with --evaluate (importable from a subprocess)."""

from __future__ import annotations

import time

from sparsesim.tracing.models import digits

# long enough that a SIGKILL lands mid-study, short enough for a fast test
TRIAL_SLEEP_S = 0.15


def slow_accuracy(model) -> float:
    """The digits test accuracy, made a little slower so a run can be killed mid-trial."""
    time.sleep(TRIAL_SLEEP_S)
    return digits.evaluate(model)
