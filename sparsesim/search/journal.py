"""Check and repair an Optuna journal file before a search reads or appends to it.

A journal is one JSON record per line, appended under Optuna's lock. A write cut short (a kill,
a full disk) leaves an incomplete last line; Optuna still reads the records before it, but the
next append lands on the same line and makes every later read fail. So before opening a
journal we take the same lock and:

* drop an incomplete or undecodable last line (a torn write: it recorded nothing), or end a
  whole last record that only lacks its newline;
* cut at a damaged line in the middle, keeping every record before it, after copying the whole
  original file aside (`<journal>.damaged-<time>`) so nothing is lost;
* count the COMPLETE trials in what is kept, so the one line we print says what survived.

Nothing here imports Optuna at module level; the lock is Optuna's own, so a writer in another
process is never cut off mid-record.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

# Optuna's journal op codes and trial-state value we count (optuna.storages.journal._storage)
_SET_TRIAL_STATE_VALUES = 6
_COMPLETE = 1


@dataclass(frozen=True)
class Repair:
    """What a repair did: the kept records, the COMPLETE trials among them, where the original went."""

    path: Path
    kept_records: int
    complete_trials: int
    bad_line: int  # 1-based line number of the first bad record
    total_lines: int
    backup: Path | None  # the untouched original, when records after the bad line were dropped

    def message(self) -> str:
        if self.backup is None:
            return (f"{self.path}: its last record was cut short (an interrupted write); removed it and kept the "
                    f"{self.kept_records} records before it ({self.complete_trials} complete trials)")
        return (f"{self.path}: line {self.bad_line} of {self.total_lines} is damaged; kept the {self.kept_records} "
                f"records before it ({self.complete_trials} complete trials) and continue from there; the original "
                f"is saved as {self.backup}")


def _record_ok(line: bytes) -> bool:
    if not line.endswith(b"\n"):
        return False
    try:
        rec = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(rec, dict) and isinstance(rec.get("op_code"), int)


def scan(data: bytes) -> tuple[int, int, int]:
    """(byte offset where the good prefix ends, index of the first bad line or -1, number of lines)."""
    lines = data.splitlines(keepends=True)
    offset = 0
    for i, line in enumerate(lines):
        if not _record_ok(line):
            return offset, i, len(lines)
        offset += len(line)
    return offset, -1, len(lines)


def _complete_trials(data: bytes) -> int:
    n = 0
    for line in data.splitlines():
        rec = json.loads(line)
        if rec.get("op_code") == _SET_TRIAL_STATE_VALUES and rec.get("state") == _COMPLETE:
            n += 1
    return n


def repair(path: Path) -> Repair | None:
    """Repair `path` in place under Optuna's journal lock; None when it is whole (or absent)."""
    from optuna.storages.journal import JournalFileSymlinkLock

    if not path.is_file() or path.stat().st_size == 0:
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        good, bad, total = scan(data)
        if bad < 0:
            return None
        lines = data.splitlines(keepends=True)
        if bad == total - 1 and _record_ok(lines[bad] + b"\n"):  # cut just before its newline
            with open(path, "ab") as f:
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
            return None
        backup = None
        if bad < total - 1:  # records after the damage: keep the whole original beside it
            backup = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            backup.write_bytes(data)
        with open(path, "r+b") as f:
            f.truncate(good)
            f.flush()
            os.fsync(f.fileno())
        kept = data[:good]
        return Repair(path, len(kept.splitlines()), _complete_trials(kept), bad + 1, total, backup)
    finally:
        lock.release()


def complete_trials_in(path: Path) -> int:
    """COMPLETE trials among the readable records of a journal (read only; 0 when unreadable)."""
    try:
        data = path.read_bytes()
    except OSError:
        return 0
    good, _, _ = scan(data)
    return _complete_trials(data[:good])
