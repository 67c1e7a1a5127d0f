"""Progress of the long steps (building and tracing a model, sparsifying, costing, a report, search
trials, training sweeps) on stderr, so a command that works for a minute is not silent.

One switch for the whole process, so every step behaves alike:
- on when stderr is a terminal (a redrawn bar), or when asked: `--progress` or
  SPARSESIM_PROGRESS=1 (then plain lines when stderr is not a terminal: a log or CI reads them);
- off under `--quiet` or SPARSESIM_PROGRESS=0, and otherwise: pipes, files, tests, and in
  worker processes (the parent's bar counts their trials).
Nothing is ever written to stdout, so `--json` and `| head` see only the result; a reader that
goes away on stderr ends the display quietly (never a BrokenPipeError traceback).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Sized
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from tqdm import tqdm

T = TypeVar("T")

ENV = "SPARSESIM_PROGRESS"
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
# a bar on a terminal appears only once its step has run this long (fast steps stay silent)
TERMINAL_DELAY_S = 0.5
# plain lines (stderr not a terminal): one line per this many seconds at most, per bar
LINE_INTERVAL_S = 10.0

# the terminal escapes tqdm writes to move between nested bars (cursor up, erase line)
_CURSOR_MOVES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

_forced: bool | None = None  # set by the CLI from --progress / --quiet; None: the environment decides


def configure(enabled: bool | None) -> None:
    """True: show progress (--progress); False: never (--quiet); None: SPARSESIM_PROGRESS, else
    whether stderr is a terminal."""
    global _forced
    _forced = enabled


def enabled() -> bool:
    # a search worker (which has multiprocessing loaded): the parent shows the trials
    mp = sys.modules.get("multiprocessing")
    if mp is not None and mp.parent_process() is not None:
        return False
    if _forced is not None:
        return _forced
    env = os.environ.get(ENV, "").strip().lower()
    if env in _ON:
        return True
    if env in _OFF:
        return False
    return _terminal()


def _terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


class _Stderr:
    """What tqdm writes to: sys.stderr as it is at each write (tests swap it), as plain lines when
    it is not a terminal; a closed reader stops the display instead of raising."""

    def __init__(self, lines: bool) -> None:
        self.lines = lines
        self.dead = False

    def write(self, s: str) -> int:
        if self.dead or not s:
            return 0
        if self.lines:  # tqdm redraws with '\r' (and moves between nested bars); a log wants one line per state
            s = _CURSOR_MOVES.sub("", s)
            s = "".join(part.strip() + "\n" for part in s.replace("\r", "\n").split("\n") if part.strip())
        try:
            if s:
                sys.stderr.write(s)
        except (BrokenPipeError, ValueError, OSError):
            self._gone()
        return len(s)

    def flush(self) -> None:
        if self.dead:
            return
        try:
            sys.stderr.flush()
        except (BrokenPipeError, ValueError, OSError):
            self._gone()

    def _gone(self) -> None:
        """stderr's reader went away (`2>&1 | head`): write no more, and point fd 2 at /dev/null so
        the interpreter's last flush at exit does not raise again."""
        self.dead = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stderr.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass


def _options(desc: str, unit: str) -> dict[str, Any]:
    lines = not _terminal()
    return {
        "desc": desc, "unit": unit, "file": _Stderr(lines), "dynamic_ncols": not lines,
        "leave": lines,  # a terminal's bar disappears when done; a log keeps the final line
        "mininterval": LINE_INTERVAL_S if lines else 0.1, "delay": 0.0 if lines else TERMINAL_DELAY_S,
        "ascii": True if lines else None, **({"ncols": 100} if lines else {}),
    }


class HiddenBar:
    """A bar that shows nothing (progress is off): the calls a step makes on a bar, as no-ops,
    so a quiet or piped run never imports tqdm."""

    n = 0

    def update(self, n: float = 1) -> None:
        pass

    def set_description_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> HiddenBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def bar(desc: str, total: float | None = None, *, unit: str = "it") -> tqdm | HiddenBar:
    """A progress bar (a context manager; `.update(n)`, `.set_description_str(s)`) for one step.
    `total` None: a count with its rate, for loops of unknown length. Disabled: a no-op bar."""
    if not enabled():
        return HiddenBar()
    from tqdm import tqdm

    return tqdm(total=total, **_options(desc, unit))


def each(items: Iterable[T], desc: str, *, unit: str = "it", total: int | None = None) -> Iterable[T]:
    """`items`, counted on a bar while a loop goes through them (the loop itself is unchanged)."""
    if not enabled():
        return items
    from tqdm import tqdm

    n = total if total is not None else len(items) if isinstance(items, Sized) else None
    return tqdm(items, total=n, **_options(desc, unit))


def stage(desc: str) -> tqdm | HiddenBar:
    """A step with no count (building a model, one long call): its name while it runs, shown at
    once (a bar with a delay would only appear at its first update)."""
    if not enabled():
        return HiddenBar()
    from tqdm import tqdm

    lines = not _terminal()
    return tqdm(total=None, desc=desc, file=_Stderr(lines), leave=False, bar_format="{desc} ...",
                dynamic_ncols=not lines, mininterval=LINE_INTERVAL_S if lines else 0.1)


def note(text: str) -> None:
    """One line about a long step that has no bar (calibrate's and validate's timing stages)."""
    if enabled():
        _Stderr(lines=True).write(text)


def close_all() -> None:
    """Close every bar still open (a step that raised leaves its bar open until collected): the
    CLI calls this before it prints the result or an error, so neither lands on a bar's line."""
    tqdm = sys.modules.get("tqdm")  # no bar was ever drawn unless tqdm was imported
    if tqdm is None:
        return
    for shown in list(getattr(tqdm.tqdm, "_instances", ())):
        shown.close()
