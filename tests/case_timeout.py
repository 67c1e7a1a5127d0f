"""A per-case time limit for property tests over hostile input: one pathological case (a loop that
scales with a fuzzed number, a size that swaps) fails its test within seconds, naming the case,
instead of stalling CI. Hypothesis' `deadline` judges a case only after it returns, so it cannot.

Put `@per_case_timeout()` between `@given(...)` and the test function. SIGALRM: main thread, POSIX."""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable
from typing import Any

CASE_TIMEOUT_S = 30.0  # a hostile case is costed in well under a second; 30x that on a loaded CI box


class CaseTimeout(BaseException):
    """Not an Exception, so code under test that turns exceptions into results cannot swallow it."""


def per_case_timeout(seconds: float = CASE_TIMEOUT_S) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(test: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(test)
        def run(*args: Any, **kwargs: Any) -> Any:
            def expired(signum: int, frame: object) -> None:
                case = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())[:2000]
                raise CaseTimeout(f"{test.__name__}: one case ran over {seconds:g} s: {case}")

            old = signal.signal(signal.SIGALRM, expired)
            signal.setitimer(signal.ITIMER_REAL, seconds)
            try:
                return test(*args, **kwargs)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)

        return run

    return wrap
