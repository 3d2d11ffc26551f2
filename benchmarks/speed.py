"""What ``gradlint.check`` costs, next to one real forward + backward of the same model.

Sections (run all, or pick with ``--only``):

* ``realistic``: BERT-base on 8 sequences of 512 tokens, GPT-2 medium on 8 of 256 (512 runs
  out of 24 GB in the forward + backward), and an HF ResNet-50 on 8 images of 224x224, built
  from transformers configs (random init). Per model, in the same process, after one warm-up
  of each: ``--repeat`` rounds that each time one ``check`` and one forward + backward pass
  (float32, CPU, train mode, loss sum(g * y)), alternated; the medians and their ratio.
* ``meta7b``: the Llama-2-7B config built on the meta device; ``check`` time and the
  process's peak RSS increase (its forward + backward would not fit in this machine's memory).
* ``corpus``: every model of ``benchmarks/corpus.py``: the first ``check`` of each model and the
  steady state. The first model's first ``check`` includes graph capture's first-use imports
  when this section runs alone (``--only corpus``); after the other sections it does not.
* ``floor``: a whole ``gradlint check FILE --no-cache`` (the default ``--jobs 1``: the parent,
  which never imports torch, starts one worker process that imports torch and checks the
  file) against the floor any checker of that file pays: a ``python -c`` that imports torch,
  imports the file, builds each model gradlint checks in it and runs one forward on the
  inputs gradlint uses (its ``@gradlint.target`` declaration or its inference; train mode,
  grad on), then leaves with ``os._exit`` as gradlint's worker does (neither pays torch's
  interpreter shutdown). Each a fresh process, alternated in one run (the order flips every
  round), ``--rounds`` times per file after one untimed pair; medians of wall and CPU time
  (the child's user + system, workers included) and their ratios, per file and pooled (the
  sums of the medians). Files: ``examples/`` and three of ``benchmarks/ecosystem/`` that
  gradlint analyzes with no configuration, each run from a copy of its folder outside this repository.
  gradlint's modules run from bytecode, as an installed gradlint's do (the section compiles this
  checkout's first where ``PYTHONDONTWRITEBYTECODE`` would keep Python from writing it).

* ``threads``: ``check`` of the PyTorch examples' word-language model (2-layer LSTM, 200 wide,
  35 tokens) with its analysis on one torch thread, as gradlint runs it, against the same on all
  of torch's threads; interleaved ``--repeat`` times in one process, and the load average.

Run: ``python benchmarks/speed.py [--only realistic meta7b corpus floor threads] [--repeat 3] [--rounds 7]
[--models resnet] [--files kaiming]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

import gradlint
from gradlint.capture.inputs import ExampleInputs, TensorSpec


def rss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def realistic(repeat: int, models: list[str] | None = None) -> None:
    import transformers as T

    b = 8
    cases = [
        ("BERT-base, 8x512 tokens", lambda: T.BertModel(T.BertConfig()),
         ExampleInputs((TensorSpec((b, 512), "int64", 30522),), {"return_dict": False}, "decorator")),
        # 8 x 512 tokens ran out of this machine's 24 GB in the forward + backward.
        ("GPT-2 medium, 8x256 tokens", lambda: T.GPT2LMHeadModel(T.GPT2Config(n_embd=1024, n_layer=24, n_head=16)),
         ExampleInputs((TensorSpec((b, 256), "int64", 50257),), {"use_cache": False, "return_dict": False},
                       "decorator")),
        ("ResNet-50 (HF), 8x3x224x224", lambda: T.ResNetModel(T.ResNetConfig()),
         ExampleInputs((TensorSpec((b, 3, 224, 224)),), {"return_dict": False}, "decorator")),
    ]
    print("| model | check s | forward+backward s | ratio |\n|---|---|---|---|")
    for name, build, ex in cases:
        if models and not any(m.lower() in name.lower() for m in models):
            continue
        t_check, t_fb = time_case(build, ex, repeat)  # the model is freed when it returns
        print(f"| {name} | {t_check:.2f} | {t_fb:.2f} | {t_fb / t_check:.1f}x cheaper |", flush=True)
        gc.collect()


def time_case(build, ex: ExampleInputs, repeat: int) -> tuple[float, float]:
    """``check`` time and forward + backward time of one freshly built model: medians of
    ``repeat`` rounds that each time one of both, after one warm-up of each. Alternating them
    keeps the ratio when the machine's speed drifts during the run (on this shared machine it
    moved by half within a minute)."""
    torch.manual_seed(0)
    model = build().train()
    gen = torch.Generator().manual_seed(0)
    args, kwargs = ex.materialize("cpu", gen)

    def fwd_bwd():
        out = model(*args, **kwargs)
        ys = [y for y in torch.utils._pytree.tree_leaves(out) if isinstance(y, torch.Tensor) and y.requires_grad]
        loss = sum((torch.randn_like(y) * y).sum() for y in ys)
        loss.backward()
        model.zero_grad(set_to_none=True)

    check = lambda: gradlint.check(model, ex)
    check()
    fwd_bwd()
    t_check, t_fb = [], []
    for _ in range(repeat):
        t_check.append(timed_once(check))
        t_fb.append(timed_once(fwd_bwd))
    return statistics.median(t_check), statistics.median(t_fb)


def timed_once(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def meta7b() -> None:
    import transformers as T

    cfg = T.LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
    base = current_rss_mb()
    t = time.perf_counter()
    with torch.device("meta"):
        model = T.LlamaForCausalLM(cfg)
    ex = ExampleInputs((TensorSpec((1, 512), "int64", 32000),), {"use_cache": False, "return_dict": False},
                       "decorator")
    report = gradlint.check(model, ex)
    elapsed = time.perf_counter() - t
    print(f"Llama-2-7B config on meta, 1x512 tokens: build + check {elapsed:.1f} s, peak RSS "
          f"{rss_mb():.0f} MB ({rss_mb() - base:.0f} MB above the {base:.0f} MB before), verdict "
          f"{report.summary.verdict}, {len(report.params)} parameters, analysis {report.analysis}")


def corpus() -> None:
    from corpus import CORPUS

    print("| model | first check s | steady check s |\n|---|---|---|")
    firsts, steadies = [], []
    for e in CORPUS:
        model, ex = e.build(), e.inputs()
        t = time.perf_counter()
        gradlint.check(model, ex)
        first = time.perf_counter() - t
        steady = timed(lambda model=model, ex=ex: gradlint.check(model, ex), 3)
        firsts.append(first)
        steadies.append(steady)
        print(f"| {e.name} | {first:.2f} | {steady:.2f} |", flush=True)
    print(f"\nsteady state: median {statistics.median(steadies):.2f} s, max {max(steadies):.2f} s; "
          f"first model's first check {firsts[0]:.2f} s (with first-use imports when this section runs alone)")


ROOT = Path(__file__).resolve().parent.parent
ECOSYSTEM = ROOT / "benchmarks" / "ecosystem"
FLOOR_FILES = [*(("examples", f"examples/{p.name}") for p in sorted((ROOT / "examples").glob("*.py"))),
               ("benchmarks/ecosystem/pytorch-cifar", "models/mobilenetv2.py"),
               ("benchmarks/ecosystem/pytorch-cifar", "models/googlenet.py"),
               ("benchmarks/ecosystem/vq-vae-2", "vqvae.py")]


def _expr(value) -> str:
    """Python source that builds ``value`` (an input leaf gradlint described) in the floor's child."""
    from gradlint.capture.examples import TensorSpec

    if isinstance(value, TensorSpec):
        if value.vocab is not None:
            return f"torch.randint(0, {value.vocab}, {value.shape!r}, dtype=torch.{value.dtype})"
        return f"torch.randn({value.shape!r}).to(torch.{value.dtype})"
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_expr(v) for v in value) + ("," if isinstance(value, tuple) and len(value) == 1 else "")
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    raise ValueError(f"no floor for an input {type(value).__name__}")


