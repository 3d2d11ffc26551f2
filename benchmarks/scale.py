"""Start-up cost, big models on the meta device, and how ``check`` scales with depth.

Sections (each prints a markdown table; every measurement runs in a fresh subprocess):

* ``startup``: wall and CPU time of whole commands over ``--runs`` runs after one warm-up
  (median and minimum): the interpreter alone, ``gradlint --version``, ``--help``, ``import
  gradlint``, ``import torch``, torch with ``torch.export``, a small user file, and ``gradlint
  check`` on it. Then, in one process, what each step of a check adds on top of the one
  before, and which of torch, transformers, matplotlib, jsonschema the cheap entry points
  imported (none may). The children run with bytecode caching on, as an installed gradlint
  does.
* ``bigmodels``: Llama-2-70B, Mixtral-8x7B and BERT-large from transformers configs written
  out here (no download; HF_HUB_OFFLINE=1), built on the meta device, 1 x 512 tokens: time to
  build, wall and CPU time of ``check`` (the first in the process, so torch.export's
  first-use imports are in it) and the CPU time of its graph capture (gradlint.capture.record, or
  torch.export where recording refuses; the table names the path), peak RSS of
  the process (``ru_maxrss``), graph size, verdict, and the ops without a transfer rule
  (GL902).
* ``linear``: MLPs (Linear + ReLU, width 64, on the CPU) and pre-LN transformers
  (LayerNorm, fused QKV, SDPA, GELU MLP, d = 64, on the meta device) of ``--layers`` layers:
  ``check`` time against graph nodes, the least-squares slope of log(time) over
  log(nodes) from 100 layers up (1 = linear), and time per node, for the whole ``check``
  and for gradlint's own part (``check`` less graph capture). The fit uses CPU time,
  which a busy machine inflates far less than wall time. A warm-up ``check`` of a one-layer
  model comes first, so first-use imports are not counted.

Run: ``python benchmarks/scale.py {startup,bigmodels,linear,all} [--runs 10]
[--layers 10 100 1000 5000] [--only llama70b mixtral bertlarge]``.

Timings depend on the machine's load: the header prints the load average before and after.
``GRADLINT_CAPTURE=export`` in the environment (the children inherit it) measures the
torch.export path alone, for comparison.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMALL_FILE = ROOT / "examples" / "kaiming_mlp.py"
HEAVY = ("torch", "transformers", "matplotlib", "jsonschema")


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed package has its .pyc files
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    return env


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def header() -> None:
    import torch

    import gradlint
    try:
        import transformers
        tf = f", transformers {transformers.__version__}"
    except ImportError:
        tf = ""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"gradlint {gradlint.__version__}, torch {torch.__version__}{tf}, Python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB; load average (1/5/15 min) at start: "
          f"{_load()}\n", flush=True)


def _child(args: list[str], timeout: float = 1800) -> dict:
    """Runs this script's hidden ``_one`` command in a fresh interpreter; its last line is JSON."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_one", *args], capture_output=True,
                          text=True, env=_child_env(), timeout=timeout, cwd=ROOT)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:200]}
    return json.loads(lines[-1])


# -- startup --------------------------------------------------------------------------------------

def _time_command(cmd: list[str], runs: int) -> tuple[float, float, float]:
    """(median wall, min wall, median CPU) seconds of a whole process, after one warm-up."""
    walls, cpus = [], []
    for i in range(runs + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_child_env(), cwd=ROOT)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if i:
            walls.append(wall)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), min(walls), statistics.median(cpus)


