"""Per-layer gradient charts: predicted (and, after a probe, measured) output-gradient RMS on a
log scale in forward order, with the vanishing and exploding zones shaded, in the manner of
the signal-propagation plots of Brock et al. 2021. matplotlib is an optional extra.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradlint.base.errors import GradlintError
from gradlint.base.kinds import PROFILE_KINDS as PLOTTED_KINDS

if TYPE_CHECKING:
    from gradlint.base.report import Report


class PlotError(GradlintError):
    """A chart could not be written (matplotlib missing, an unwritable path)."""


def _figure_class(asked_by: str) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError(f"{asked_by} needs matplotlib, which is not installed",
                        hint="pip install 'torch-gradlint[plot]' (or pip install matplotlib)") from None
    # A Figure of its own, not pyplot's: no backend, no display, no global figure list, so a
    # notebook shows the returned figure once and a script opens no window.
    return Figure


def plot_report(report: Report, path: str | os.PathLike) -> Path:
    """Write the chart of one report (``figure``) as a PNG and return its path.

    Raises:
        PlotError: Without matplotlib, for a report without layers, or when the file cannot
            be written.
    """
    fig = figure(report, asked_by="--plot")
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png")
    except OSError as e:
        raise PlotError(f"cannot write {out}: {e.strerror or e}", path=str(out)) from None
    return out


def figure(report: Report, asked_by: str = "the gradient chart") -> Any:
    """The chart of one report, as a matplotlib ``Figure`` (what ``Report.plot()`` returns).

    The y axis is the RMS of the gradient at each layer's output, in forward order; the shaded
    zones lie more than ``threshold`` decades below (vanishing) or above (exploding) the last
    layer's gradient, the rules' reference point. After a probe the measured values are drawn too.

    Raises:
        PlotError: Without matplotlib, or for a report without layers.
    """
    if report.status != "ok":
        raise PlotError(f"{report.target}: nothing to plot: gradlint could not analyze it")
    layers = [lr for lr in report.layers if lr.kind in PLOTTED_KINDS and lr.grad_rms and lr.grad_rms > 0]
    if not layers:
        raise PlotError(f"{report.target}: nothing to plot: no layer with a gradient")
    figure_class = _figure_class(asked_by)
    threshold = report.summary.threshold if report.summary else 2.0
    x = list(range(len(layers)))
    predicted = [lr.grad_rms for lr in layers]
    measured = [lr.measured_grad_rms if lr.measured_grad_rms and lr.measured_grad_rms > 0 else math.nan
                for lr in layers]
    probed = report.probe is not None and any(math.isfinite(v) for v in measured)
    ref = predicted[-1]
    values = predicted + [v for v in measured if math.isfinite(v)]
    lo = min(min(values), ref * 10 ** -(threshold + 0.5))
    hi = max(max(values), ref * 10 ** (threshold + 0.5))

    fig = figure_class(figsize=(max(6.4, min(16.0, 0.25 * len(layers) + 4)), 4.2), dpi=110)
    ax = fig.subplots()
    ax.set_yscale("log")
    ax.axhspan(lo / 3, ref * 10 ** -threshold, color="#d62728", alpha=0.10, lw=0,
               label=f"vanishing: below $10^{{-{threshold:g}}}$ × the last layer's")
    ax.axhspan(ref * 10 ** threshold, hi * 3, color="#ff7f0e", alpha=0.10, lw=0,
               label=f"exploding: above $10^{{{threshold:g}}}$ × the last layer's")
    ax.plot(x, predicted, "-o", color="#1f77b4", ms=5, lw=3.5, alpha=0.6, label="predicted (gradlint check)")
    if probed:
        p = report.probe
        ax.plot(x, measured, "--s", color="#2ca02c", ms=3, lw=1.2,
                label=f"measured ({p.device}, {p.seeds} seeds)")
    ax.set_ylim(lo / 3, hi * 3)
    ax.set_xlim(-0.5, len(layers) - 0.5)
    ax.set_xlabel("layer, forward order (input left, output right)")
    ax.set_ylabel("RMS of the gradient at the layer's output")
    verdict = report.summary.verdict if report.summary else "?"
    ax.set_title(f"{report.target}: {verdict}", fontsize=10)
    step = max(1, math.ceil(len(layers) / 40))
    ax.set_xticks(x[::step])
    ax.set_xticklabels([_short(lr.module or lr.node) for lr in layers][::step], rotation=90, fontsize=6)
    ax.grid(True, which="major", axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _short(name: str, width: int = 24) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def plot_file_name(target: str) -> str:
    """``models/net.py::Net`` -> ``models_net.py__Net.png``: one flat, readable name per target."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", target.replace("::", "__")).strip("_") + ".png"


def write_plots(reports: Iterable[Report], dest: str | os.PathLike) -> list[Path]:
    """Charts for ``reports``: into ``dest`` when it names a ``.png`` file and there is one
    analyzed report, else one file per target in the directory ``dest``.

    Raises:
        PlotError: Without matplotlib, or when a file cannot be written.
    """
    ok = [r for r in reports if r.status == "ok" and any(lr.kind in PLOTTED_KINDS for lr in r.layers)]
    dest = Path(dest)
    if dest.suffix.lower() == ".png":
        if len(ok) > 1:
            raise PlotError(f"--plot {dest}: {len(ok)} targets were analyzed; give a directory to get one chart each")
        return [plot_report(r, dest) for r in ok]
    return [plot_report(r, dest / plot_file_name(r.target)) for r in ok]
