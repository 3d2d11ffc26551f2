"""Accuracy on code gradlint was not written for: predictions against real backward passes of
public model files and Hugging Face architectures, as their repositories build them.

For every model: the static prediction (``gradlint.check(model, inputs)``) and the truth, a
real backward pass of the model itself (a float64 copy in train mode; the inputs drawn afresh
per seed by the manifest's own expression; loss sum(g * y) over every float output with
g ~ N(0, 1); per parameter, the geometric mean over seeds of the gradient's RMS; Python's
``random`` seeded alike before capture and before every measured forward, so a path picked by
``random.random()``, seq2seq's teacher forcing, is the analyzed one in both). Every seed
is a first step of the model as built: its buffers are put back before each seed, because a
train-mode forward may update them. Spectral norm's power iteration does (SAGAN: each forward
refines u, the estimated σ grows and the next seed's activations shrink, 0.4 decades at the
last block by the second seed, while the prediction and the first seed take the one iteration
from the u it was built with); so do VQ-VAE's codebook averages. No gradlint
graph is involved in the measurement, so a capture that misses part of the computation shows.

Per weight matrix (two or more dims larger than 1): |log10 predicted - log10 measured|, with
no offset removed. A *false zero* is a parameter predicted to get exactly no gradient (or no
prediction at all) while the backward pass gives it one. A *fallback* is a model analyzed by
the fx or module-order path instead of a captured graph. A weight with no measured gradient on
some seed (none reaches it, or that seed's random path skipped it) has no geometric mean: it is
counted as unmeasured, neither compared nor a false zero.

Paths chosen by random numbers (CaiT's layer dropout, each layer skipped when a uniform draw is
under 0.05): gradlint predicts the path where every random choice takes its more likely outcome,
every layer kept (docs/design.md §2.1). The measurement is left as the model's own training step,
its random choices drawn per seed; a layer a seed skips is unmeasured (above), so what is compared
is each layer's gradient on steps that run it, the prediction's own condition (the mean over all
steps would be (1 - p) of it in E[g²], 0.011 decades lower at p = 0.05). A measured step may still
skip other layers, which the prediction does not; at seeds 1000 and 1001 CaiT's steps kept every
layer, so both took the same path.

Per recurrence (nn.RNN / LSTM / GRU, a loop over time steps, a scan; ``report.recurrent``):
the decay of the long-range gradient, log10 of the RMS gradient at the first step's input over
the last step's, under a loss on the last step only; predicted, and measured as the probe
measures it (``probing.measure`` with ``capture.loops.lag_targets``: the model's exported
program run for real, float64, the gradient at each step's input). A recurrence the analysis
did not find is listed with no prediction.

Models: benchmarks/ecosystem/manifest.toml (the ``build`` and ``inputs`` expressions), and the
``EXTRA`` list below.

Run: ``python benchmarks/realworld.py [--seeds 2] [--only NAME ...] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
import torch.nn as nn

import gradlint
from gradlint.api import as_example_inputs, predict

HERE = Path(__file__).resolve().parent
ECOSYSTEM = HERE / "ecosystem"


@dataclass(frozen=True)
class Model:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], tuple | dict]  # positional inputs, or keyword inputs by name
    family: str


def _manifest_models() -> list[Model]:
    from gradlint.load import import_file

    out = []
    for entry in tomllib.loads((ECOSYSTEM / "manifest.toml").read_text())["model"]:
        file = ECOSYSTEM / entry["file"]

        def namespace(file=file) -> dict[str, Any]:
            # As gradlint imports it: the file's folder and its repository on sys.path.
            module = import_file(file)
            return {"torch": torch, **vars(module)}

        out.append(Model(entry["file"], (lambda ns=namespace, e=entry: eval(e["build"], ns())),
                         (lambda ns=namespace, e=entry: eval(e["inputs"], ns())), entry["family"]))
    return out


def _hf(name: str, config: Callable[[], Any], cls: str, inputs: Callable[[], tuple]) -> Model:
    def build():
        import transformers

        return getattr(transformers, cls)(config())
    return Model(name, build, inputs, "hf")


class Highway(nn.Module):
    """A 20-layer highway network as the paper writes it: y = H(x)·T(x) + x·(1 - T(x)), a sigmoid
    transform gate T whose bias starts negative (Srivastava et al. 2015) so each layer carries."""

    def __init__(self, width: int = 128, depth: int = 20, gate_bias: float = -2.0):
        super().__init__()
        self.inp = nn.Linear(64, width)
        self.h = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.t = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        for gate in self.t:
            nn.init.constant_(gate.bias, gate_bias)
        self.out = nn.Linear(width, 10)

    def forward(self, x):
        x = self.inp(x)
        for h, t in zip(self.h, self.t):
            g = torch.sigmoid(t(x))
            x = torch.relu(h(x)) * g + x * (1 - g)
        return self.out(x)


class LoopRNN(nn.Module):
    """An Elman RNN written as a loop over time with nn.RNNCell, the last step classified."""

    def __init__(self, inp: int = 32, hidden: int = 128, steps: int = 64):
        super().__init__()
        self.cell = nn.RNNCell(inp, hidden)
        self.head = nn.Linear(hidden, 10)
        self.hidden = hidden

    def forward(self, x):  # x: (batch, time, features)
        h = torch.zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
        return self.head(h)


class HandRNN(nn.Module):
    """A tanh RNN cell written by hand, outputs collected per step into a preallocated tensor."""

    def __init__(self, inp: int = 32, hidden: int = 128):
        super().__init__()
        self.wx = nn.Linear(inp, hidden)
        self.wh = nn.Linear(hidden, hidden, bias=False)
        self.hidden = hidden

    def forward(self, x):
        outputs = torch.zeros(x.shape[0], x.shape[1], self.hidden)
        h = torch.zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            h = torch.tanh(self.wx(x[:, t]) + self.wh(h))
            outputs[:, t] = h
        return outputs


class ModuleRNN(nn.Module):
    """nn.RNN over the same sizes as LoopRNN: the reference the loops' decay is compared with."""

    def __init__(self, inp: int = 32, hidden: int = 128):
        super().__init__()
        self.rnn = nn.RNN(inp, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


class CellLoop(nn.Module):
    """nn.GRUCell / LSTMCell called per step, the state made where the input lives."""

    def __init__(self, kind: str, inp: int = 32, hidden: int = 128):
        super().__init__()
        self.kind, self.hidden = kind, hidden
        self.cell = (nn.GRUCell if kind == "gru" else nn.LSTMCell)(inp, hidden)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x):
        h = c = x.new_zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            if self.kind == "lstm":
                h, c = self.cell(x[:, t], (h, c))
            else:
                h = self.cell(x[:, t], h)
        return self.head(h)