def startup(runs: int) -> None:
    py = sys.executable
    gl = shutil.which("gradlint", path=str(Path(py).parent)) or shutil.which("gradlint")
    gradlint_cmd = [gl] if gl else [py, "-m", "gradlint"]
    check = [*gradlint_cmd, "check"]
    help_text = subprocess.run([*check, "--help"], capture_output=True, text=True, env=_child_env()).stdout
    if "--no-cache" in help_text:
        check.append("--no-cache")
    cases = [
        ("python -c pass", [py, "-c", "pass"]),
        ("gradlint --version", [*gradlint_cmd, "--version"]),
        ("gradlint --help", [*gradlint_cmd, "--help"]),
        ("python -c 'import gradlint'", [py, "-c", "import gradlint"]),
        ("python -c 'import torch'", [py, "-c", "import torch"]),
        ("python -c 'import torch, torch.export'", [py, "-c", "import torch, torch.export._trace"]),
        (f"python {SMALL_FILE.relative_to(ROOT)} (torch + the user's file)", [py, str(SMALL_FILE)]),
        (f"gradlint check {SMALL_FILE.relative_to(ROOT)}" + (" --no-cache" if "--no-cache" in check else ""),
         [*check, str(SMALL_FILE)]),
    ]
    print(f"Whole commands, {runs} runs after a warm-up:\n")
    print("| command | wall median s | wall min s | CPU median s |\n|---|---|---|---|")
    for label, cmd in cases:
        wall, low, cpu = _time_command(cmd, runs)
        print(f"| `{label}` | {wall:.2f} | {low:.2f} | {cpu:.2f} |", flush=True)

    steps = _child(["steps", str(SMALL_FILE)])
    print(f"\nOne `check` of {SMALL_FILE.relative_to(ROOT)} in a fresh process, step by step (each step's own "
          f"wall time):\n")
    print("| step | s |\n|---|---|")
    for name, secs in steps.get("steps", []):
        print(f"| {name} | {secs:.3f} |")
    if "error" in steps:
        print(f"| failed: {steps['error']} | |")

    print("\nHeavy modules each cheap entry point imported (of " + ", ".join(HEAVY) + "):\n")
    print("| entry point | imported |\n|---|---|")
    for label, args in (("gradlint --version", ["--version"]), ("gradlint --help", ["--help"]),
                        ("gradlint check --help", ["check", "--help"]), ("import gradlint", None)):
        out = _child(["modules", *(args or [])])
        print(f"| `{label}` | {', '.join(out.get('loaded', [])) or out.get('error') or 'none'} |")


def _steps(path: str) -> dict:
    """In this fresh process: the cost of each step of a check of ``path``, in order."""
    out: list[tuple[str, float]] = []

    def step(name, fn):
        t = time.perf_counter()
        value = fn()
        out.append((name, time.perf_counter() - t))
        return value

    step("import gradlint.cli (click, the command line)", lambda: __import__("gradlint.cli"))
    step("import torch", lambda: __import__("torch"))
    from gradlint import load
    module = step("import the user's file", lambda: load.import_file(Path(path)))
    target = load.discover(module, Path(path), None).targets[0]
    step("import gradlint.api and the rules (gradlint's own modules)",
         lambda: (__import__("gradlint.api"), __import__("gradlint.lint.rule").rule.load_builtin()))
    # Graph capture runs torch's meta kernels, and the first of them imports torch._dynamo
    # (with sympy): a cost of every first capture, recorded or exported.
    step("import torch._dynamo (imported by torch's meta kernels at first use)", lambda: __import__("torch._dynamo"))
    import gradlint.api as api
    from gradlint.capture.inputs import resolve_inputs

    model = step("build the model", lambda: load.instantiate(target))
    ex = resolve_inputs(model, target.options)
    step("gradlint.check, first call in the process", lambda: api.check(model, ex))
    step("gradlint.check, second call", lambda: api.check(model, ex))
    return {"steps": out}


# -- big models -----------------------------------------------------------------------------------

BIG = {
    "llama70b": ("Llama-2-70B", "LlamaForCausalLM", "LlamaConfig", 32000, dict(
        vocab_size=32000, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
        num_key_value_heads=8, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0)),
    "mixtral": ("Mixtral-8x7B", "MixtralForCausalLM", "MixtralConfig", 32000, dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=32768,
        rms_norm_eps=1e-5, rope_theta=1e6, sliding_window=None)),
    "bertlarge": ("BERT-large", "BertModel", "BertConfig", 30522, dict(
        vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        max_position_embeddings=512)),
}


