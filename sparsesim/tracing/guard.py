"""Bounds on the user's code that sparsesim runs to get a workload: the import of the user's model
file, the factory or recipe builder, and the model's forward under the tracer.

Why: that code may loop forever, call `sys.exit`, or raise KeyboardInterrupt. Each must end as one
line naming the code and its file (a `WorkloadError`), never as a hang, a silent exit 0, or what
looks like the user's Ctrl-C.

The time limit is a SIGALRM timer, so it holds only in the main thread of a POSIX process
(elsewhere, e.g. in a library's worker thread, the code runs unbounded). A command sets it with
`time_limit` (the CLI's `--timeout`); one `bounded` section (one `load_workload`) runs under it.
An expired limit raises `Expired`, which is not an `Exception`, so a user's `except Exception`
cannot swallow it, and it fires again every `REFIRE_S` until control leaves the user's code. Code
that swallows even that (`except BaseException: pass` in a loop), or is stuck in one C call, is not
stopped by a signal handler: where the caller allows it (`time_limit(..., exit_prefix=...)`, the
CLI), a watchdog thread then prints the one-line error and ends the process `GRACE_S` later. The
user's code runs before sparsesim writes any output, so nothing is left half-written.
"""

from __future__ import annotations

import inspect
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sparsesim.core.errors import WorkloadError

DEFAULT_TIMEOUT_S = 600.0  # a forward that has not finished in 10 minutes on a CPU is not tracing
REFIRE_S = 1.0  # after expiry, how often the alarm fires again (user code that caught it)
GRACE_S = 5.0  # after expiry, how long code that swallows the alarm has before the process ends
HARD_EXIT_CODE = 2  # what the CLI returns for any error

_limit: float | None = None  # the active limit, seconds (None: unbounded)
_exit_prefix: str | None = None  # set: the process may be ended (message prefix, e.g. "sparsesim trace: error: ")
_armed = False  # a bounded section is running (sections nest: only the outer one arms the timer)
_stage = ""  # what the user's code was doing, for the expiry message
_real_sigint = False  # the running section saw a real SIGINT (Ctrl-C), not a KeyboardInterrupt raised by code
_tells_sigint = False  # the running section can tell a real SIGINT from a raised KeyboardInterrupt
# a SIGALRM timer that was running when the section began (the caller's own): its handler, its
# deadline (time.monotonic) and whether it has fired; it fires on time and is re-armed after
_outer: list = []
_deadline = 0.0  # the running section's own deadline (time.monotonic)


class Expired(BaseException):
    """The time limit ran out while the user's code ran (not an Exception: see the module doc)."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage)
        self.stage = stage


def check_timeout(seconds: float, *, option: str = "--timeout") -> float | None:
    """A --timeout value as a limit: 0 means none; negative or not finite is a one-line error."""
    if not (math.isfinite(seconds) and seconds >= 0):
        raise WorkloadError(f"{option} {seconds:g}: must be a number of seconds >= 0 (0: no limit)")
    return seconds or None


@contextmanager
def time_limit(seconds: float | None, *, exit_prefix: str | None = None) -> Iterator[None]:
    """Run the block with `seconds` as the limit of every `bounded` section in it (None: none).
    With `exit_prefix`, code that does not stop when the limit expires ends the process (exit
    code 2) with the message after that prefix on stderr."""
    global _limit, _exit_prefix
    before = _limit, _exit_prefix
    _limit, _exit_prefix = seconds, exit_prefix
    try:
        yield
    finally:
        _limit, _exit_prefix = before


def stage(text: str) -> None:
    """Say what the user's code is doing now; an expiry message names it."""
    global _stage
    _stage = text


def _can_signal() -> bool:
    return hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()


def _on_alarm(signum: int, frame: object) -> None:
    if _outer and not _outer[2] and time.monotonic() >= _outer[1] - 1e-3:
        _outer[2] = True
        if callable(_outer[0]):
            _outer[0](signum, frame)
        if _armed:  # the caller's handler returned: this section's own limit runs on
            signal.setitimer(signal.ITIMER_REAL, max(_deadline - time.monotonic(), 1e-3))
        return
    if _armed:
        signal.setitimer(signal.ITIMER_REAL, REFIRE_S)
        raise Expired(_stage)