class SelectiveScan(nn.Module):
    """Mamba's selective scan as mamba-minimal writes it, in a loop: h = exp(Δ·A)·h + Δ·B·x,
    A = −exp(A_log) (S4D-real init), Δ = softplus(dt_proj(x)); y = C·h + D·x per step."""

    def __init__(self, d: int = 32, n: int = 8):
        super().__init__()
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d, 1))
        self.dt_proj = nn.Linear(d, d)
        self.x_proj = nn.Linear(d, 2 * n, bias=False)
        self.D = nn.Parameter(torch.ones(d))
        self.n = n

    def forward(self, x):  # x: (batch, time, d)
        A = -torch.exp(self.A_log)
        delta = nn.functional.softplus(self.dt_proj(x))
        B, C = self.x_proj(x).split(self.n, dim=-1)
        dA = torch.exp(delta.unsqueeze(-1) * A)
        dBx = delta.unsqueeze(-1) * B.unsqueeze(2) * x.unsqueeze(-1)
        h = x.new_zeros(x.shape[0], x.shape[2], self.n)
        ys = []
        for t in range(x.shape[1]):
            h = dA[:, t] * h + dBx[:, t]
            ys.append((h @ C[:, t].unsqueeze(-1)).squeeze(-1))
        return torch.stack(ys, dim=1) + x * self.D


