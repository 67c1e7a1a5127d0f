"""Errors a user can act on. The CLI prints them as one line (no traceback) and exits 2."""


class SparsesimError(Exception):
    """Base class: the message names the file, field or layer at fault."""


class DeviceFileError(SparsesimError):
    """A device file is malformed: unknown/duplicate/missing key, wrong unit, bad value."""


class MaskError(SparsesimError):
    """A mask has the wrong shape or does not conform to its pattern."""


class PlanError(SparsesimError):
    """A plan is malformed or a rule matches no layer."""


class TraceError(SparsesimError):
    """A model could not be traced (its forward raised, or inputs were wrong)."""


class WorkloadError(SparsesimError):
    """A workload spec names no recipe, file, op or factory that exists."""


class UnsupportedError(SparsesimError):
    """A device cannot run a pattern at all (not even as a fallback)."""


class SearchError(SparsesimError):
    """A search is misconfigured (impossible target, evaluate that raises or returns NaN)."""


class TrainError(SparsesimError):
    """A training-cost request is malformed: unknown method, distribution, optimizer or setting."""


class SparsesimWarning(UserWarning):
    """Something the user should know that does not stop the run (a repaired journal, an implausible
    device number). The CLI prints it as one line on stderr."""


def interruption(exc: BaseException | None) -> BaseException | None:
    """The Ctrl-C (KeyboardInterrupt) or stop (SystemExit) that `exc` is or was raised while
    handling, if any: cleanup cut short by the signal (Optuna's journal lock release, which then
    cannot remove a lock it never took) raises, say, FileNotFoundError in the interrupt's place."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
