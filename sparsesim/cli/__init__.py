"""The `sparsesim` command line. One module per verb; each verb builds one JSON-able document
and a text rendering of the same content, so `--json` always prints the same facts.

A verb module defines:
    NAME: str                      the verb
    HELP: str                      one line
    def add_arguments(parser)      its arguments (the common --json is added here)
    def run(args) -> dict          the document (plain JSON types only)
    def render(doc) -> str         the same content for a terminal
and may define
    def cache_parts(args) -> tuple | None
                                   what the document is computed from, read without importing
                                   torch (`common.document_sources`): the document is then
                                   cached on disk under those and the code version
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import warnings
from collections.abc import Sequence

from sparsesim.cli.common import add_timeout_argument, user_code_limit
from sparsesim.core import progress
from sparsesim.core.errors import SparsesimError, SparsesimWarning, interruption

VERB_MODULES = (
    "sparsesim.cli.workloads_cmd",
    "sparsesim.cli.trace_cmd",
    "sparsesim.cli.estimate_cmd",
    "sparsesim.cli.compare_cmd",
    "sparsesim.cli.simulate_cmd",
    "sparsesim.cli.report_cmd",
    "sparsesim.cli.devices_cmd",
    "sparsesim.cli.calibrate_cmd",
    "sparsesim.cli.validate_cmd",
    "sparsesim.cli.search_cmd",
    "sparsesim.cli.train_cmd",
    "sparsesim.cli.cache_cmd",
)
# set to 1 to see the traceback of an internal error instead of its one line
TRACEBACK_ENV = "SPARSESIM_TRACEBACK"
# verbs that build and trace workloads, running the user's model code: they take --timeout
USER_CODE_VERBS = ("trace", "estimate", "compare", "simulate", "report", "search", "train")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (like every other error) and exits 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(argv: Sequence[str] | None = None) -> tuple[argparse.ArgumentParser, dict]:
    """The parser with every verb; given the command line `argv`, only the verb it names gets its
    arguments (their defaults may import heavy modules; `--help` and light verbs stay fast)."""
    named = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    parser = _Parser(
        prog="sparsesim",
        description="Estimate what sparsity buys on real hardware, before you deploy.",
    )
    from sparsesim import __version__

    parser.add_argument("--version", action="version", version=f"sparsesim {__version__}")
    parser.add_argument("--no-cache", action="store_true",
                        help="neither read nor write the on-disk cache of traces and costed tables")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs = {}
    for name in VERB_MODULES:
        mod = importlib.import_module(name)
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        if named is not None and named != mod.NAME:
            continue
        mod.add_arguments(p)
        if mod.NAME in USER_CODE_VERBS:
            add_timeout_argument(p)
        p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
        shown = p.add_mutually_exclusive_group()
        shown.add_argument("--progress", dest="progress", action="store_true", default=None,
                           help="show progress on stderr even when it is not a terminal (plain lines); "
                                f"default: only on a terminal, or when {progress.ENV}=1")
        shown.add_argument("--quiet", dest="progress", action="store_false",
                           help="no progress on stderr (errors and warnings still are)")
        verbs[mod.NAME] = mod
    return parser, verbs


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # the reader went away (`sparsesim ... | head`): stop quietly, as Unix tools do; stdout is
        # pointed at /dev/null so the interpreter's final flush does not raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the closed pipe


def _main(argv: Sequence[str] | None) -> int:
    try:  # Ctrl-C while the verb modules import (pandas, torch: a second or so) is clean too
        parser, verbs = build_parser(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        print("sparsesim: interrupted", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    mod = verbs[args.verb]
    progress.configure(args.progress)
    _one_line_warnings(args.verb)
    try:
        try:
            with user_code_limit(args):
                doc = _run(mod, args)
        finally:
            progress.close_all()
    except SparsesimError as e:
        print(f"sparsesim {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sparsesim {args.verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise  # `main` ends quietly
    except MemoryError:
        print(f"sparsesim {args.verb}: error: out of memory (a smaller batch or sequence, or the meta device "
              "for large models: device=meta)", file=sys.stderr)
        return 2
    except Exception as e:  # a bug of ours: one line, the traceback on request
        if interruption(e) is not None:  # cleanup cut short by a Ctrl-C failed in its place
            print(f"sparsesim {args.verb}: interrupted", file=sys.stderr)
            return 130
        if os.environ.get(TRACEBACK_ENV, "").strip() in ("1", "true", "yes"):
            raise
        print(f"sparsesim {args.verb}: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
              f" (a bug in sparsesim; {TRACEBACK_ENV}=1 shows the traceback to report)", file=sys.stderr)
        return 70  # EX_SOFTWARE
    if args.json:
        json.dump(doc, sys.stdout, indent=1, default=_jsonable)
        sys.stdout.write("\n")
    else:
        print(mod.render(doc))
    return 0


def _run(mod, args: argparse.Namespace) -> dict:
    from sparsesim.core import diskcache

    if not args.no_cache:
        return _document(mod, args)
    before = os.environ.get(diskcache.OFF_ENV)
    diskcache.disable()
    try:
        return _document(mod, args)
    finally:
        if before is None:
            os.environ.pop(diskcache.OFF_ENV, None)
        else:
            os.environ[diskcache.OFF_ENV] = before


def _document(mod, args: argparse.Namespace) -> dict:
    """The verb's document; a verb whose module names what it is computed from (`cache_parts`)
    has it read back from the disk cache when those inputs and the code are unchanged, so a warm
    run imports none of the costing stack (torch, pandas) and prints what the cold one printed,
    its warnings included."""
    from sparsesim.core import diskcache

    parts = getattr(mod, "cache_parts", None)
    sources = parts(args) if parts is not None and diskcache.enabled() else None
    if sources is None:
        return mod.run(args)
    return diskcache.remembered("doc", diskcache.key("doc", mod.NAME, sources), lambda: mod.run(args),
                                lambda doc: isinstance(doc, dict))


def _jsonable(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def _one_line_warnings(verb: str) -> None:
    """Print a SparsesimWarning as one line on stderr (no file/line of the code that raised it);
    other warnings keep Python's own format."""
    shown = getattr(warnings.showwarning, "base", warnings.showwarning)  # installed once per process

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, SparsesimWarning):
            print(f"sparsesim {verb}: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    show.base = shown  # type: ignore[attr-defined]
    warnings.showwarning = show