def _timed_capture(total: list) -> None:
    """Adds each graph capture's wall and CPU seconds to ``total[0]`` and ``total[1]``, and the
    path that gave the graph (``recorded`` or ``torch.export``) to ``total[2]``.

    Capture is ``tracing.recorded_program`` (gradlint.capture.record) and, where recording refuses,
    ``tracing.export_program`` after it; both are counted.
    """
    from gradlint.capture import trace as tracing

    def timed(original, path):
        def wrapper(*args, **kwargs):
            t, c = time.perf_counter(), time.process_time()
            try:
                out = original(*args, **kwargs)
                total[2] = path
                return out
            finally:
                total[0] += time.perf_counter() - t
                total[1] += time.process_time() - c
        return wrapper

    tracing.recorded_program = timed(tracing.recorded_program, "recorded")
    tracing.export_program = timed(tracing.export_program, "torch.export")


def _bigmodel(key: str, seq: int) -> dict:
    import torch
    import transformers

    from gradlint.api import predict
    from gradlint.capture.inputs import ExampleInputs, TensorSpec

    label, cls_name, cfg_name, vocab, cfg = BIG[key]
    export = [0.0, 0.0, ""]
    _timed_capture(export)
    t = time.perf_counter()
    with torch.device("meta"):
        model = getattr(transformers, cls_name)(getattr(transformers, cfg_name)(**cfg))
    build = time.perf_counter() - t
    consts = {"return_dict": False} if key == "bertlarge" else {"use_cache": False, "return_dict": False}
    ex = ExampleInputs((TensorSpec((1, seq), "int64", vocab),), consts, "decorator")
    t, c = time.perf_counter(), time.process_time()
    report, result = predict(model, ex)
    check, cpu = time.perf_counter() - t, time.process_time() - c
    codes: dict[str, int] = {}
    for f in report.findings:
        codes[f.code] = codes.get(f.code, 0) + 1
    unknown = sorted({result.graph.by_name[n].attrs.get("target") or result.graph.by_name[n].op
                      for n in result.propagation.unknown_ops if n in result.graph.by_name})
    return dict(label=label, build=build, check=check, cpu=cpu, export_cpu=export[1], path=export[2],
                peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                params=sum(p.numel() for p in model.parameters()), nodes=len(result.graph.nodes),
                verdict=report.summary.verdict, analysis=report.analysis, codes=codes,
                unknown=[str(u) for u in unknown])


def bigmodels(only: list[str], seq: int) -> None:
    print(f"Built on the meta device, 1 x {seq} tokens, each in a fresh process:\n")
    print("| model | parameters | build s | check s | check CPU s | of which graph capture CPU s (path) "
          "| peak RSS MB | graph nodes | verdict | findings "
          "| ops without a transfer rule (GL902 where a gradient passes) |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")
    for key in only:
        r = _child(["bigmodel", key, str(seq)])
        if "error" in r:
            print(f"| {BIG[key][0]} | failed: {r['error']} | | | | | | | | | |", flush=True)
            continue
        findings = ", ".join(f"{c} x{n}" if n > 1 else c for c, n in sorted(r["codes"].items())) or "-"
        print(f"| {r['label']} | {r['params'] / 1e9:.1f} B | {r['build']:.1f} | {r['check']:.1f} | {r['cpu']:.1f} | "
              f"{r['export_cpu']:.1f} ({r['path']}) | {r['peak']:.0f} | {r['nodes']} | {r['verdict']} | {findings} "
              f"| {', '.join(r['unknown']) or '-'} |",
              flush=True)


# -- linear scaling -------------------------------------------------------------------------------

def _models():
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        """Pre-LN transformer block: fused QKV, SDPA, GELU MLP."""

        def __init__(self, d: int = 64, heads: int = 4):
            super().__init__()
            self.ln1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.ln2, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
            self.heads = heads

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
            return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))

    def mlp(layers: int):
        return nn.Sequential(*[m for _ in range(layers) for m in (nn.Linear(64, 64), nn.ReLU())])

    def transformer(layers: int):
        import torch

        with torch.device("meta"):
            return nn.Sequential(*[Block() for _ in range(layers)])

    return {"mlp": (mlp, (8, 64)), "transformer": (transformer, (2, 16, 64))}


