"""Accuracy of gradlint's static predictions against real backward passes.

For every model of the corpus (``benchmarks/corpus.py``): the static prediction
(``gradlint.check``) and a measurement under the same protocol (``gradlint.probing.measure``, the
exported graph run for real in float64, 3 seeds, geometric mean over seeds). Per model:

* profile error: |log10 predicted - log10 measured| per weight matrix after removing the
  model's median offset;
* offset: that median (the absolute error; the protocol fixes the scale);
* verdicts: predicted, and measured (the same ``summarize`` on measured node statistics);
* for recurrent models, the long-range gradient decay over the sequence, both ways.

Then the real-world set, code gradlint was not written for (``benchmarks/realworld.py``: public
model files as their repositories build them, Hugging Face architectures, hand-written loops and
gates; no offset removed): pooled median and 90th percentile error, false zeros, fallbacks, and
each recurrence's decay predicted against measured. ``--no-realworld`` skips it.

Run: ``python benchmarks/accuracy.py [--seeds 3] [--only NAME ...] [--json FILE] [--no-realworld]``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from corpus import CORPUS

import gradlint
from gradlint.api import predict
from gradlint.engine.result import cause_of
from gradlint.engine.summary import summarize
from gradlint.lint.grouping import flatten
from gradlint.probing.measure import measure


def measured_summary(result, meas, threshold: float):
    g = result.graph
    numel = {n.name: math.prod(n.shape) if n.shape else 1 for n in result.propagation.nodes}
    causes = {n.name: cause_of(n) for n in g.nodes}
    rec = []
    for r in result.propagation.recurrent:
        lag = meas.lag_rms(r.module)
        if lag and lag[-1] > 0:
            rec.append((r.node, math.log10(lag[-1] / lag[0]) if lag[0] > 0 else math.inf))
    # Nodes the measurement could not see (non-float, fused away) keep the prediction's q, s.
    q = {n.name: meas.node_q.get(n.name, n.q) for n in result.propagation.nodes}
    s = {n.name: meas.node_s.get(n.name, n.s) for n in result.propagation.nodes}
    grads = {k: (sum(v) / len(v) if v else 0.0) for k, v in meas.param_ms.items()}
    return summarize(g, q, s, numel, causes, rec, grads, threshold, g.batch_size)


def run(entries, seeds: int, threshold: float):
    rows = []
    all_errs = []
    for e in entries:
        model = e.build()
        ex = e.inputs()
        t0 = time.perf_counter()
        report, result = predict(model, ex, threshold=threshold)
        t_check = time.perf_counter() - t0
        t0 = time.perf_counter()
        meas = measure(model, ex, seeds=seeds)
        t_meas = time.perf_counter() - t0
        diffs = []
        for p in report.params:
            # Weight matrices and tables: two or more dims larger than 1 (not a CLS token).
            if sum(d > 1 for d in p.shape) < 2 or not p.predicted_grad_rms:
                continue
            m = meas.param_rms(p.name)
            if not m or m <= 0:
                continue
            diffs.append((p.name, math.log10(p.predicted_grad_rms) - math.log10(m)))
        offset = statistics.median(d for _, d in diffs) if diffs else float("nan")
        errs = [abs(d - offset) for _, d in diffs]
        all_errs.extend(errs)
        ms = measured_summary(result, meas, threshold)
        rec_pred = rec_meas = None
        for r in result.propagation.recurrent:
            lag = meas.lag_rms(r.module)
            if lag and lag[0] > 0 and r.lag_grad_rms[0] > 0:
                rec_pred = math.log10(r.lag_grad_rms[0] / r.lag_grad_rms[-1])
                rec_meas = math.log10(lag[0] / lag[-1])
        worst = max(diffs, key=lambda nd: abs(nd[1] - offset))[0] if diffs else ""
        rows.append({
            "model": e.name, "family": e.family, "weights": len(diffs),
            "profile_median": statistics.median(errs) if errs else None,
            "profile_max": max(errs) if errs else None, "worst": worst, "offset": offset,
            "verdict_pred": report.summary.verdict, "verdict_meas": ms.verdict,
            "att_pred": report.summary.attenuation_decades, "att_meas": ms.attenuation_decades,
            "decay_pred": rec_pred, "decay_meas": rec_meas, "check_s": t_check, "measure_s": t_meas,
            # Every rule that fired, notes included (a finding's notes are the other rules' findings of its problem).
            "errors": sorted({f.code for f in flatten(report.findings) if f.severity == "error"}),
            "warnings": sorted({f.code for f in flatten(report.findings) if f.severity == "warning"}),
        })
        print(_row(rows[-1]), flush=True)
    return rows, all_errs


def _f(x, fmt="{:+.2f}"):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _row(r) -> str:
    agree = "yes" if r["verdict_pred"] == r["verdict_meas"] else "**no**"
    decay = f"{_f(r['decay_pred'], '{:.1f}')} / {_f(r['decay_meas'], '{:.1f}')}" if r["decay_pred"] is not None else "-"
    return (f"| {r['model']} | {r['weights']} | {_f(r['profile_median'], '{:.3f}')} | {_f(r['profile_max'], '{:.3f}')} "
            f"| {_f(r['offset'])} | {r['verdict_pred']} ({_f(r['att_pred'], '{:+.1f}')}) | {r['verdict_meas']} "
            f"({_f(r['att_meas'], '{:+.1f}')}) | {agree} | {decay} | {r['check_s']:.2f} |")


HEADER = ("| model | weights | profile median | profile max | offset | predicted verdict (att.) "
          "| measured verdict (att.) | agree | decay pred / meas | check s |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def print_findings(rows) -> None:
    """Rules that fired against the measured behaviour: recall on failing models, false alarms on healthy ones."""
    print("\n| model | measured | errors | warnings |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['verdict_meas']} | {' '.join(r['errors']) or '-'} "
              f"| {' '.join(r['warnings']) or '-'} |")
    failing = [r for r in rows if r["verdict_meas"] != "healthy"]
    healthy = [r for r in rows if r["verdict_meas"] == "healthy"]
    caught = [r for r in failing if r["errors"]]
    false_err = [r for r in healthy if r["errors"]]
    false_warn = [r for r in healthy if r["warnings"]]
    hf_err = [r for r in healthy if r["family"] == "hf" and r["errors"]]
    print(f"\nrecall on failing models (an error-level finding): {len(caught)} of {len(failing)}")
    print(f"error-level false alarms on healthy models: {len(false_err)} of {len(healthy)} "
          f"({', '.join(r['model'] for r in false_err) or 'none'}); on healthy real architectures: "
          f"{len(hf_err)} of {sum(r['family'] == 'hf' for r in healthy)}")
    print(f"healthy models with a warning: {len(false_warn)} of {len(healthy)} "
          f"({', '.join(r['model'] + ' ' + '/'.join(r['warnings']) for r in false_warn) or 'none'})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threshold", type=float, default=2.0)
    ap.add_argument("--only", nargs="*", help="model names (prefix match)")
    ap.add_argument("--json", help="write the rows to this file")
    ap.add_argument("--realworld", action=argparse.BooleanOptionalAction, default=True,
                    help="then the real-world set (benchmarks/realworld.py)")
    ap.add_argument("--realworld-seeds", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    entries = [e for e in CORPUS if not args.only or any(e.name.startswith(o) for o in args.only)]
    print(f"gradlint {gradlint.__version__}, torch {torch.__version__}, {platform.machine()}, "
          f"{torch.get_num_threads()} threads, seeds={args.seeds}\n")
    print(HEADER)
    rows, errs = run(entries, args.seeds, args.threshold)
    errs.sort()
    p50 = statistics.median(errs) if errs else float("nan")
    p90 = errs[min(len(errs) - 1, int(math.ceil(0.9 * len(errs))) - 1)] if errs else float("nan")
    worst_offset = max(rows, key=lambda r: abs(r["offset"]) if not math.isnan(r["offset"]) else -1)
    agree = sum(r["verdict_pred"] == r["verdict_meas"] for r in rows)
    print(f"\n{len(rows)} models ({sum(r['family'] == 'hf' for r in rows)} Hugging Face), {len(errs)} weight matrices")
    print(f"profile error: median {p50:.3f}, 90th percentile {p90:.3f} decades")
    print(f"offset: within {abs(worst_offset['offset']):.2f} decades on every model (worst: {worst_offset['model']})")
    print(f"verdicts agree on {agree} of {len(rows)} models")
    print_findings(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "p50": p50, "p90": p90}, indent=1))
    if args.realworld and not args.only:
        import realworld

        print("\n## Real-world models (benchmarks/realworld.py)\n")
        realworld.main(["--seeds", str(args.realworld_seeds)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
