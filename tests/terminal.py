"""How a test starts a CLI process that must take Ctrl-C as it would from a terminal."""

from __future__ import annotations

import signal


def as_from_a_terminal() -> None:
    """Popen preexec_fn: the child takes Ctrl-C as a program started from a terminal does, even
    when this test run was started with SIGINT ignored (a shell's background job): every child
    would inherit the ignore, and Python keeps an inherited ignore rather than raising
    KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