def _extra() -> list[Model]:
    import transformers as T

    toks = lambda v, b=2, t=32: (lambda: (torch.randint(0, v, (b, t)),))
    return [
        _hf("hf-whisper", lambda: T.WhisperConfig(vocab_size=1000, d_model=64, encoder_layers=2, decoder_layers=2,
                                                   encoder_attention_heads=4, decoder_attention_heads=4,
                                                   encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16,
                                                   max_source_positions=50, max_target_positions=32, pad_token_id=0,
                                                   bos_token_id=1, eos_token_id=2, decoder_start_token_id=1),
            "WhisperModel", lambda: {"input_features": torch.randn(2, 16, 100),
                                     "decoder_input_ids": torch.randint(0, 1000, (2, 8))}),
        _hf("hf-mamba", lambda: T.MambaConfig(vocab_size=1000, hidden_size=64, state_size=8, num_hidden_layers=2),
            "MambaModel", toks(1000)),
        _hf("hf-rwkv", lambda: T.RwkvConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2,
                                            context_length=64, attention_hidden_size=64, intermediate_size=128),
            "RwkvModel", toks(1000)),
        Model("highway-20", Highway, lambda: (torch.randn(32, 64),), "gate"),
        Model("loop-rnncell-64", LoopRNN, lambda: (torch.randn(8, 64, 32),), "rnn"),
        Model("hand-rnn-64", HandRNN, lambda: (torch.randn(8, 64, 32),), "rnn"),
        Model("nn-rnn-64", ModuleRNN, lambda: (torch.randn(8, 64, 32),), "rnn"),
        Model("loop-grucell-64", lambda: CellLoop("gru"), lambda: (torch.randn(8, 64, 32),), "rnn"),
        Model("loop-lstmcell-64", lambda: CellLoop("lstm"), lambda: (torch.randn(8, 64, 32),), "rnn"),
        Model("loop-scan-32", SelectiveScan, lambda: (torch.randn(4, 32, 32),), "ssm"),
    ]


def _outputs(value: Any) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(value)
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad]


def measure(rebuild: Callable[[], nn.Module], inputs: Callable[[], tuple], seeds: int) -> tuple[dict[str, float], str]:
    """Per parameter, the geometric mean over seeds of the gradient RMS of a real backward pass
    of the model itself (float64 when the model runs in it), and the dtype used. The model is
    built again with the same seed rather than copied: some modules (legacy weight_norm) refuse
    deepcopy."""
    for dtype in (torch.float64, torch.float32):
        real = rebuild().to(dtype).train()
        logs: dict[str, list[float]] = {n: [] for n, p in real.named_parameters() if p.requires_grad}
        built = {n: b.detach().clone() for n, b in real.named_buffers()}
        try:
            for seed in range(seeds):
                # Every seed measures the model as built: a train-mode forward may update its
                # buffers (spectral norm's power iteration, VQ-VAE's codebook averages).
                with torch.no_grad():
                    for n, b in real.named_buffers():
                        b.copy_(built[n])
                torch.manual_seed(1000 + seed)
                drawn = inputs()

                def cast(a: Any, dtype: torch.dtype = dtype) -> Any:
                    return a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a

                real.zero_grad(set_to_none=True)
                _same_python_draws()
                if isinstance(drawn, dict):
                    ys = _outputs(real(**{k: cast(v) for k, v in drawn.items()}))
                else:
                    ys = _outputs(real(*(cast(a) for a in drawn)))
                loss = sum((torch.randn_like(y) * y).sum() for y in ys)
                loss.backward()
                for n, p in real.named_parameters():
                    if n in logs:
                        g = p.grad
                        ms = float(g.double().pow(2).mean()) if g is not None else 0.0
                        logs[n].append(0.5 * math.log10(ms) if ms > 0 else -math.inf)
        except (RuntimeError, TypeError) as e:
            if dtype is torch.float64:
                continue
            raise e
        return {n: 10 ** statistics.mean(v) if v and all(math.isfinite(x) for x in v) else 0.0
                for n, v in logs.items()}, str(dtype).removeprefix("torch.")
    raise AssertionError("unreachable")


def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return build()


