"""The report's output directory: write atomically, delete only what an earlier report wrote.

A report directory holds a manifest (`.sparsesim-report.json`: every file the report wrote, with
its sha256). A rerun into it

* refuses a directory that has content but is not a report (no manifest, no report.md of ours),
  so `--out ~/Documents` never overwrites anyone's index.html;
* writes each file to a temporary name and renames it over the old one, so a kill leaves every
  file old or new, never half written;
* after every file is written, removes the files the previous manifest lists that this run did
  not rewrite, and only when their content is still what the report wrote (a file the user
  edited, or added, is never deleted); then writes the new manifest, last. A name is listed
  (without a hash) before its file is first written, so a run cut short leaves nothing unlisted.

A Ctrl-C part-way therefore deletes nothing: the previous report's files stay until the new
report is complete.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sparsesim.core import atomic
from sparsesim.report.inputs import ReportError

MANIFEST = ".sparsesim-report.json"
_FORMAT = "sparsesim-report-manifest"


def previous_files(out: Path, md_title: str) -> dict[str, str | None]:
    """What an earlier report in `out` wrote ({relative path: sha256}); {} for a new or empty
    directory. ReportError when `out` has content that is not a report."""
    if not out.exists():
        return {}
    if not out.is_dir():
        raise ReportError(f"--out {out}: not a directory")
    manifest = out / MANIFEST
    if manifest.is_file():
        try:
            doc = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ReportError(f"{manifest}: unreadable report manifest ({e}); remove it to treat {out} as a "
                              "new directory (nothing will be deleted)") from None
        files = doc.get("files") if isinstance(doc, dict) and doc.get("format") == _FORMAT else None
        if not isinstance(files, dict):
            raise ReportError(f"{manifest}: not a sparsesim report manifest")
        return {str(k): (v if isinstance(v, str) else None) for k, v in files.items()}
    md = out / "report.md"
    if md.is_file() and md.read_text(encoding="utf-8", errors="replace").startswith(md_title):
        return {}  # a report written before manifests: overwrite our names, delete nothing
    if any(out.iterdir()):
        raise ReportError(f"--out {out}: the directory holds files that are not a sparsesim report; choose a new "
                          "or empty directory (a report never overwrites files it did not write)")
    return {}


class ReportWriter:
    """Writes the files of one report under `out` atomically and records them in the manifest."""

    def __init__(self, out: Path, md_title: str) -> None:
        self.out = Path(out)
        self.previous = previous_files(self.out, md_title)
        self.written: dict[str, str] = {}
        self.out.mkdir(parents=True, exist_ok=True)
        # listed before written: an interrupted run leaves a directory the next run knows as a
        # report, and files it can remove (None: written by a run that did not finish)
        self.listed: dict[str, str | None] = dict(self.previous)
        self._save(self.listed)

    @contextmanager
    def path(self, name: str) -> Iterator[Path]:
        """A temporary path to write `name` to; it replaces `out/name` when the block succeeds."""
        if name not in self.listed:
            self.listed[name] = None
            self._save(self.listed)
        target = self.out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic.replacing(target) as tmp:
            yield tmp
        self.written[name] = atomic.sha256(target)

    def write_bytes(self, name: str, data: bytes) -> None:
        with self.path(name) as tmp:
            tmp.write_bytes(data)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def finish(self) -> list[str]:
        """Remove the previous report's files this one did not rewrite (unless the user changed
        them), then write the manifest; returns the names written."""
        for name, digest in self.previous.items():
            if name in self.written:
                continue
            f = self.out / name
            if f.is_file() and _inside(self.out, f) and (digest is None or atomic.sha256(f) == digest):
                f.unlink()
        self._save(self.written)
        return sorted(self.written)

    def _save(self, files: dict[str, str] | dict[str, str | None]) -> None:
        doc = {"format": _FORMAT, "version": 1, "files": dict(sorted(files.items()))}
        atomic.write_text(self.out / MANIFEST, json.dumps(doc, indent=1))


def _inside(root: Path, f: Path) -> bool:
    """A manifest names files under the report directory only (never ../ or an absolute path)."""
    try:
        f.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True
