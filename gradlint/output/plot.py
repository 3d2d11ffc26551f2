"""Per-layer gradient charts of what the verdict reads: the trunk's gradient signal x·dL/dx
and the forward signal, in decades relative to the output, predicted (and, after a probe,
measured) in forward order, with the vanishing and exploding zones shaded at the verdict's
threshold, in the manner of the signal-propagation plots of Brock et al. 2021; for recurrent
layers a second panel shows the long-range gradient over the time steps. The chart, the bar
profile and the verdict read the same numbers, so they say the same thing. matplotlib is an
optional extra.
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
        import matplotlib  # noqa: F401  (first: an imported submodule is found without its package)
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

    The y axis is in decades relative to the output: the backward profile (T = x·dL/dx along
    the trunk) and the forward profile (the signal since the last normalization) at each
    layer, as ``Report.summary`` computed them; the shaded zones lie beyond the verdict's
    threshold. After a probe the measured profiles are drawn too, and the title gives the
    measured verdict, which decides. Recurrent layers add a panel: the long-range gradient at
    each time step relative to the last step's.

    Raises:
        PlotError: Without matplotlib, or for a report without layers.
    """
    if report.status != "ok":
        raise PlotError(f"{report.target}: nothing to plot: gradlint could not analyze it")
    layers = [lr for lr in report.layers if lr.kind in PLOTTED_KINDS
              and (lr.signal_decades is not None or lr.measured_signal_decades is not None)]
    recurrent = [r for r in report.recurrent if r.lag_grad_rms and r.lag_grad_rms[-1] > 0]
    if not layers and not recurrent:
        raise PlotError(f"{report.target}: nothing to plot: no layer with a gradient")
    figure_class = _figure_class(asked_by)
    threshold = report.summary.threshold if report.summary else 2.0
    probed = report.probe is not None
    panels = (1 if layers else 0) + (1 if recurrent else 0)
    fig = figure_class(figsize=(max(6.4, min(16.0, 0.25 * len(layers) + 4)), 4.2 * panels), dpi=110)
    axes = [a[0] for a in fig.subplots(panels, 1, squeeze=False)]
    if layers:
        _layer_panel(axes[0], report, layers, threshold, probed)
    if recurrent:
        _time_panel(axes[-1], report, recurrent, threshold, probed)
    verdict = report.summary.verdict if report.summary else "?"
    which = "measured verdict" if probed else "verdict"
    axes[0].set_title(f"{report.target}: {which} {verdict}", fontsize=10)
    fig.tight_layout()
    return fig


def _zones(ax, lo: float, hi: float, threshold: float) -> None:
    ax.axhspan(lo, -threshold, color="#d62728", alpha=0.10, lw=0,
               label=f"vanishing: {threshold:g} decades below the output or more")
    ax.axhspan(threshold, hi, color="#ff7f0e", alpha=0.10, lw=0,
               label=f"exploding: {threshold:g} decades above or more")


def _finite(values: list) -> list[float]:
    return [v if v is not None and math.isfinite(v) else math.nan for v in values]


def _layer_panel(ax, report: Report, layers: list, threshold: float, probed: bool) -> None:
    x = list(range(len(layers)))
    series = {"predicted": (_finite([lr.signal_decades for lr in layers]),
                            _finite([lr.forward_decades for lr in layers]))}
    if probed:
        series["measured"] = (_finite([lr.measured_signal_decades for lr in layers]),
                              _finite([lr.measured_forward_decades for lr in layers]))
    values = [v for back, fwd in series.values() for v in back + fwd if not math.isnan(v)]
    lo = min([*values, -threshold - 0.5]) - 0.5
    hi = max([*values, threshold + 0.5]) + 0.5
    _zones(ax, lo, hi, threshold)
    back, fwd = series["predicted"]
    ax.plot(x, back, "-o", color="#1f77b4", ms=5, lw=3.5, alpha=0.6,
            label="predicted: gradient signal x·dL/dx along the trunk")
    ax.plot(x, fwd, ":", color="#1f77b4", lw=1.2, alpha=0.8, label="predicted: forward signal since the last norm")
    if probed:
        p = report.probe
        back, fwd = series["measured"]
        ax.plot(x, back, "--s", color="#2ca02c", ms=3, lw=1.2,
                label=f"measured ({p.device}, {p.seeds} seeds): gradient signal")
        ax.plot(x, fwd, ":", color="#2ca02c", lw=1.0, label="measured: forward signal")
    ax.axhline(0.0, color="#888888", lw=0.6)
    ax.set_ylim(lo, hi)
    ax.set_xlim(-0.5, len(layers) - 0.5)
    ax.set_xlabel("layer, forward order (input left, output right)")
    ax.set_ylabel("decades relative to the output")
    step = max(1, math.ceil(len(layers) / 40))
    ax.set_xticks(x[::step])
    ax.set_xticklabels([_short(lr.module or lr.node) for lr in layers][::step], rotation=90, fontsize=6)
    ax.grid(True, which="major", axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def _time_panel(ax, report: Report, recurrent: list, threshold: float, probed: bool) -> None:
    measured = dict(report.probe.lag_grad_rms) if probed else {}
    values = [0.0]
    colors = ("#1f77b4", "#9467bd", "#8c564b", "#e377c2")
    lines = []
    for i, rec in enumerate(recurrent):
        rel = [math.log10(v / rec.lag_grad_rms[-1]) if v > 0 else math.nan for v in rec.lag_grad_rms]
        lines.append((rec, rel, measured.get(rec.module), colors[i % len(colors)]))
        values += [v for v in rel if math.isfinite(v)]
        lag = measured.get(rec.module)
        if lag and lag[-1] > 0:
            values += [math.log10(v / lag[-1]) for v in lag if v > 0]
    lo = min([*values, -threshold - 0.5]) - 0.5
    hi = max([*values, threshold + 0.5]) + 0.5
    _zones(ax, lo, hi, threshold)
    for rec, rel, lag, color in lines:
        name = rec.module or rec.node
        ax.plot(range(len(rel)), rel, "-", color=color, lw=3.0, alpha=0.6, label=f"predicted: {name} ({rec.mode})")
        if lag and lag[-1] > 0:
            ax.plot(range(len(lag)), [math.log10(v / lag[-1]) if v > 0 else math.nan for v in lag], "--",
                    color="#2ca02c", lw=1.2, label=f"measured: {name}")
    ax.axhline(0.0, color="#888888", lw=0.6)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("time step (the loss on the last one)")
    ax.set_ylabel("input gradient, decades relative to the last step")
    ax.grid(True, which="major", axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="best")


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
    ok = [r for r in reports if r.status == "ok" and (any(lr.kind in PLOTTED_KINDS for lr in r.layers) or r.recurrent)]
    dest = Path(dest)
    if dest.suffix.lower() == ".png":
        if len(ok) > 1:
            raise PlotError(f"--plot {dest}: {len(ok)} targets were analyzed; give a directory to get one chart each")
        return [plot_report(r, dest) for r in ok]
    return [plot_report(r, dest / plot_file_name(r.target)) for r in ok]