def _linear_one(kind: str, layers: int) -> dict:
    import gradlint
    from gradlint.api import predict

    build, shape = _models()[kind]
    gradlint.check(build(1), shape)  # first-use imports and caches
    export = [0.0, 0.0, ""]
    _timed_capture(export)
    t = time.perf_counter()
    model = build(layers)
    built = time.perf_counter() - t
    t, c = time.perf_counter(), time.process_time()
    report, result = predict(model, shape)
    check, cpu = time.perf_counter() - t, time.process_time() - c
    return dict(build=built, check=check, cpu=cpu, export=export[1], path=export[2], nodes=len(result.graph.nodes),
                peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, verdict=report.summary.verdict)


def _slope(points: list[tuple[float, float]]) -> float:
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(t) for _, t in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def linear(kinds: list[str], layers: list[int]) -> None:
    for kind in kinds:
        rows = []
        print(f"\n{kind}: one fresh process per size\n")
        print("| layers | graph nodes | build s | check wall s | check CPU s | graph capture CPU s (path) "
              "| gradlint's own CPU s | check CPU ms/node | own CPU ms/node | peak RSS MB | verdict |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|")
        for n in layers:
            r = _child(["linear", kind, str(n)], timeout=3600)
            if "error" in r:
                print(f"| {n} | failed: {r['error']} | | | | | | | | | |", flush=True)
                continue
            own = r["cpu"] - r["export"]
            rows.append((n, r["nodes"], r["cpu"], own))
            print(f"| {n} | {r['nodes']} | {r['build']:.2f} | {r['check']:.2f} | {r['cpu']:.2f} "
                  f"| {r['export']:.2f} ({r['path']}) | {own:.2f} | {1000 * r['cpu'] / r['nodes']:.2f} "
                  f"| {1000 * own / r['nodes']:.2f} | {r['peak']:.0f} | {r['verdict']} |", flush=True)
        fit = [row for row in rows if row[0] >= 100]
        if len(fit) >= 2:
            print(f"\nlog-log slope of CPU time over nodes ({', '.join(str(r[0]) for r in fit)} layers): check "
                  f"{_slope([(r[1], r[2]) for r in fit]):.2f}, "
                  f"gradlint's own part {_slope([(r[1], r[3]) for r in fit]):.2f} (1.00 = linear)")


# -- entry point ----------------------------------------------------------------------------------

def _one(argv: list[str]) -> None:
    what = argv[0]
    if what == "steps":
        out = _steps(argv[1])
    elif what == "modules":
        if argv[1:]:
            from gradlint.cli import main as cli
            sys.argv = ["gradlint", *argv[1:]]
            saved = sys.stdout
            sys.stdout = open(os.devnull, "w")
            try:
                cli()
            except SystemExit:
                pass
            finally:
                sys.stdout = saved
        else:
            import gradlint  # noqa: F401
        out = {"loaded": [m for m in HEAVY if m in sys.modules]}
    elif what == "bigmodel":
        out = _bigmodel(argv[1], int(argv[2]))
    else:
        out = _linear_one(argv[1], int(argv[2]))
    print(json.dumps(out))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_one":
        _one(argv[1:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("section", choices=["startup", "bigmodels", "linear", "all"])
    ap.add_argument("--runs", type=int, default=10, help="startup: counted runs per command")
    ap.add_argument("--only", nargs="*", default=list(BIG), choices=list(BIG), help="bigmodels: which")
    ap.add_argument("--seq", type=int, default=512, help="bigmodels: tokens")
    ap.add_argument("--layers", nargs="*", type=int, default=[10, 100, 1000, 5000], help="linear: depths")
    ap.add_argument("--kinds", nargs="*", default=["mlp", "transformer"], choices=["mlp", "transformer"],
                    help="linear: model families")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    header()
    if args.section in ("startup", "all"):
        startup(args.runs)
    if args.section in ("bigmodels", "all"):
        print()
        bigmodels(args.only, args.seq)
    if args.section in ("linear", "all"):
        linear(args.kinds, args.layers)
    print(f"\nload average (1/5/15 min) at the end: {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
