"""Write a report: a self-contained HTML page, the same content as Markdown, the tables as CSV.

The HTML embeds every image as a base64 PNG data URI and styles itself inline: it loads nothing
from anywhere (no scripts, fonts or stylesheets), so it opens offline and from an e-mail. The
Markdown page references the same images as files next to it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

import sparsesim.report.analysis as analysis
import sparsesim.report.build as build
from sparsesim.report.figures import make_figures
from sparsesim.report.html import render_html
from sparsesim.report.markdown import MD_TITLE, render_markdown
from sparsesim.report.outdir import ReportWriter
from sparsesim.run.results import reason_text


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
    """Write index.html, report.md, images/ and *.csv under `out` (atomically, through the
    manifest of `outdir`: nothing this report did not write is overwritten or deleted)."""
    writer = ReportWriter(Path(out), MD_TITLE)
    figs = make_figures(data, progress)
    verdicts = analysis.verdicts(data.summary, data.per_op, data.device_names, data.plans, data.searches)
    tables = csv_tables(data)
    for name, df in tables.items():
        with writer.path(name) as tmp:
            # mtime 0: regenerating the same numbers gives the same bytes
            csv_safe(df).to_csv(tmp, index=False,
                                compression={"method": "gzip", "mtime": 0} if name.endswith(".gz") else None)
    for group in figs.values():
        for fig in group.values():
            writer.write_bytes(f"images/{fig.name}", fig.data)
    writer.write_text("index.html", render_html(data, figs, verdicts, tables))
    writer.write_text("report.md", render_markdown(data, figs, verdicts, tables))
    return {"out": str(out), "files": writer.finish(), "verdicts": verdicts}


# A spreadsheet runs a cell that starts with one of these as a formula (=HYPERLINK(...) from a
# model or device name); OWASP's advice: prefix such text cells with a quote.
_FORMULA_LEAD = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with text cells that a spreadsheet would run as a formula prefixed by a quote
    (numbers, and text that is a plain number such as "-1.5", are left alone)."""
    cols = [c for c in df.columns if not (pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c])
                                         or pd.api.types.is_datetime64_any_dtype(df[c]))]
    if not cols:
        return df
    out = df.copy()
    seen: dict[Any, Any] = {}  # a table repeats its names and reasons: each distinct cell once

    def cell(v: Any) -> Any:
        k = (type(v), v)  # 1, 1.0 and True are equal keys but not the same cell
        try:
            return seen[k]
        except (KeyError, TypeError):  # new, or unhashable
            out_v = _csv_cell(reason_text(v) if isinstance(v, tuple) else v)
            try:
                seen[k] = out_v
            except TypeError:
                pass
            return out_v

    for c in cols:
        out[c] = out[c].astype(object).map(cell)
    return out


def _csv_cell(v: Any) -> Any:
    if not isinstance(v, str) or not v.startswith(_FORMULA_LEAD):
        return v
    try:
        float(v)
        return v  # "-1.5" is data, not a formula
    except ValueError:
        return "'" + v