def floor_plan(path: str) -> None:
    """Prints (JSON) what the floor's child must do for ``path``: per target gradlint would check,
    the constructor call and the inputs. Runs in a child of its own, from the file's folder."""
    from gradlint import load
    from gradlint.capture.inputs import resolve_inputs

    module = load.import_file(path)
    steps = []
    for target in load.discover(module, path).targets:
        with load.user_code(path, cwd=False):
            model = load.instantiate(target)
            ex = resolve_inputs(model, target.options, None)
        if next(model.parameters(), None) is None:
            continue  # gradlint skips a parameter-free module too
        kwargs = (target.options.kwargs or {}) if target.options is not None else {}
        build = target.name if target.kind == "instance" else f"{target.name}(**{kwargs!r})"
        args = "(" + "".join(_expr(a) + ", " for a in ex.args) + ")"
        kw = "{" + ", ".join(f"{k!r}: {_expr(v)}" for k, v in ex.kwargs.items()) + "}"
        steps.append({"build": build, "args": args, "kwargs": kw})
    print(json.dumps(steps))


def _floor_code(path: str, steps: list[dict]) -> str:
    lines = ["import importlib.util, os, sys", "import torch",
             f"sys.path.insert(0, os.path.dirname(os.path.abspath({path!r})))",
             f"spec = importlib.util.spec_from_file_location('floor_target', {path!r})",
             "m = importlib.util.module_from_spec(spec); sys.modules['floor_target'] = m",
             "spec.loader.exec_module(m)", "torch.manual_seed(0)"]
    for step in steps:
        lines += [f"model = eval({step['build']!r}, vars(m))",
                  f"model(*{step['args']}, **{step['kwargs']})"]
    lines += ["sys.stdout.flush(); sys.stderr.flush(); os._exit(0)"]
    return "\n".join(lines)