def _same_python_draws() -> None:
    """Python's ``random`` as capture found it: a forward that picks its path with
    ``random.random()`` (seq2seq's teacher forcing) takes, in every measured forward, the path
    its capture analyzed (capture puts the generator back as it found it)."""
    random.seed(0)


# Models whose recurrences are measured in float32, and why (printed under the decay table).
DECAY_IN_FLOAT32 = {
    "mambapy/mambapy/lm.py": "decays measured in float32: the probe reruns the exported PScan program with copies "
                             "of the views its in-place ops read, which at 24 layers x 1536 x 16 states x 64 steps "
                             "exceeds this machine's 24 GB in float64 (OOM-killed); float32 peaks at 12.8 GB, and "
                             "a decay of 10^-19.6 is far above its smallest normal number (10^-38)",
}


def predicted_decays(report: Any) -> list[dict]:
    out = []
    for r in report.recurrent:
        pred = math.log10(r.lag_grad_rms[0] / r.lag_grad_rms[-1]) if r.lag_grad_rms and r.lag_grad_rms[0] > 0 \
            and r.lag_grad_rms[-1] > 0 else None
        out.append({"node": r.node, "module": r.module, "form": r.form, "mode": r.mode, "steps": r.steps,
                    "decay_pred": pred, "lag_key": r.lag_key})
    return out


def decays(model: nn.Module, example: Any, report: Any, result: Any, seeds: int,
           dtype: torch.dtype = torch.float64) -> list[dict]:
    """Per recurrence of ``report``, the long-range decay predicted and measured (decades)."""
    from gradlint.capture.loops import lag_targets
    from gradlint.probing.measure import measure as probe_measure

    if not report.recurrent:
        return []
    _same_python_draws()
    meas = probe_measure(model, as_example_inputs(model, example), seeds=seeds, dtype=dtype,
                         loops=lag_targets(result.graph))
    out = []
    for d in predicted_decays(report):
        lag = meas.lag_rms(d.pop("lag_key"))
        out.append({**d, "decay_meas": math.log10(lag[0] / lag[-1]) if lag and lag[0] > 0 and lag[-1] > 0 else None})
    return out


def run(models: list[Model], seeds: int) -> list[dict]:
    rows = []
    for m in models:
        row: dict[str, Any] = {"model": m.name, "family": m.family}
        try:
            model = _seeded(m.build)
            example = m.inputs()
            t = time.perf_counter()
            _same_python_draws()
            report, result = predict(model, example)
            row["check_s"] = time.perf_counter() - t
            row["analysis"] = report.analysis
            t = time.perf_counter()
            truth, row["dtype"] = measure(lambda build=m.build: _seeded(build), m.inputs, seeds)
            row["measure_s"] = time.perf_counter() - t
        except Exception as e:  # noqa: BLE001 - a model that cannot be checked or measured is a row that says why
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            rows.append(row)
            print(f"| {m.name} | error: {row['error']} |", flush=True)
            continue
        # A tensor registered under two names (a module kept both as an attribute and inside
        # an nn.Sequential, as TCN's blocks are; tied weights) is one weight: compared once,
        # under the name named_parameters() gives it, which is the one the measurement has.
        first: dict[int, str] = {}
        canonical = {n: first.setdefault(id(t), n) for n, t in model.named_parameters(remove_duplicate=False)}
        errs, false_zeros, unmeasured, aliases = [], [], 0, 0
        for p in report.params:
            if sum(d > 1 for d in p.shape) < 2:
                continue
            if canonical.get(p.name, p.name) != p.name:
                aliases += 1
                continue
            meas = truth.get(p.name)
            if meas is None or meas <= 0:
                unmeasured += 1
                continue
            pred = p.predicted_grad_rms
            if not pred:
                false_zeros.append(p.name)
                continue
            errs.append((p.name, abs(math.log10(pred) - math.log10(meas))))
        row.update(weights=len(errs) + len(false_zeros), errors=[e for _, e in errs], false_zeros=false_zeros,
                   unmeasured=unmeasured, aliases=aliases, verdict=report.summary.verdict if report.summary else None,
                   worst=max(errs, key=lambda e: e[1])[0] if errs else "")
        try:
            if m.name in DECAY_IN_FLOAT32:
                row["recurrent"] = decays(model, example, report, result, seeds, torch.float32)
                row["recurrent_note"] = DECAY_IN_FLOAT32[m.name]
            else:
                row["recurrent"] = decays(model, example, report, result, seeds)
        except Exception as e:  # noqa: BLE001 - the weights' row stands; the decay says why it is missing
            row["recurrent_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        rows.append(row)
        e = sorted(row["errors"])
        print(f"| {m.name} | {report.analysis} | {row['weights']} | {_q(e, 0.5)} | {_q(e, 0.9)} | "
              f"{len(false_zeros)} | {row['verdict']} | {row['check_s']:.2f} | {row['measure_s']:.1f} |", flush=True)
    return rows


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f}"


