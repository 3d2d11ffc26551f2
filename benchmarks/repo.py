"""``gradlint check`` on a whole repository: cold and warm cache, one worker and two.

Writes a repository of ``--files`` model files into a temporary directory (small MLPs with
varied activations, depths and widths, small CNNs, residual MLPs, GRUs; one file in four
builds its blocks from a shared local module, ``blocks.py``), then times whole commands,
each in a fresh process, as a user would run them:

* cold: an empty cache directory, every file checked;
* warm: the same command again, nothing changed (the median of ``--repeat`` runs);
* helper edited: after a change to ``blocks.py``, which the files importing it depend on.

each with ``--jobs 1`` and ``--jobs 2``. Prints a markdown table, the command, the machine
and the load average before and after (other work on the machine inflates the timings).

Run: ``python benchmarks/repo.py [--files 200] [--repeat 3] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from importlib.metadata import version
from pathlib import Path

BLOCKS = textwrap.dedent("""
    import torch.nn as nn


    def block(width, act=nn.ReLU):
        return nn.Sequential(nn.Linear(width, width), act())


    class Residual(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.norm = nn.LayerNorm(width)
            self.fc = nn.Linear(width, width)

        def forward(self, x):
            return x + self.fc(self.norm(x))
    """)

ACTS = ("nn.ReLU", "nn.Tanh", "nn.Sigmoid", "nn.GELU", "nn.SiLU")


def model_file(i: int) -> tuple[str, str]:
    """The ``i``-th file's relative path and text: a variety of small models."""
    width = (16, 32, 48, 64)[i % 4]
    depth = 2 + i % 7
    act = ACTS[i % len(ACTS)]
    kind = ("mlp", "cnn", "resmlp", "gru", "shared")[i % 5]
    head = "import torch\nimport torch.nn as nn\nimport gradlint\n"
    if kind == "mlp":
        body = f"""
            @gradlint.target(inputs=(8, {width}))
            class MLP{i}(nn.Module):
                def __init__(self):
                    super().__init__()
                    layers = []
                    for _ in range({depth}):
                        layers += [nn.Linear({width}, {width}), {act}()]
                    self.net = nn.Sequential(*layers)

                def forward(self, x):
                    return self.net(x)
            """
    elif kind == "cnn":
        body = f"""
            @gradlint.target(inputs=(2, 3, 16, 16))
            class CNN{i}(nn.Module):
                def __init__(self):
                    super().__init__()
                    chans = [3] + [{width // 2}] * {min(depth, 4)}
                    self.convs = nn.Sequential(*[m for a, b in zip(chans, chans[1:])
                                                 for m in (nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), {act}())])
                    self.head = nn.Linear({width // 2}, 10)

                def forward(self, x):
                    return self.head(self.convs(x).mean((2, 3)))
            """
    elif kind == "resmlp":
        body = f"""
            class Block(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.norm = nn.LayerNorm({width})
                    self.fc = nn.Linear({width}, {width})
                    self.act = {act}()

                def forward(self, x):
                    return x + self.act(self.fc(self.norm(x)))


            @gradlint.target(inputs=(8, {width}))
            def resmlp{i}():
                return nn.Sequential(*[Block() for _ in range({depth})], nn.Linear({width}, 1))
            """
    elif kind == "gru":
        body = f"""
            @gradlint.target(inputs=(4, {8 + depth}, {width}))
            class GRU{i}(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.rnn = nn.GRU({width}, {width}, batch_first=True)
                    self.out = nn.Linear({width}, 1)

                def forward(self, x):
                    return self.out(self.rnn(x)[0])
            """
    else:
        head += "from blocks import Residual, block\n"
        body = f"""
            @gradlint.target(inputs=(8, {width}))
            class Shared{i}(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.net = nn.Sequential(*[block({width}, {act}) for _ in range({depth})],
                                             *[Residual({width}) for _ in range(2)])

                def forward(self, x):
                    return self.net(x)
            """
    return f"models/{kind}/m{i:03d}.py", head + textwrap.dedent(body)


def write_repo(root: Path, files: int) -> None:
    (root / "pyproject.toml").write_text('[project]\nname = "bench"\n')
    (root / "blocks.py").write_text(BLOCKS)
    for i in range(files):
        rel, text = model_file(i)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def gradlint_check(root: Path, cache: Path, jobs: int) -> tuple[float, dict]:
    """Wall seconds of one ``gradlint check models/`` and its JSON summary."""
    out = cache.parent / "out.json"
    cmd = [sys.executable, "-m", "gradlint", "check", "models", "--jobs", str(jobs), "--cache-dir", str(cache),
           "--format", "json", "--output", str(out)]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"gradlint check failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, json.loads(out.read_text())["summary"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="write the repository here and keep it")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gradlint-repo-"))
    root = args.keep or work / "repo"
    root.mkdir(parents=True, exist_ok=True)
    write_repo(root, args.files)
    importing = sum("from blocks import" in p.read_text() for p in root.rglob("m*.py"))
    load_before = os.getloadavg()
    rows: dict[str, dict[int, str]] = {}
    summary = None
    try:
        for jobs in (1, 2):
            cache = work / f"cache-{jobs}"
            seconds, summary = gradlint_check(root, cache, jobs)
            rows.setdefault("cold cache (every file checked)", {})[jobs] = f"{seconds:.1f}"
            warm = [gradlint_check(root, cache, jobs)[0] for _ in range(args.repeat)]
            rows.setdefault(f"warm cache, nothing changed (median of {args.repeat})", {})[jobs] = \
                f"{statistics.median(warm):.2f}"
            blocks = root / "blocks.py"
            blocks.write_text(blocks.read_text() + f"\n# edited for jobs={jobs}\n")
            seconds, _ = gradlint_check(root, cache, jobs)
            rows.setdefault(f"blocks.py edited ({importing} files import it)", {})[jobs] = f"{seconds:.1f}"
    finally:
        load_after = os.getloadavg()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"gradlint {version('torch-gradlint')}, torch {version('torch')}, Python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} cores")
    print(f"{args.files} model files, {summary['targets']} targets; load average (1, 5, 15 min) "
          f"before {' '.join(f'{x:.2f}' for x in load_before)}, after {' '.join(f'{x:.2f}' for x in load_after)}\n")
    print("| `gradlint check models/` | --jobs 1 (s) | --jobs 2 (s) |")
    print("|---|---|---|")
    for name, cols in rows.items():
        print(f"| {name} | {cols[1]} | {cols[2]} |")


if __name__ == "__main__":
    main()