def _run(cmd: list[str], cwd: Path) -> tuple[float, float, int]:
    """Wall and CPU seconds (the child's and its reaped children's user + system) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, proc.returncode


def floor(rounds: int, baseline: str | None = None, check: str | None = None, only: list[str] | None = None) -> None:
    env_python = sys.executable
    script = Path(env_python).parent / "gradlint"  # the console script a user runs
    gradlint_cmd = shlex.split(check) if check else [str(script)] if script.exists() else [env_python, "-m", "gradlint"]
    cases = []
    # Each file's folder is copied out of this repository first: a file inside it would put the
    # repository (and its gradlint) on sys.path, and --check or --baseline would not run alone.
    scratch = Path(tempfile.mkdtemp(prefix="gradlint-floor-"))
    for folder, rel in FLOOR_FILES:
        if only and not any(o in f"{folder}/{rel}" for o in only):
            continue
        cwd = scratch / Path(folder).name
        if not cwd.exists():
            shutil.copytree(ROOT / folder, cwd / "examples" if folder == "examples" else cwd)
        out = subprocess.run([env_python, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                              "from speed import floor_plan; floor_plan(sys.argv[2])",
                              str(Path(__file__).resolve().parent), rel], cwd=cwd, capture_output=True, text=True)
        if out.returncode != 0 or not out.stdout.strip():
            print(f"{rel}: no floor ({(out.stderr.strip().splitlines() or ['?'])[-1]})")
            continue
        steps = json.loads(out.stdout.strip().splitlines()[-1])
        code = _floor_code(rel, steps)
        arms = {"floor": [env_python, "-c", code],
                # The same, ending as a script does: with torch's interpreter shutdown.
                "floor+exit": [env_python, "-c", code.replace("os._exit(0)", "pass")],
                "check": [*gradlint_cmd, "check", rel, "--no-cache"]}
        if baseline:
            arms["baseline"] = [*shlex.split(baseline), "check", rel, "--no-cache"]
        cases.append((rel, cwd, arms, len(steps)))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {rounds} rounds, "
          f"`{shlex.join(gradlint_cmd)} check FILE --no-cache` (one worker process)\n", flush=True)
    if baseline:
        print(f"baseline: `{baseline} check FILE --no-cache`, in the same rounds\n")
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        # Python would write this checkout's bytecode on first import, and pip writes an installed
        # gradlint's at install; with writing turned off, every process would compile ~150 modules.
        subprocess.run([env_python, "-m", "compileall", "-q", str(ROOT / "gradlint"), str(ROOT / "rules")], check=True)
        print("PYTHONDONTWRITEBYTECODE is set: compiled this checkout's gradlint/ and rules/ first "
              "(a --baseline checkout needs `python -m compileall` too)\n")
    kinds = list(cases[0][2]) if cases else []
    times = {rel: {k: [] for k in kinds} for rel, *_ in cases}
    for _rel, cwd, arms, _ in cases:  # untimed: the page cache, the .pyc files
        for cmd in arms.values():
            _run(cmd, cwd)
    for r in range(rounds):
        for rel, cwd, arms, _ in cases:
            order = list(arms.items())
            for kind, cmd in (order if r % 2 == 0 else order[::-1]):
                wall, cpu, _ = _run(cmd, cwd)
                times[rel][kind].append((wall, cpu))
    checks = [k for k in kinds if not k.startswith("floor")]
    # Per measure (wall, CPU): each floor, then each gradlint command with its ratio to each floor.
    head = ["floor s", "floor+exit s"] + [h for k in checks for h in (f"{k} s", "/ floor", "/ floor+exit")]

    def cells(med: dict, i: int) -> list[str]:
        out = [f"{med['floor'][i]:.2f}", f"{med['floor+exit'][i]:.2f}"]
        for k in checks:
            out += [f"{med[k][i]:.2f}", f"{med[k][i] / med['floor'][i]:.2f}", f"{med[k][i] / med['floor+exit'][i]:.2f}"]
        return out

    sums = {k: [0.0, 0.0] for k in kinds}
    rows = []
    for rel, *_, n in cases:
        med = {k: [statistics.median(x[i] for x in times[rel][k]) for i in (0, 1)] for k in kinds}
        for k in med:
            sums[k][0] += med[k][0]
            sums[k][1] += med[k][1]
        rows.append((rel, n, med))
    if cases:
        rows.append(("pooled (sums of medians)", "", sums))
    for i, measure in ((0, "wall"), (1, "CPU")):
        print(f"{measure} time, median of {rounds}:\n\n| file | targets | " + " | ".join(head) + " |\n|"
              + "---|" * (2 + len(head)))
        for rel, n, med in rows:
            print(f"| {rel} | {n} | " + " | ".join(cells(med, i)) + " |")
        print()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    shutil.rmtree(scratch, ignore_errors=True)


def threads(repeat: int) -> None:
    import contextlib

    import gradlint.api as api

    sys.path.insert(0, str(Path(__file__).resolve().parent / "ecosystem/pytorch-examples/word_language_model"))
    import model as wlm

    torch.manual_seed(0)
    net = wlm.RNNModel("LSTM", 33278, 200, 200, 2, 0.2, False)
    one = api._one_thread
    times: dict[str, list[float]] = {"one thread": [], f"{torch.get_num_threads()} threads": []}
    api.check(net)  # warm-up: imports and caches
    for _ in range(repeat):
        for label in times:
            api._one_thread = one if label == "one thread" else contextlib.nullcontext
            start = time.perf_counter()
            api.check(net)
            times[label].append(time.perf_counter() - start)
    api._one_thread = one
    print("| analysis on | check s (median) | runs |")
    print("|---|---|---|")
    for label, ts in times.items():
        print(f"| {label} | {statistics.median(ts):.2f} | {', '.join(f'{t:.2f}' for t in ts)} |")
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=["realistic", "meta7b", "corpus", "floor"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=7, help="floor: timed rounds per file")
    ap.add_argument("--models", nargs="*", help="realistic: only the models whose name contains one of these")
    ap.add_argument("--files", nargs="*", help="floor: only the files whose path contains one of these")
    ap.add_argument("--check", metavar="CMD", help="floor: the gradlint command to time (default: the gradlint "
                                                   "script beside this Python)")
    ap.add_argument("--baseline", metavar="CMD",
                    help="floor: another gradlint command (e.g. an older checkout's) timed in the same rounds")
    args = ap.parse_args(argv)
    print(f"gradlint {gradlint.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads\n")
    if "meta7b" in args.only:  # first, so its peak RSS is its own
        meta7b()
        print()
    if "realistic" in args.only:
        realistic(args.repeat, args.models)
        print()
    if "corpus" in args.only:
        corpus()
        print()
    if "floor" in args.only:
        floor(args.rounds, args.baseline, args.check, args.files)
    if "threads" in args.only:
        threads(args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
