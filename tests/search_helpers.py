"""What the search tests share: evaluate functions they pass with --evaluate (importable from a
subprocess) and reading back a study's trials."""

from __future__ import annotations

import time

from sparsesim.tracing.models import digits

# long enough that a SIGKILL lands mid-study, short enough for a fast test
TRIAL_SLEEP_S = 0.15


def slow_accuracy(model) -> float:
    """The digits test accuracy, made a little slower so a run can be killed mid-trial."""
    time.sleep(TRIAL_SLEEP_S)
    return digits.evaluate(model)


def study_trials(storage: str) -> list:
    """The trials of the one study in `storage` (a journal path or a database URL), read through
    sparsesim's own storage opener (which repairs a torn journal)."""
    import optuna

    from sparsesim.search.optuna_search import open_storage

    st = open_storage(storage)
    (summary,) = optuna.get_all_study_summaries(st)
    return optuna.load_study(study_name=summary.study_name, storage=st).get_trials(deepcopy=False)