def _q(values: list[float], q: float) -> str:
    if not values:
        return "-"
    return f"{values[min(len(values) - 1, math.ceil(q * len(values)) - 1)]:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="model names (substring match)")
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args(argv)
    models = [m for m in [*_manifest_models(), *_extra()] if not args.only or any(o in m.name for o in args.only)]
    print(f"gradlint {gradlint.__version__}, torch {torch.__version__}, {platform.machine()}, "
          f"{torch.get_num_threads()} threads, seeds={args.seeds}\n")
    print("| model | analysis | weights | median | p90 | false zeros | verdict | check s | measure s |\n"
          "|---|---|---|---|---|---|---|---|---|")
    rows = run(models, args.seeds)
    done = [r for r in rows if "error" not in r]
    errs = sorted(e for r in done for e in r["errors"])
    zeros = sum(len(r["false_zeros"]) for r in done)
    fallbacks = [r["model"] for r in done if r["analysis"] != "export"]
    print(f"\n{len(done)} of {len(rows)} models checked and measured, {len(errs) + zeros} weight matrices")
    print(f"error over weight matrices: median {_q(errs, 0.5)}, 90th percentile {_q(errs, 0.9)} decades")
    print(f"false zeros: {zeros} (in {sum(bool(r['false_zeros']) for r in done)} models)")
    print(f"weight matrices with no measured gradient (not compared): {sum(r['unmeasured'] for r in done)}")
    print(f"second names of a weight registered twice (compared once): {sum(r['aliases'] for r in done)}")
    print(f"fallbacks: {len(fallbacks)} ({', '.join(fallbacks) or 'none'})")
    rec = [(r["model"], d) for r in done for d in r.get("recurrent", ())]
    if rec or any(r["family"] in ("rnn", "ssm") for r in done):
        print("\n| model | recurrence | form | mode | steps | decay pred | decay meas | pred - meas |\n"
              "|---|---|---|---|---|---|---|---|")
        for name, d in rec:
            diff = d["decay_pred"] - d["decay_meas"] if d["decay_pred"] is not None and d["decay_meas"] is not None \
                else None
            print(f"| {name} | {d['module'] or d['node']} | {d['form']} | {d['mode']} | {d['steps']} | "
                  f"{_f(d['decay_pred'])} | {_f(d['decay_meas'])} | {_f(diff)} |")
        for r in done:
            if r["family"] in ("rnn", "ssm") and not r.get("recurrent"):
                print(f"| {r['model']} | none found | - | - | - | - | - | "
                      f"{r.get('recurrent_error', 'no recurrence in report.recurrent')} |")
        within = [abs(d["decay_pred"] - d["decay_meas"]) <= 1 for _, d in rec
                  if d["decay_pred"] is not None and d["decay_meas"] is not None]
        print(f"recurrences: {len(rec)}, decay within 1 decade of the measured one: {sum(within)} of {len(within)} "
              f"measured ({len(rec) - len(within)} not measured)")
        for r in done:
            if r.get("recurrent") and (r.get("recurrent_error") or r.get("recurrent_note")):
                print(f"{r['model']}: {r.get('recurrent_error') or r['recurrent_note']}")
    failed = [r for r in rows if "error" in r]
    if failed:
        print("not measured: " + "; ".join(f"{r['model']}: {r['error']}" for r in failed))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
