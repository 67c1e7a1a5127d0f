"""Write a report: a self-contained HTML page, the same content as Markdown, the tables as CSV.

The HTML embeds every image as a base64 PNG data URI and styles itself inline: it loads nothing
from anywhere (no scripts, fonts or stylesheets), so it opens offline and from an e-mail. The
Markdown page references the same images as files next to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pandas as pd

from sparsesim.report import analysis, build
from sparsesim.report.figures import make_figures
from sparsesim.report.html import render_html
from sparsesim.report.markdown import MD_TITLE, render_markdown


def csv_tables(data: build.ReportData) -> dict[str, pd.DataFrame]:
    tables = {
        "summary.csv": data.summary,
        "layers.csv.gz": data.per_op,  # one row per op x device x plan: large, so gzip-compressed
        "why_no_speedup.csv": analysis.why_no_speedup(data.per_op),
        "fallbacks.csv": analysis.fallbacks(data.per_op),
        "provenance.csv": analysis.provenance(data.devices),
    }
    if data.serving is not None:
        tables["serving.csv"] = data.serving
    if data.training is not None:
        tables["training.csv"] = data.training
    if data.validation is not None:
        tables["validation.csv"] = data.validation.cases
        if len(data.validation.gpu):
            tables["validation_gpu.csv"] = data.validation.gpu
    for i, sr in enumerate(data.searches):
        tables[f"search-{i}.csv"] = sr.trials
    return tables


def write_report(data: build.ReportData, out: Path, progress: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Write index.html, report.md, images/ and *.csv under `out`; return what was written."""
    out = Path(out)
    clear_previous(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    figs = make_figures(data, progress)
    verdicts = analysis.verdicts(data.summary, data.per_op, data.device_names, data.plans, data.searches)
    tables = csv_tables(data)
    written = []
    for name, df in tables.items():
        # mtime 0: regenerating the same numbers gives the same bytes
        df.to_csv(out / name, index=False, compression={"method": "gzip", "mtime": 0} if name.endswith(".gz") else None)
        written.append(name)
    for group in figs.values():
        for fig in group.values():
            (out / "images" / fig.name).write_bytes(fig.data)
            written.append(f"images/{fig.name}")
    (out / "index.html").write_text(render_html(data, figs, verdicts, tables), encoding="utf-8")
    (out / "report.md").write_text(render_markdown(data, figs, verdicts, tables), encoding="utf-8")
    written += ["index.html", "report.md"]
    return {"out": str(out), "files": sorted(written), "verdicts": verdicts}


def clear_previous(out: Path) -> None:
    """Remove the tables and images of an earlier report in `out` (and only of a report: the
    directory must hold a report.md this module wrote), so no stale table outlives a rerun."""
    md = out / "report.md"
    if not md.is_file() or not md.read_text(encoding="utf-8", errors="replace").startswith(MD_TITLE):
        return
    for p in [*out.glob("*.csv"), *out.glob("*.csv.gz"), *(out / "images").glob("*.png")]:
        p.unlink()