def _expiry(what: str, limit: float, doing: str) -> str:
    where = f" while {doing}" if doing else ""
    return (f"{what}: did not finish within {limit:g} s{where}; does it loop forever? "
            "If it is only slow, raise --timeout (0: no limit)")


def _hard_stop(prefix: str, what: str, limit: float) -> None:
    """The watchdog: the user's code ignored the expired limit; end the process with one line."""
    doing = f" while {_stage}" if _stage else ""
    sys.stderr.write(f"{prefix}{what}: did not finish within {limit:g} s{doing}, and did not stop when "
                     "interrupted (it catches every exception, or is stuck in native code): ended the process; "
                     "if it is only slow, raise --timeout (0: no limit)\n")
    sys.stderr.flush()
    os._exit(HARD_EXIT_CODE)


def _on_sigint(signum: int, frame: object) -> None:
    global _real_sigint
    _real_sigint = True
    raise KeyboardInterrupt


@contextmanager
def bounded(what: str) -> Iterator[None]:
    """Run the user's code that builds `what` (a workload spec) within the active time limit, and
    tell a real Ctrl-C (re-raised) from a KeyboardInterrupt the code raised (see `user_code`)."""
    global _armed, _real_sigint, _tells_sigint, _deadline
    if _armed or not _can_signal():
        yield
        return
    old_int = signal.getsignal(signal.SIGINT)
    if old_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    # with Python's own handler replaced by _on_sigint, or SIGINT ignored, a KeyboardInterrupt that
    # is not flagged was raised by the code; under someone else's handler nothing tells them apart
    _tells_sigint = old_int is signal.default_int_handler or old_int == signal.SIG_IGN
    limit = _limit
    old_alarm = signal.signal(signal.SIGALRM, _on_alarm) if limit else None
    outer_left = signal.getitimer(signal.ITIMER_REAL)[0] if limit else 0.0
    _outer[:] = [old_alarm, time.monotonic() + outer_left, False] if outer_left else []
    _armed, _real_sigint = True, False
    stage("")
    watchdog = None
    if limit and _exit_prefix is not None:
        watchdog = threading.Timer(limit + GRACE_S, _hard_stop, (_exit_prefix, what, limit))
        watchdog.daemon = True
        watchdog.start()
    try:
        if limit:
            _deadline = time.monotonic() + limit
            signal.setitimer(signal.ITIMER_REAL, min(limit, outer_left) if outer_left else limit)
        yield
    except Expired as e:
        _armed = False
        raise WorkloadError(_expiry(what, limit or 0.0, e.stage)) from None
    finally:
        _armed = False
        if watchdog is not None:
            watchdog.cancel()
        if limit:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_alarm)
            if _outer and not _outer[2]:  # the caller's timer runs on to its own deadline
                signal.setitimer(signal.ITIMER_REAL, max(_outer[1] - time.monotonic(), 1e-3))
            _outer.clear()
        if old_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, old_int)


@contextmanager
def user_code(what: str | Callable[[], str]) -> Iterator[None]:
    """Turn `sys.exit` / SystemExit and a KeyboardInterrupt the code raised itself (not a Ctrl-C)
    in the block into a WorkloadError naming `what` (the code and its file; a callable is asked
    only then, e.g. for the module a forward was in)."""
    try:
        yield
    except SystemExit as e:
        code = "" if e.code is None else repr(e.code)
        raise WorkloadError(f"{_text(what)} called sys.exit({code}); sparsesim runs this code to build and "
                            "trace the model, so it must return instead") from None
    except KeyboardInterrupt:
        if _real_sigint or not (_armed and _tells_sigint):
            raise  # the user pressed Ctrl-C (or nothing tells it apart): interrupted, as anywhere else
        raise WorkloadError(f"{_text(what)} raised KeyboardInterrupt itself (no Ctrl-C was pressed)") from None


def _text(what: str | Callable[[], str]) -> str:
    return what if isinstance(what, str) else what()


def source_file(obj: object) -> str:
    """The file that defines `obj` (a function, class or module), or "" when there is none."""
    try:
        return inspect.getsourcefile(obj) or inspect.getfile(obj)  # type: ignore[arg-type]
    except (TypeError, OSError):
        return ""
