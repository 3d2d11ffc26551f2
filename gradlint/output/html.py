"""A report as HTML, for Jupyter (``Report._repr_html_``): the verdict, the findings with their
fixes, and the per-layer gradient chart inline as SVG (when matplotlib is installed)."""

from __future__ import annotations

import html
import io
import math
from typing import TYPE_CHECKING

from gradlint.base.paths import shown_path

if TYPE_CHECKING:
    from gradlint.base.report import Report

_TONE = {"healthy": "#2ca02c", "error": "#d62728", "warning": "#b8860b", "info": "#1f77b4"}


def report_html(report: Report, chart: bool = True) -> str:
    """The report as one self-contained ``<div>``: no script, no external file."""
    e = html.escape
    parts = ['<div class="gradlint-report" style="font-family: sans-serif; font-size: 13px">']
    if report.status != "ok":
        parts.append(f'<p><b>{e(report.target)}</b>: <span style="color:{_TONE["error"]}">could not analyze</span>'
                     f"</p><pre>{e(report.error or '')}</pre>")
        if report.traceback:
            parts.append(f"<details><summary>traceback</summary><pre>{e(report.traceback)}</pre></details>")
        return "".join(parts) + "</div>"
    s = report.summary
    verdict = s.verdict if s else "?"
    att = s.attenuation_decades if s else math.nan
    att_text = f"{att:+.1f}" if math.isfinite(att) else ("+inf" if att > 0 else "-inf" if att < 0 else "n/a")
    tone = _TONE["healthy"] if verdict == "healthy" else _TONE["error"]
    parts.append(f'<p><b>{e(report.target)}</b>: <b style="color:{tone}">{e(verdict)}</b> '
                 f"(attenuation {att_text} decades, analysis: {e(report.analysis or '?')})<br>"
                 f"inputs: {e(report.inputs)}</p>")
    if report.findings:
        rows = []
        for f in report.findings:
            where = f"{shown_path(f.path)}:{f.line or 1}" if f.path else ""
            fix = f"<br><i>fix:</i> <code>{e(f.fix)}</code>" if f.fix else ""
            fix += "".join(f"<br><i>note:</i> <b>{e(n.code)}</b> {e(n.role)}"
                           f"{' at ' + e(shown_path(n.path)) + ':' + str(n.line) if n.path and n.line else ''}: "
                           f"{e(n.message if n.role != 'fix' or not n.fix else n.fix)}" for n in f.notes)
            rows.append(f'<tr><td><b>{e(f.code)}</b></td><td style="color:{_TONE.get(f.severity, "#000")}">'
                        f"{e(f.severity)}</td><td><code>{e(where)}</code>"
                        f"{'<br>' + e(f.module) if f.module else ''}</td>"
                        f'<td style="text-align:left">{e(f.message)}{fix}</td></tr>')
        parts.append('<table><thead><tr><th>rule</th><th>severity</th><th>where</th><th style="text-align:left">'
                     "finding</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    else:
        parts.append("<p>No findings.</p>")
    if report.suppressed:
        parts.append(f"<p>{len(report.suppressed)} finding(s) silenced by inline comments: "
                     f"{e(', '.join(sorted({f.code for f in report.suppressed})))}</p>")
    if chart:
        parts.append(_chart(report))
    return "".join(parts) + "</div>"


def _chart(report: Report) -> str:
    from gradlint.output.plot import PlotError, figure

    try:
        fig = figure(report)
    except PlotError as err:
        hint = f" ({err.hint})" if err.hint else ""
        return f"<p><i>no chart: {html.escape(err.message + hint)}</i></p>"
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]  # inline: the XML prolog and doctype are not HTML
