"""What `gradlint check` says when a model cannot be analyzed, and that the run goes on.

Each row of CASES is a small project (its files), a command line, the exit code and the
fragments the output must hold. Every case runs through the real command line, and
docs/errors.md is generated from the same rows with the real output, so the two cannot drift:

    python tests/test_errors.py --write     (or: python -m tests.test_errors --write)

A case with ``subprocess=True`` runs ``python -m gradlint`` in a fresh process, for what an
in-process run cannot show (the process's exit code after a crash).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "errors.md"
REGENERATE = "python tests/test_errors.py --write"


@dataclass(frozen=True)
class Outcome:
    """What one run of a case printed: ``output`` as a terminal shows it (stderr and stdout
    in the order written), with the project's directory normalized away."""

    exit_code: int
    output: str
    stdout: str
    project: Path


@dataclass(frozen=True)
class Case:
    """One row of the table.

    Attributes:
        id: A short name, the anchor in docs/errors.md.
        title: What goes wrong, in the user's terms.
        files: Path (relative to the project) -> source text, or bytes for a file in another encoding.
        args: The arguments after ``gradlint check``, paths relative to the project.
        exit_code: 0 clean, 1 findings, 2 could not analyze.
        fragments: Text the output must hold, in any order.
        absent: Text the output must not hold.
        shown: The files docs/errors.md shows (default: all).
        extra: More assertions on the outcome, beyond the message.
        subprocess: Run ``python -m gradlint`` in a fresh process instead of in-process.
        stdout_in_doc: Show stdout in docs/errors.md; False for a JSON document, which the
            doc only describes (its fields are the JSON format's business).
        summary: The table's message column, when no line of the output says it.
        setup: Makes what ``files`` cannot hold (symbolic links, FIFOs, a file too large to
            show) in the project directory; returns how docs/errors.md describes it.
        masks: (pattern, replacement) pairs for the output docs/errors.md shows, for numbers
            that change from run to run (a peak memory).
        limit_bytes: The address space the command runs in (``ulimit -v``); needs ``subprocess``.
    """

    id: str
    title: str
    files: dict[str, str | bytes]
    args: tuple[str, ...]
    exit_code: int
    fragments: tuple[str, ...]
    absent: tuple[str, ...] = ()
    shown: tuple[str, ...] | None = None
    extra: Callable[[Outcome], None] | None = field(default=None, compare=False)
    subprocess: bool = False
    stdout_in_doc: bool = True
    summary: str | None = None
    setup: Callable[[Path], str] | None = field(default=None, compare=False)
    masks: tuple[tuple[str, str], ...] = ()
    limit_bytes: int | None = None


def src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


LINEAR = src("""
    import torch.nn as nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(x)
""")

CNN = src("""
    import torch.nn as nn


    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.head = nn.Linear(8 * 30 * 30, 10)

        def forward(self, x):
            return self.head(self.conv(x).flatten(1))
""")

NEEDS_DEPTH = src("""
    import torch.nn as nn


    class Net(nn.Module):
        def __init__(self, depth, width=64):
            super().__init__()
            self.layers = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])

        def forward(self, x):
            return self.layers(x)
""")


def _stdout_is_one_json_document(outcome: Outcome) -> None:
    doc = json.loads(outcome.stdout)
    assert [t["status"] for t in doc["targets"]] == ["ok"]
    assert "loading weights" not in outcome.stdout and "building Net" not in outcome.stdout


def _nothing_written(outcome: Outcome) -> None:
    files = sorted(p.relative_to(outcome.project).as_posix() for p in outcome.project.rglob("*"))
    assert files == ["models", *(f"models/util_{i:03}.py" for i in range(200)), "models/zz_net.py"], files[:5]


def _links_and_a_fifo(project: Path) -> str:
    models = project / "models"
    models.mkdir(exist_ok=True)
    os.symlink("y.py", models / "x.py")
    os.symlink("x.py", models / "y.py")
    os.symlink("nowhere.py", models / ".#good.py")
    os.mkfifo(models / "pipe.py")
    return ("`models/x.py` and `models/y.py`: symbolic links to each other; `models/.#good.py`: a symbolic link to "
            "`nowhere.py`, which does not exist (an editor's lock file); `models/pipe.py`: a FIFO (named pipe).")


def _loop(project: Path) -> str:
    os.symlink("y.py", project / "x.py")
    os.symlink("x.py", project / "y.py")
    return "`x.py` and `y.py`: symbolic links to each other."


def _dangling(project: Path) -> str:
    os.symlink("model_v2.py", project / "model.py")
    return "`model.py`: a symbolic link to `model_v2.py`, which does not exist."


def _fifo(project: Path) -> str:
    os.mkfifo(project / "model.py")
    return "`model.py`: a FIFO (named pipe)."


def _deep_baseline(project: Path) -> str:
    (project / "baseline.json").write_text("[" * 100_000 + "]" * 100_000)
    return "`baseline.json`: `[` 100,000 times, then `]` 100,000 times."


def _left_the_project_alone(outcome: Outcome) -> None:
    runs = outcome.project.parent / "runs" / "exp1"
    assert (runs / "config.txt").read_text() == "depth=4\n"
    assert sorted(p.name for p in outcome.project.iterdir()) == ["train.py"]


CASES: list[Case] = [
    Case("syntax-error", "a syntax error in a model file; the other files are still checked",
         {"model.py": src("""
             import torch.nn as nn


             class Net(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.fc = nn.Linear(8, 8

                 def forward(self, x):
                     return self.fc(x)
         """), "other.py": LINEAR},
         ("model.py", "other.py", "--input-shape", "4,8"), 2,
         ("model.py:7: could not analyze model.py: SyntaxError: '(' was never closed",
          'File "model.py", line 7', "other.py::Net: healthy")),
    Case("missing-package", "an import of a package that is not installed",
         {"model.py": src("""
             import torch.nn as nn
             import flash_attn_not_installed


             class Net(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.fc = nn.Linear(8, 8)
         """)},
         ("model.py",), 2,
         ("model.py:2: could not analyze model.py: ModuleNotFoundError while importing the file: No module named "
          "'flash_attn_not_installed'",
          "hint: 'flash_attn_not_installed' is not installed where gradlint runs and is no module of the project")),
    Case("broken-relative-import", "a relative import of a module the package does not have",
         {"pkg/__init__.py": "", "pkg/model.py": src("""
             import torch.nn as nn

             from .layers import Block


             class Net(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.block = Block(8)
         """)},
         ("pkg/model.py",), 2,
         ("pkg/model.py:3: could not analyze pkg/model.py: ModuleNotFoundError while importing the file: No module "
          "named 'pkg.layers'",
          "hint: the project has no pkg/layers.py and no pkg/layers/ package: fix the import, or add the module"),
         absent=("install",)),
    Case("relative-import-outside-a-package", "a relative import in a directory without __init__.py",
         {"models/net.py": src("""
             import torch.nn as nn

             from .layers import Block
         """), "models/layers.py": "Block = None\n"},
         ("models/net.py",), 2,
         ("models/net.py:3: could not analyze models/net.py: ImportError while importing the file: attempted "
          "relative import with no known parent package",
          "hint: net.py uses a relative import, but models/ has no __init__.py: add an empty __init__.py")),
    Case("no-targets", "a file that defines no model: a note, and a run that analyzed nothing exits 5",
         {"utils.py": src("""
             import torch


             def scale(x: torch.Tensor) -> torch.Tensor:
                 return 2 * x
         """)},
         ("utils.py",), 5,
         ("utils.py: no targets: no nn.Module subclass or instance is defined here, and nothing is marked "
          "@gradlint.target",
          "gradlint: no target analyzed: 1 file without a target (utils.py) (exit code 5; --allow-no-targets "
          "accepts a run with nothing to analyze)")),
    Case("constructor-needs-arguments", "a model whose constructor needs a value no code of the repository gives",
         {"model.py": NEEDS_DEPTH},
         ("model.py",), 2,
         ("model.py:5: could not analyze model.py::Net: Net's constructor needs depth, and gradlint found no value "
          "for it: no call of Net in the repository gives it",
          'hint: give it in pyproject.toml, [tool.gradlint] targets = [{ path = "model.py::Net", kwargs = '
          '{ depth = ... } }]; `gradlint init model.py` writes that table with every value it found')),
    Case("constructor-value-computed-at-run-time", "a constructor value the training script computes at run time",
         {"model.py": NEEDS_DEPTH, "train.py": src("""
             import json

             from model import Net

             depth = json.load(open("config.json"))["depth"]
             model = Net(depth, width=32)
         """)},
         ("model.py",), 2,
         ("model.py:5: could not analyze model.py::Net: Net's constructor needs depth, and gradlint found no value "
          "for it: train.py:5 computes it at run time (json.load(open('config.json'))['depth'])",
          "`gradlint init model.py` writes that table")),
    Case("constructor-values-found", "constructor values found in the repository: the report says where each came "
                                     "from, and which were assumed",
         {"model.py": src("""
             import torch.nn as nn


             class LM(nn.Module):
                 def __init__(self, ntoken, width):
                     super().__init__()
                     self.emb = nn.Embedding(ntoken, width)
                     self.head = nn.Linear(width, ntoken)

                 def forward(self, x):
                     return self.head(self.emb(x))
         """), "train.py": src("""
             import argparse

             from data import Corpus
             from model import LM

             parser = argparse.ArgumentParser()
             parser.add_argument("--width", type=int, default=32)
             args = parser.parse_args()
             corpus = Corpus("data/")
             ntokens = len(corpus.dictionary)
             model = LM(ntokens, args.width)
         """)},
         ("model.py",), 0,
         ("arguments: width=32 from train.py:11",
          "ntoken=1000 assumed (vocabulary size; train.py:10 computes it at run time (len(corpus.dictionary)))"),
         summary="the report's arguments line: each value with the file and line it came from"),
    Case("misspelt-constructor-argument", "a configured constructor argument the class does not take: the closest "
                                          "one it does",
         {"model.py": NEEDS_DEPTH,
          "pyproject.toml": '[tool.gradlint]\ntargets = [{ path = "model.py::Net", inputs = [4, 64], '
                            'kwargs = { dept = 2 } }]\n'},
         ("model.py",), 2,
         ("model.py:4: could not analyze model.py::Net: Net's constructor takes no argument dept",
          "hint: did you mean 'depth' for 'dept'? it takes: depth, width")),
    Case("notebook-syntax-error", "a notebook whose code cell does not parse: the cell and its line",
         {"model.ipynb": json.dumps({"cells": [
             {"cell_type": "code", "execution_count": None, "id": "a", "metadata": {}, "outputs": [],
              "source": "%matplotlib inline\nimport torch.nn as nn"},
             {"cell_type": "markdown", "id": "b", "metadata": {}, "source": "The model"},
             {"cell_type": "code", "execution_count": None, "id": "c", "metadata": {}, "outputs": [],
              "source": "class Net(nn.Module):\n    def __init__(self):\n        super().__init__(\n"}],
             "metadata": {}, "nbformat": 4, "nbformat_minor": 5})},
         ("model.ipynb",), 2,
         ("model.ipynb:cell 2:3: could not analyze model.ipynb: SyntaxError: '(' was never closed",)),
    Case("named-target-needs-arguments", "a model named on the command line whose constructor needs arguments",
         {"model.py": NEEDS_DEPTH},
         ("model.py::Net",), 2,
         ("model.py:5: could not analyze model.py::Net: Net's constructor needs depth, and gradlint found no value "
          "for it",)),
    Case("constructor-raises", "a constructor that raises: the user's traceback, their frames only",
         {"model.py": src("""
             import torch.nn as nn


             def make_layer(width):
                 if width % 16:
                     raise ValueError(f"width {width} must be a multiple of 16")
                 return nn.Linear(width, width)


             class Net(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.fc = make_layer(60)

                 def forward(self, x):
                     return self.fc(x)
         """)},
         ("model.py",), 2,
         ("model.py:6: could not analyze model.py::Net: building Net raised ValueError: width 60 must be a "
          "multiple of 16",
          'File "model.py", line 13, in __init__', 'File "model.py", line 6, in make_layer'),
         absent=("gradlint/", "site-packages")),
    Case("forward-raises", "a forward that raises on the example inputs",
         {"model.py": src("""
             import torch.nn as nn


             class Net(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.fc = nn.Linear(8, 8)

                 def forward(self, x):
                     h = self.fc(x)
                     return self.head(h)
         """)},
         ("model.py", "--input-shape", "4,8"), 2,
         ("model.py:11: could not analyze model.py::Net: forward raised AttributeError on the example inputs (4, 8) "
          "float32 (from --input-shape): 'Net' object has no attribute 'head'",
          'File "model.py", line 11, in forward'),
         absent=("site-packages",)),
    Case("inputs-do-not-fit-first-layer", "declared inputs of the wrong shape for the first layer",
         {"model.py": src("""
             import torch.nn as nn

             import gradlint


             @gradlint.target(inputs=(8, 32))
             class Net(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.fc = nn.Linear(64, 10)

                 def forward(self, x):
                     return self.fc(x)
         """)},
         ("model.py",), 2,
         ("model.py:13: could not analyze model.py::Net: the example inputs (8, 32) float32 (declared by "
          "@gradlint.target) do not fit fc = Linear(in_features=64, out_features=10, bias=True): it takes (..., 64), "
          "got (8, 32) float32",
          "hint: fc is the first layer forward calls; declare inputs it takes, e.g. @gradlint.target(inputs=(8, 64))"),
         absent=("GL901", "E1")),
    Case("configured-inputs-do-not-fit", "inputs declared in [tool.gradlint] that do not fit the first layer",
         {"pyproject.toml": src("""
             [tool.gradlint]
             targets = [
                 { path = "model.py::Net", inputs = [8, 32] },
             ]
         """), "model.py": src("""
             import torch.nn as nn


             class Net(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.fc = nn.Linear(64, 10)

                 def forward(self, x):
                     return self.fc(x)
         """)},
         ("model.py",), 2,
         ("model.py:10: could not analyze model.py::Net: the example inputs (8, 32) float32 (declared in "
          "pyproject.toml:3) do not fit fc = Linear(in_features=64, out_features=10, bias=True)",
          "hint: fc is the first layer forward calls; declare inputs it takes, e.g. inputs = [8, 64] in the "
          "target's [tool.gradlint] entry")),
    Case("input-shape-wrong-channels", "--input-shape with the wrong number of channels for a convolution",
         {"cnn.py": CNN},
         ("cnn.py", "--input-shape", "2,1,32,32"), 2,
         ("cnn.py:11: could not analyze cnn.py::CNN: the example inputs (2, 1, 32, 32) float32 (from --input-shape) "
          "do not fit conv = Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1)): it takes (N, 3, H, W), got "
          "(2, 1, 32, 32) float32",
          "hint: conv is the first layer forward calls; declare inputs it takes, e.g. --input-shape 2,3,32,32")),
    Case("input-size-wrong-for-a-later-layer", "an image size the model was not written for",
         {"cnn.py": CNN},
         ("cnn.py", "--input-shape", "2,3,64,64"), 2,
         ("cnn.py:11: could not analyze cnn.py::CNN: the example inputs (2, 3, 64, 64) float32 (from --input-shape) "
          "do not fit head = Linear(in_features=7200, out_features=10, bias=True): it takes (..., 7200), got "
          "(2, 30752) float32",
          "hint: head gets its input from the layers before it")),
    Case("float-inputs-into-an-embedding", "float inputs where the model takes token ids",
         {"lm.py": src("""
             import torch.nn as nn


             class LM(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.emb = nn.Embedding(1000, 16)
                     self.out = nn.Linear(16, 1000)

                 def forward(self, ids):
                     return self.out(self.emb(ids))
         """)},
         ("lm.py", "--input-shape", "4,16"), 2,
         ("lm.py:11: could not analyze lm.py::LM: the example inputs (4, 16) float32 (from --input-shape) do not fit "
          "emb = Embedding(1000, 16): it takes integer token ids below 1000, got (4, 16) float32",
          "e.g. @gradlint.target(inputs=gradlint.tokens((4, 32), vocab=1000))")),
    Case("inputs-not-inferred", "a forward input gradlint cannot infer: named, with the line of forward; the "
         "verdict is unknown (exit 2), since the analysis runs from parameter shapes only",
         {"gate.py": src("""
             import torch.nn as nn


             class Gate(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.fc = nn.Linear(8, 8)

                 def forward(self, x, z):
                     return self.fc(x) * z.sigmoid()
         """)},
         ("gate.py",), 2,
         ("inputs: none (could not infer example inputs: nothing says what forward's parameter 'z' (gate.py:9) "
          "takes: no layer gradlint knows reads it, and its name follows no convention",
          "declare them, e.g. @gradlint.target(inputs=[(8, 8), <shape of z>])")),
    Case("inferred-inputs-forward-raises", "inferred inputs on which the forward raises",
         {"shift.py": src("""
             import torch.nn as nn


             class Shift(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.fc = nn.Linear(3, 3)

                 def forward(self, x, t):
                     return self.fc(x) + t
         """)},
         ("shift.py",), 2,
         ("shift.py:10: could not analyze shift.py::Shift: forward raised RuntimeError on the example inputs (8, 3) "
          "float32, (8,) int64 ids < 1000 (inferred by gradlint)",
          "hint: gradlint inferred these inputs, and the forward raised on every candidate it tried",
          'File "shift.py", line 10, in forward')),
    Case("untraceable-model", "a forward torch.export cannot trace: the fallback graph, an info finding (GL901), and "
         "an unknown verdict that fails the gate, since the fallback cannot see every path",
         {"model.py": src("""
             import torch.nn as nn


             class Net(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.fc = nn.Linear(8, 8)

                 def forward(self, x):
                     if x.sum() > 0:  # data-dependent control flow
                         return self.fc(x)
                     return self.fc(-x)
         """)},
         ("model.py", "--input-shape", "4,8"), 2,
         ("model.py:4:1: GL901 [info] analyzed through the leaf modules in call order",
          "model.py::Net: unknown (attenuation +0.0 decades, analysis: module-order)",
          "unknown: analyzed from the leaf modules in call order, which cannot see functional ops and residual paths")),
    Case("unknown-op", "an op the engine has no rule for on the gradient's path: an info finding (GL902), and an "
         "unknown verdict that fails the gate, since the gradient upstream of it is unknown",
         {"model.py": src("""
             import torch
             import torch.nn as nn


             class Net(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.fc = nn.Linear(8, 8)

                 def forward(self, x):
                     return torch.special.bessel_j0(self.fc(x))
         """)},
         ("model.py", "--input-shape", "4,8"), 2,
         ("model.py:11:1: GL902 [info] no transfer rule for special_bessel_j0 in the model",
          "model.py::Net: unknown (attenuation +0.0 decades, analysis: export)",
          "unknown: the gradient of fc.weight and 1 more is unknown: upstream of special_bessel_j0 (in the model), "
          "which has no transfer rule")),
    Case("custom-backward", "a custom torch.autograd.Function on the gradient's path: an info finding (GL905), and "
         "an unknown verdict that fails the gate until --probe measures the model's own backward, since the static "
         "numbers assume every backward is its forward's derivative",
         {"model.py": src("""
             import torch
             import torch.nn as nn


             class FusedTanh(torch.autograd.Function):
                 # tanh with a hand-written backward: the exact derivative, from the saved output.
                 @staticmethod
                 def forward(ctx, x):
                     y = torch.tanh(x)
                     ctx.save_for_backward(y)
                     return y

                 @staticmethod
                 def backward(ctx, g):
                     (y,) = ctx.saved_tensors
                     return g * (1 - y * y)


             class Net(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.fc = nn.Linear(8, 8)

                 def forward(self, x):
                     return FusedTanh.apply(self.fc(x))
         """)},
         ("model.py", "--input-shape", "4,8"), 2,
         ("GL905 [info] a custom autograd.Function FusedTanh (model.py:5) sits on a gradient path",
          "model.py::Net: unknown (attenuation",
          "unknown: the model's own backward may differ from its graph: custom autograd.Function FusedTanh",
          "such as a parallel scan; trust it with trust-custom-backward = true")),
    Case("nested-outputs", "nested outputs with non-tensor values in them: every tensor is an output",
         {"model.py": src("""
             import torch.nn as nn


             class Net(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.fc = nn.Linear(8, 8)

                 def forward(self, x):
                     h = self.fc(x)
                     return {"logits": h, "extras": [(x, "inputs"), None], "steps": 3}
         """)},
         ("model.py", "--input-shape", "4,8"), 0,
         ("model.py::Net: healthy (attenuation +0.0 decades, analysis: export)",)),
    Case("no-tensor-output", "a forward that returns no tensor",
         {"model.py": src("""
             import torch.nn as nn


             class Net(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.fc = nn.Linear(8, 8)

                 def forward(self, x):
                     self.cache = self.fc(x)
         """)},
         ("model.py", "--input-shape", "4,8"), 2,
         ("model.py:9: could not analyze model.py::Net: Net.forward returns no tensor: no gradient can flow back "
          "from its output",
          "hint: return the tensor (or the tuple, list or dict of tensors) the loss is computed from")),
    Case("no-parameters", "a module without parameters: skipped with a note (and nothing else analyzed: exit 5)",
         {"model.py": src("""
             import torch
             import torch.nn as nn


             class Swish(nn.Module):
                 def forward(self, x):
                     return x * torch.sigmoid(x)
         """)},
         ("model.py",), 5,
         ("model.py:5: skipped Swish: it has no parameters, so there is no gradient to predict (name it, "
          "model.py::Swish, to check it anyway)",
          "gradlint: no target analyzed: 1 target skipped (it has no parameters, so there is no gradient to "
          "predict)")),
    Case("prints-heavily", "a file that prints at import, in its constructor and in forward: --format json stays "
                           "one JSON document on stdout",
         {"model.py": src("""
             import torch.nn as nn

             for i in range(2000):
                 print("loading weights", i)


             class Net(nn.Module):
                 def __init__(self):
                     super().__init__()
                     print("building Net")
                     self.fc = nn.Linear(8, 8)

                 def forward(self, x):
                     print("forward", tuple(x.shape))
                     return self.fc(x)
         """)},
         ("model.py", "--input-shape", "4,8", "--format", "json"), 0,
         ('"target": "model.py::Net"', "loading weights 1999", "building Net", "forward (4, 8)"),
         extra=_stdout_is_one_json_document, subprocess=True, stdout_in_doc=False,
         summary="the prints go to stderr; stdout is one JSON document"),
    Case("changes-working-directory", "a file that changes the working directory at import and in its constructor",
         {"a.py": src("""
             import os

             import torch.nn as nn

             os.chdir("/")


             class Net(nn.Module):
                 def __init__(self):
                     super().__init__()
                     os.chdir(os.path.expanduser("~"))
                     self.fc = nn.Linear(8, 8)

                 def forward(self, x):
                     return self.fc(x)
         """), "b.py": LINEAR},
         ("a.py", "b.py", "--input-shape", "4,8"), 0,
         ("a.py::Net: healthy", "b.py::Net: healthy")),
    Case("changes-torch-global-state", "a file that changes torch's global settings: they apply to its own models "
                                       "(the default dtype) and are undone before the next file",
         {"a.py": src("""
             import torch
             import torch.nn as nn

             torch.set_default_dtype(torch.float64)
             torch.set_grad_enabled(False)
             torch.use_deterministic_algorithms(True)
             torch.set_num_threads(1)
             torch.autograd.set_detect_anomaly(True)


             class Net(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.fc = nn.Linear(8, 8)

                 def forward(self, x):
                     return self.fc(x)
         """), "b.py": LINEAR},
         ("a.py", "b.py", "--input-shape", "4,8"), 0,
         ("a.py::Net: healthy", "inputs: (4, 8) float64", "b.py::Net: healthy", "inputs: (4, 8) float32")),
    Case("latin-1-source", "a latin-1 file with a coding declaration",
         {"model.py": src("""
             # -*- coding: latin-1 -*-
             import torch.nn as nn


             class CaféNet(nn.Module):
                 \"\"\"Le réseau du café.\"\"\"

                 def __init__(self):
                     super().__init__()
                     self.fc = nn.Linear(8, 8)

                 def forward(self, x):
                     return self.fc(x)
         """).encode("latin-1")},
         ("model.py", "--input-shape", "4,8"), 0,
         ("model.py::CaféNet: healthy",)),
    Case("undecodable-source", "a file that is not UTF-8 and declares no encoding",
         {"model.py": src("""
             import torch.nn as nn

             # Réseau, saved in latin-1 without saying so
             class Net(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.fc = nn.Linear(8, 8)
         """).encode("latin-1")},
         ("model.py",), 2,
         ("model.py:3: could not analyze model.py: the file is not UTF-8 and declares no encoding: byte 0xe9 on "
          "line 3 is not valid UTF-8",
          "hint: save the file as UTF-8, or declare its encoding on its first or second line, e.g. "
          "`# -*- coding: latin-1 -*-` (PEP 263)")),
    Case("wrong-coding-declaration", "a file whose bytes do not match its coding declaration",
         {"model.py": "# coding: utf-8\nimport torch.nn as nn\n\n# R\u00e9seau\n".encode("latin-1")},
         ("model.py",), 2,
         ("model.py:4: could not analyze model.py: the file declares the encoding utf-8 on line 1, but byte 0xe9 on "
          "line 4 is not valid utf-8",
          "hint: fix the coding declaration, or save the file as utf-8")),
    Case("many-files-few-models", "a directory of 200 files that never mention torch and one model: the 200 are "
                                  "not imported (each would raise if it were)",
         {**{f"models/util_{i:03}.py": f'raise RuntimeError("util_{i:03}.py was imported")\n' for i in range(200)},
          "models/zz_net.py": LINEAR},
         ("models", "--input-shape", "4,8"), 0,
         ("models/zz_net.py::Net: healthy",), absent=("was imported", "no targets"),
         shown=("models/util_000.py", "models/zz_net.py"), extra=_nothing_written),
    Case("directory-without-models", "a directory in which no file mentions torch",
         {"scripts/a.py": "print('hello')\n", "scripts/b.py": "import json\n"},
         ("scripts",), 5,
         ("scripts: no targets: none of its 2 Python files mentions torch, nn, Module, Model or gradlint, so none "
          "was imported (name a file to import it anyway)",)),
    # Code that ends the process runs in a worker process, which dies instead of the run.
    Case("os-exit-at-import", "a file that calls os._exit() at import: its worker process dies, the run goes on",
         {"a.py": src("""
             import os

             import torch

             os._exit(3)
         """), "b.py": LINEAR},
         ("a.py", "b.py", "--input-shape", "4,8"), 2,
         ("a.py: could not analyze a.py: the worker process died with exit code 3 while importing a.py",
          "b.py::Net: healthy")),
    Case("segfault-at-import", "a file that crashes the interpreter at import (a segfault in native code)",
         {"a.py": src("""
             import ctypes

             import torch

             ctypes.memset(0, 0, 1)  # writes to address 0
         """), "b.py": LINEAR},
         ("a.py", "b.py", "--input-shape", "4,8"), 2,
         ("a.py:5: could not analyze a.py: the worker process died with signal SIGSEGV (Segmentation fault) while "
          "importing a.py", 'File "a.py", line 5 in <module>', "b.py::Net: healthy")),
    Case("segfault-in-forward", "a forward that crashes the interpreter: the file's other models are still checked",
         {"model.py": src("""
             import ctypes

             import torch.nn as nn


             class Crashes(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.fc = nn.Linear(8, 8)

                 def forward(self, x):
                     ctypes.memset(0, 0, 1)  # writes to address 0
                     return self.fc(x)


             class Survives(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.fc = nn.Linear(8, 8)

                 def forward(self, x):
                     return self.fc(x)
         """)},
         ("model.py", "--input-shape", "4,8"), 2,
         ("model.py:12: could not analyze model.py::Crashes: the worker process died with signal SIGSEGV "
          "(Segmentation fault) while checking model.py::Crashes", "model.py::Survives: healthy")),
    Case("sys-exit-at-import", "a file that calls sys.exit() at import",
         {"a.py": src("""
             import sys

             import torch

             sys.exit("this is a script")
         """), "b.py": LINEAR},
         ("a.py", "b.py", "--input-shape", "4,8"), 2,
         ("a.py:5: could not analyze a.py: the file called sys.exit('this is a script') while being imported",
          "b.py::Net: healthy")),
    Case("forward-never-returns", "a forward that never returns: killed after --timeout seconds (default 300)",
         {"model.py": src("""
             import time

             import torch.nn as nn


             class Sleeper(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.fc = nn.Linear(8, 8)

                 def forward(self, x):
                     while True:
                         time.sleep(0.05)


             class Fine(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.fc = nn.Linear(8, 8)

                 def forward(self, x):
                     return self.fc(x)
         """)},
         ("model.py", "--input-shape", "4,8", "--timeout", "2"), 2,
         ("model.py:13: could not analyze model.py::Sleeper: timed out after 2 s while checking model.py::Sleeper",
          "hint: raise --timeout (now 2 s)", "model.py::Fine: healthy")),
    # Files that are no regular Python file: never opened by gradlint's own process, where a FIFO
    # would block it; notes in a directory walk, errors when named.
    Case("links-and-fifos-in-a-directory", "symbolic links in a loop or to nowhere, and a FIFO, beside a model: "
                                           "skipped with a note each",
         {"models/good.py": LINEAR}, ("models", "--input-shape", "4,8"), 0,
         ("models/x.py: skipped: it is a symbolic link in a loop (models/x.py -> y.py -> x.py)",
          "models/y.py: skipped: it is a symbolic link in a loop",
          "models/.#good.py: skipped: it is a symbolic link to nowhere.py, which does not exist",
          "models/pipe.py: skipped: it is a FIFO (named pipe), not a regular file", "models/good.py::Net: healthy"),
         absent=("Traceback",), setup=_links_and_a_fifo, subprocess=True),
    Case("symlink-loop-named", "a symbolic link in a loop, named on the command line",
         {}, ("x.py",), 2,
         ("x.py: could not analyze x.py: it is a symbolic link in a loop (x.py -> y.py -> x.py)",
          "hint: point the link at a real file, or remove it"), absent=("Traceback",), setup=_loop),
    Case("dangling-symlink", "a symbolic link to a file that does not exist",
         {}, ("model.py",), 2,
         ("model.py: could not analyze model.py: it is a symbolic link to model_v2.py, which does not exist",
          "hint: point the link at a real file, or remove it"), setup=_dangling),
    Case("fifo-named", "a FIFO (named pipe) named on the command line: refused, never opened",
         {}, ("model.py",), 2,
         ("model.py: could not analyze model.py: it is a FIFO (named pipe), not a regular file",
          "hint: gradlint imports regular files only"), setup=_fifo),
    Case("not-a-python-file", "a file that is not a .py file",
         {"notes.txt": "Net: a Linear layer, 8 -> 8\n"}, ("notes.txt",), 2,
         ("notes.txt: could not analyze notes.txt: it is not a Python file: gradlint imports .py files and notebooks, "
          "and notes.txt has the suffix .txt", "hint: name a .py file, file.py::Name or a directory"),
         absent=("gradlint.base", "LoadError")),
    Case("torchscript-module", "a TorchScript module named on the command line",
         {"model.py": src("""
             import torch
             import torch.nn as nn


             class Net(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.fc = nn.Linear(8, 8)

                 def forward(self, x):
                     return self.fc(x)


             scripted = torch.jit.script(Net())
         """)},
         ("model.py::scripted", "--input-shape", "4,8"), 2,
         ("model.py:14: could not analyze model.py::scripted: scripted is a TorchScript module (torch.jit.script of "
          "Net); gradlint analyzes the Python nn.Module, whose forward it can trace",
          "hint: check the module before scripting it: name its class or a factory that builds it, e.g. "
          "model.py::Net"), absent=("Traceback", "not supported on ScriptModules")),
    Case("torchscript-beside-its-class", "a TorchScript instance of a class the file defines: the class is checked",
         {"model.py": src("""
             import torch
             import torch.nn as nn


             class Net(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.fc = nn.Linear(8, 8)

                 def forward(self, x):
                     return self.fc(x)


             scripted = torch.jit.script(Net())
         """)},
         ("model.py", "--input-shape", "4,8"), 0,
         ("model.py:14: skipped scripted: it is a TorchScript module, which gradlint cannot analyze; its class Net is "
          "checked", "model.py::Net: healthy")),
    Case("meta-device-instance", "a module-level instance on the meta device: its class is not built again with "
                                 "real weights",
         {"model.py": src("""
             import torch
             import torch.nn as nn


             class Big(nn.Module):
                 def __init__(self, width=64):
                     super().__init__()
                     print("building Big, weights on", torch.empty(0).device)
                     self.layers = nn.Sequential(*[nn.Linear(width, width) for _ in range(4)])

                 def forward(self, x):
                     return self.layers(x)


             with torch.device("meta"):
                 model = Big()
         """)},
         ("model.py", "--input-shape", "4,64"), 0,
         ("model.py:5: skipped Big: the file builds it on the meta device as model (line 16), which is checked "
          "instead, without allocating weights", "model.py::model: healthy", "building Big, weights on meta"),
         absent=("building Big, weights on cpu", "model.py::Big:"), subprocess=True),
    Case("probe-complex-parameters", "--probe on a model with complex parameters: the model's own backward measures "
         "them, in its own dtype",
         {"model.py": src("""
             import torch
             import torch.nn as nn


             class Spectral(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.w = nn.Parameter(torch.randn(8, 8, dtype=torch.cfloat))

                 def forward(self, x):
                     return (x.to(torch.cfloat) @ self.w).real
         """)},
         ("model.py", "--input-shape", "4,8", "--probe", "--seeds", "1"), 0,
         ("measured verdict healthy (predicted unknown: the measurement decides); no parameter with a known "
          "prediction to compare; 1 unknown predictions not compared",
          "probe: measured in the model's own dtype, not float64"),
         absent=("UserWarning", "Casting complex values"),
         masks=((r"batch (\d+), [\d.]+ s\)", r"batch \1, … s)"),)),
    Case("out-of-memory-in-constructor", "a constructor that allocates more memory than there is",
         {"model.py": src("""
             import torch
             import torch.nn as nn


             class Net(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.fc = nn.Linear(8, 8)
                     self.table = torch.empty(2**50)  # 4 PB

                 def forward(self, x):
                     return self.fc(x)
         """)},
         ("model.py", "--input-shape", "4,8"), 2,
         ("model.py:9: could not analyze model.py::Net: building Net raised RuntimeError: [enforce fail at",
          "can't allocate memory",
          'hint: build the model on the meta device (`with torch.device("meta"): model = Net()`, which gradlint '
          "analyzes without allocating weights), check one file at a time (--jobs 1), or use smaller inputs")),
    Case("worker-killed-out-of-memory", "a worker process the kernel's OOM killer ends (SIGKILL)",
         {"hog.py": src("""
             import os
             import signal

             import torch

             weights = torch.ones(50_000_000)  # 200 MB, written
             os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer sends
         """), "b.py": LINEAR},
         ("hog.py", "b.py", "--input-shape", "4,8"), 2,
         ("hog.py: could not analyze hog.py: the worker process died with signal SIGKILL (Killed) while importing "
          "hog.py", "hint: probably out of memory: the kernel's OOM killer ends a process with SIGKILL; its memory "
          "peaked at", "check one file at a time (--jobs 1)", "b.py::Net: healthy"),
         masks=((r"peaked at [\d.]+ ([KMG]?B)", r"peaked at … \1"),)),
    Case("thread-left-running", "a file that leaves a thread running: the next file gets a fresh worker process",
         {"a.py": src("""
             import threading
             import time

             import torch.nn as nn


             def prefetch():
                 while True:
                     time.sleep(0.01)


             threading.Thread(target=prefetch, name="prefetcher", daemon=True).start()


             class Net(nn.Module):
                 def __init__(self):
                     super().__init__()
                     self.fc = nn.Linear(8, 8)

                 def forward(self, x):
                     return self.fc(x)
         """), "b.py": LINEAR},
         ("a.py", "b.py", "--input-shape", "4,8"), 0,
         ("a.py: its code left 1 thread running (prefetcher started at a.py:12); the next file is checked in a "
          "fresh worker process, and none of its reports is cached", "a.py::Net: healthy", "b.py::Net: healthy")),
    Case("training-script-run-directory", "a training script that changes to its run directory and parses its "
                                          "command line at import, and writes from its constructor",
         {"train.py": src("""
             import argparse
             import os

             import torch.nn as nn

             RUN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "runs", "exp1")
             os.makedirs(RUN_DIR, exist_ok=True)
             os.chdir(RUN_DIR)
             parser = argparse.ArgumentParser()
             parser.add_argument("--depth", type=int, default=4)


             class Net(nn.Module):
                 def __init__(self):
                     super().__init__()
                     args = parser.parse_args()  # sys.argv is [train.py], as at import
                     with open("config.txt", "w") as f:  # in the run directory, as when run normally
                         f.write(f"depth={args.depth}\\n")
                     self.layers = nn.Sequential(*[nn.Linear(8, 8) for _ in range(args.depth)])

                 def forward(self, x):
                     return self.layers(x)
         """)},
         ("train.py", "--input-shape", "4,8"), 0,
         ("train.py::Net: healthy",), absent=("unrecognized arguments",), extra=_left_the_project_alone),
    Case("baseline-nested-too-deeply", "a baseline file nested 100,000 levels deep",
         {"model.py": LINEAR}, ("model.py", "--baseline", "baseline.json"), 2,
         ("gradlint: baseline.json: cannot read the baseline: its JSON is nested too deeply; fix it, or delete it and "
          "rerun with --baseline to record a new one",), absent=("Traceback", "RecursionError"), setup=_deep_baseline),
    Case("baseline-negative-count", "a baseline entry with a negative count",
         {"model.py": LINEAR, "baseline.json": json.dumps(
             {"version": 1, "tool": "gradlint", "fingerprints": [{"fingerprint": "0" * 32, "count": -3}]}, indent=2)},
         ("model.py", "--baseline", "baseline.json"), 2,
         ('gradlint: baseline.json: entry 1 of "fingerprints" has count -3, not a whole number of at least 1; fix it, '
          "or delete it and rerun with --baseline to record a new one",)),
]


# --- running a case -------------------------------------------------------------------------

def write_project(case: Case, project: Path) -> None:
    for rel, content in case.files.items():
        path = project / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    if case.setup is not None:
        case.setup(project)


def normalize(text: str, project: Path) -> str:
    for form in {str(project), os.path.realpath(project)}:
        text = text.replace(form + os.sep, "").replace(form, ".")
    return text


def run_case(case: Case, base: Path) -> Outcome:
    """Runs a case's command line in a fresh project directory under ``base``."""
    project = base / "project"
    project.mkdir(parents=True)
    write_project(case, project)
    cache = base / "cache"  # outside the project: the project must stay as it was written
    args = ["check", *case.args]
    env = {"GRADLINT_CACHE_DIR": str(cache), "NO_COLOR": "1", "GRADLINT_NO_PROGRESS": "1"}
    if case.subprocess:
        def limit() -> None:
            import resource
            resource.setrlimit(resource.RLIMIT_AS, (case.limit_bytes, case.limit_bytes))

        proc = subprocess.run([sys.executable, "-m", "gradlint", *args], cwd=project, capture_output=True,
                              text=True, env={**os.environ, **env}, timeout=600,
                              preexec_fn=limit if case.limit_bytes else None)
        return Outcome(proc.returncode, normalize(proc.stderr + proc.stdout, project),
                       normalize(proc.stdout, project), project)
    import torch
    from click.testing import CliRunner

    from gradlint.cli import main

    torch.manual_seed(0)
    before = os.getcwd()
    os.chdir(project)
    try:
        result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    finally:
        os.chdir(before)
    return Outcome(result.exit_code, normalize(result.output, project), normalize(result.stdout, project), project)


def assert_case(case: Case, outcome: Outcome) -> None:
    shown = f"\n--- output of {case.id} ---\n{outcome.output}"
    assert outcome.exit_code == case.exit_code, f"exit code {outcome.exit_code}, expected {case.exit_code}{shown}"
    for fragment in case.fragments:
        assert fragment in outcome.output, f"missing {fragment!r}{shown}"
    for fragment in case.absent:
        assert fragment not in outcome.output, f"unexpected {fragment!r}{shown}"
    if case.extra is not None:
        case.extra(outcome)


# --- docs/errors.md -----------------------------------------------------------------------

# Per-parameter numbers depend on the random init and on the engine's details; the doc is about
# the messages, so those lines are left out of it.
_NUMBER_LINES = re.compile(r"^  (weakest weight gradients|strongest:|attribution \(decades\):)")
_MAX_LINES = 30

HEADER = f"""# What gradlint says when it cannot analyze a model

Generated by `{REGENERATE}` from the cases in `tests/test_errors.py`, which run each
one through the command line; a test fails when this file is stale.

`gradlint check` imports the files it is given and runs their models' constructors and
`forward`, as pytest runs test files. Whatever goes wrong in one file or one model is reported
where it happened, `file:line:`, with a hint where there is something to do and the
traceback of the user's own code (gradlint's, torch's and the standard library's frames left
out), and the other files and models are still checked. The exit code is 2 when a target
could not be analyzed or its verdict is `unknown`, else 1 when a finding reaches `--fail-on`,
else 0. Notes (a file without models, a skipped class) go to stderr and do not change the exit
code.

A verdict is `unknown` when gradlint would otherwise call the model healthy but some of the
numbers it rests on are unknown: a module-order fallback analysis (it cannot see functional
ops and residual paths, so it cannot prove a gradient reaches a weight), an op with no
transfer rule on the gradient's path (the gradient of every parameter upstream of it is
unknown), a backward hook or a custom `torch.autograd.Function` on a gradient path (the
static numbers assume every op's backward is the derivative of its forward, which holds for a
Function that only computes that derivative efficiently, a parallel scan, but cannot be told
from one that scales or replaces the gradient; `trust-custom-backward = true` trusts the
Functions, docs/configuration.md), or a model with no parameters to predict (a dynamically
quantized model keeps its weights packed outside `nn.Parameter`). The report's `unknown:` line
says which, and `--format json` lists them under `summary.unknown`. `report.ok` is False and
`gradlint.assert_healthy` fails alike; a vanishing, exploding or blocked verdict keeps its own
exit code 1. After `--probe` the measured verdict decides, and it has its own finding (GL101,
GL102 or GL701), so the CLI's exit code, `report.ok` and `assert_healthy` agree. Unknown
predictions are shown as `n/a`, never as `-inf` or 0, and the probe's agreement line counts
every parameter (a zero against a nonzero measurement is infinitely far apart).

What the files' code changes while gradlint runs it is undone after each file and each
model: the working directory, warning filters, and torch's default dtype and device, grad
mode, deterministic-algorithms flag, thread count and anomaly mode; in a worker process, also
alarms and signal handlers. A default dtype set at a file's import still applies when that
file's models are built, and so does the working directory its import left when their
constructors run, as in the user's own process; `sys.argv` is `[file]` for its import, its
constructors and `forward`. Threads its code leaves running are noted, the next file is
checked in a fresh worker process, and nothing of the file is cached. What the code prints
goes to stderr, so `--format json` keeps stdout one JSON document.

In a directory, files that mention none of `torch`, `nn`, `Module`, `Model` and `gradlint`
are not imported: they cannot define a model except through a base class imported under
another name. Name such a file on the command line to check it anyway.

Paths are shown relative to the project directory, and per-parameter lines are left out.

| case | exit code | message |
|---|---|---|
"""


def _collapse(lines: list[str]) -> list[str]:
    """Runs of lines that differ only in their numbers (a loop's prints) shown by their ends."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        shape = re.sub(r"\d+", "#", lines[i])
        j = i
        while j + 1 < len(lines) and re.sub(r"\d+", "#", lines[j + 1]) == shape:
            j += 1
        if j - i >= 4:
            out += [lines[i], lines[i + 1], f"... ({j - i - 2} more lines like these)", lines[j]]
        else:
            out += lines[i:j + 1]
        i = j + 1
    return out


def doc_output(case: Case, outcome: Outcome) -> str:
    text = outcome.output
    for pattern, replacement in case.masks:
        text = re.sub(pattern, replacement, text)
    if not case.stdout_in_doc and outcome.stdout and text.endswith(outcome.stdout):
        kind = "one JSON document" if text.lstrip().startswith("{") or outcome.stdout.lstrip().startswith("{") else ""
        text = text[:-len(outcome.stdout)] + f"(stdout: {kind or 'the report'})"
    lines = _collapse([line for line in text.rstrip().splitlines() if not _NUMBER_LINES.match(line)])
    if len(lines) > _MAX_LINES:
        lines = [*lines[:_MAX_LINES], f"... ({len(lines) - _MAX_LINES} more lines)"]
    return "\n".join(lines)


def _summary_line(case: Case, outcome: Outcome) -> str:
    if case.summary:
        return case.summary
    first = case.fragments[0]
    line = next((ln for ln in outcome.output.splitlines() if first in ln), first)
    for pattern, replacement in case.masks:
        line = re.sub(pattern, replacement, line)
    return line.strip().replace("|", "\\|").replace("`", "'")


def _fence(text: str, lang: str = "") -> str:
    ticks = "```" if "```" not in text else "````"
    return f"{ticks}{lang}\n{text}\n{ticks}"


def chaos_markdown() -> str:
    """The section on tests/test_chaos.py: what its tree holds, and what it asserts."""
    import importlib.util

    # By its path: `python -m tests.test_errors --write` does not put tests/ on sys.path.
    spec = importlib.util.spec_from_file_location("_chaos_tree", Path(__file__).with_name("test_chaos.py"))
    test_chaos = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = test_chaos  # dataclasses look their module up
    spec.loader.exec_module(test_chaos)

    counts = test_chaos.composition()
    rows = "".join(f"| {kind} | {n} |\n" for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"""
<a id="chaos"></a>

## All of it at once: the chaos test

`tests/test_chaos.py` (slow; it runs with the suite) generates a tree of {sum(counts.values())} files and
checks it with `gradlint check models --jobs 2 --timeout {test_chaos.TIMEOUT} --format json` in an address
space capped at {test_chaos.LIMIT_BYTES / 2**30:g} GiB, or {test_chaos.HEADROOM_BYTES / 2**30:g} GiB above what
importing torch maps where that is more (`setrlimit(RLIMIT_AS)`, as `ulimit -v` does): once cold,
then {test_chaos.INTERRUPTIONS} times with SIGINT sent to the whole process group (as Ctrl-C does) at random
moments, from an empty cache that each interrupted run leaves to the next, then once more to the
end. The tree:

| files | count |
|---|---|
{rows}
It asserts, for every run: each report of a file without hostile code equals the report of a
clean single-file run of that file; each hostile file is named with its reason (the signal, the
exit code, the timeout, `can't allocate memory` and the memory hint, `probably out of memory`,
the thread left running, the link that loops, the FIFO); no file is reported twice, and the
files reported plus those the interruption note counts are all of them; no worker process
outlives its run. After the runs: the project is byte-identical (`git status` clean in the
tree's repository), the files that change directory wrote into their run directories only, and
the cache holds exactly the files whose check was complete and clean, each entry equal to the
clean run's report, none from a file the interruption cut off, from the file whose thread ran
beside its checks, or from a file that could not be analyzed; the last run is served every
entry the interrupted runs wrote (none is rewritten) and prints what the cold run printed. The
test prints the counts of each run.
"""


def errors_markdown(outcomes: dict[str, Outcome]) -> str:
    """docs/errors.md from the table and each case's real output."""
    rows, sections = [], []
    for case in CASES:
        outcome = outcomes[case.id]
        rows.append(f"| [{case.title}](#{case.id}) | {outcome.exit_code} | `{_summary_line(case, outcome)}` |\n")
        files = []
        for rel in case.shown or tuple(case.files):
            content = case.files[rel]
            text = (content.decode("latin-1") if isinstance(content, bytes) else content).rstrip()
            files.append(f"`{rel}`:\n\n{_fence(text, 'python')}\n" if text else f"`{rel}`: empty.\n")
        more = len(case.files) - len(case.shown) if case.shown else 0
        if more:
            files.append(f"and {more} more files like the first.\n")
        if case.setup is not None:
            with tempfile.TemporaryDirectory() as scratch:
                files.append(case.setup(Path(scratch)) + "\n")
        command = " ".join(["gradlint", "check", *case.args])
        sections.append(f'\n<a id="{case.id}"></a>\n\n## {case.title}\n\n' + "\n".join(files) +
                        f"\n`{command}` exits {outcome.exit_code}:\n\n{_fence(doc_output(case, outcome))}\n")
    return HEADER + "".join(rows) + "| [all of it at once: the chaos test](#chaos) | 2 | (counts below) |\n" + \
        "".join(sections) + chaos_markdown()


def all_outcomes() -> tuple[dict[str, Outcome], list[str]]:
    """Every case's outcome, and the failures of the cases' assertions (made while the projects exist)."""
    outcomes, failed = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            outcomes[case.id] = run_case(case, Path(tmp, case.id))
            try:
                assert_case(case, outcomes[case.id])
            except AssertionError as e:
                failed.append(f"{case.id}: {e}")
    return outcomes, failed


# --- tests --------------------------------------------------------------------------------

_OUTCOMES: dict[str, Outcome] = {}

try:
    import pytest
except ImportError:  # python tests/test_errors.py --write needs no pytest
    pytest = None

if pytest is not None:
    @pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
    def test_case(case: Case, tmp_path: Path) -> None:
        outcome = run_case(case, tmp_path)
        _OUTCOMES[case.id] = outcome
        assert_case(case, outcome)


def test_case_ids_are_unique_and_files_relative() -> None:
    assert len({c.id for c in CASES}) == len(CASES)
    assert all(not Path(rel).is_absolute() and ".." not in Path(rel).parts for c in CASES for rel in c.files)


def test_errors_doc_is_current(tmp_path: Path) -> None:
    outcomes = {}
    for case in CASES:
        outcomes[case.id] = _OUTCOMES.get(case.id) or run_case(case, tmp_path / case.id)
    expected = errors_markdown(outcomes)
    current = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    assert current == expected, f"docs/errors.md is stale: run `{REGENERATE}`"


# --- what gradlint promises around the user's code ---------------------------------------------

def _process_state() -> tuple:
    import warnings

    import torch

    return (torch.get_default_dtype(), torch.get_default_device(), torch.is_grad_enabled(),
            torch.are_deterministic_algorithms_enabled(), torch.get_num_threads(), torch.is_anomaly_enabled(),
            os.getcwd(), list(warnings.filters), sys.stdout, sys.stderr)


def test_what_user_code_changes_is_undone_after_each_file_and_target(tmp_path, capfd):
    from gradlint.run.runner import run_paths

    (tmp_path / "a.py").write_text(src("""
        import os
        import sys
        import warnings

        import torch
        import torch.nn as nn

        print("printed at import")
        torch.set_default_dtype(torch.float64)
        torch.set_grad_enabled(False)
        torch.use_deterministic_algorithms(True)
        torch.autograd.set_detect_anomaly(True)
        warnings.simplefilter("error")
        os.chdir("/")


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                print("printed in __init__")
                torch.set_num_threads(1)
                os.chdir(os.path.expanduser("~"))
                sys.stdout = open(os.devnull, "w")
                self.fc = nn.Linear(8, 8)

            def forward(self, x):
                print("printed in forward")
                return self.fc(x)
    """))
    (tmp_path / "b.py").write_text(LINEAR)
    before = _process_state()
    # In this process (no worker), so the process's own state is what the files changed.
    reports, notes = run_paths([str(tmp_path / "a.py"), str(tmp_path / "b.py")], cli_shapes=[(4, 8)])
    assert _process_state() == before
    assert [r.status for r in reports] == ["ok", "ok"], [r.error for r in reports]
    # The default dtype a file sets at import builds its own models, and only those.
    assert reports[0].inputs.startswith("(4, 8) float64") and reports[1].inputs.startswith("(4, 8) float32")
    out, err = capfd.readouterr()
    assert "printed" not in out
    assert "printed at import" in err and "printed in __init__" in err


def test_a_check_leaves_the_model_unchanged():
    import torch
    from torch import nn

    import gradlint

    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 2)).eval()
    model[0].bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [(p.requires_grad, p.grad) for p in model.parameters()]
    gradlint.check(model, (4, 8))
    gradlint.probe(model, (4, 8), seeds=2)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [(p.requires_grad, p.grad) for p in model.parameters()] == flags
    assert not model.training and not any(m.training for m in model.modules())


def _tree(root: Path) -> dict[str, tuple[int, bytes]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
            for p in sorted(root.rglob("*"))}


def test_a_check_writes_nothing_into_the_project(tmp_path):
    from click.testing import CliRunner

    from gradlint.cli import main

    project = tmp_path / "project"
    files = {
        "pyproject.toml": '[project]\nname = "demo"\n\n[tool.gradlint]\ninput-shape = [4, 8]\n',
        "demo/__init__.py": "",
        "demo/blocks.py": "import torch.nn as nn\n\n\ndef block(width):\n    return nn.Linear(width, width)\n",
        "demo/model.py": src("""
            import torch.nn as nn

            from .blocks import block


            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = block(8)

                def forward(self, x):
                    return self.fc(x)
        """),
        "train.py": "import helpers\nimport torch.nn as nn\n\nmodel = nn.Linear(8, 8)\n",
        "helpers.py": "SEED = 0\n",
    }
    for rel, text in files.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(text)
    before = _tree(project)
    cwd = os.getcwd()
    os.chdir(project)
    try:
        result = CliRunner().invoke(main, ["check", ".", "--format", "json"],
                                    env={"GRADLINT_CACHE_DIR": str(tmp_path / "cache")}, catch_exceptions=False)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    assert [t["target"] for t in json.loads(result.stdout)["targets"]] == ["demo/model.py::Net", "train.py::model"]
    assert _tree(project) == before  # no __pycache__, no cache, nothing touched


_NETWORK_MODULES = {"socket", "ssl", "http", "urllib.request", "requests", "httpx", "aiohttp", "urllib3", "ftplib",
                    "smtplib", "xmlrpc", "websockets"}


def test_gradlint_imports_no_network_module():
    import ast

    offenders = []
    for path in [*sorted((ROOT / "gradlint").glob("*.py")), *sorted((ROOT / "rules").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if any(name == m or name.startswith(m + ".") for m in _NETWORK_MODULES):
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders


def test_a_check_opens_no_connection(monkeypatch, tmp_path):
    import socket

    from gradlint.run.runner import run_paths

    calls = []

    def refuse(*args, **kwargs):
        # OSError, as a refused connection raises: gradlint's fallbacks catch other errors
        # too, and an AssertionError raised here could be swallowed without a trace.
        calls.append(args)
        raise OSError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    reports, _ = run_paths([str(ROOT / "examples" / "sigmoid_mlp.py")], probe=True, seeds=1)
    assert [r.status for r in reports] == ["ok"]
    assert not calls


def test_gradlint_raises_no_warning_of_its_own_on_complex_parameters():
    import warnings

    import torch
    from torch import nn

    import gradlint

    class Spectral(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(8, 8, dtype=torch.cfloat))

        def forward(self, x):
            return (x.to(torch.cfloat) @ self.w).real

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Casting complex values to real discards the imaginary part" would raise
        report = gradlint.check(Spectral(), (4, 8))
    assert report.status == "ok"


def test_gl702s_fix_is_python_that_freezes_what_it_names():
    import torch
    from torch import nn

    import gradlint

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.scales = nn.ParameterList([nn.Parameter(torch.ones(8)) for _ in range(201)])
            self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])

        def forward(self, x):
            return self.blocks[0](self.fc(x) * self.scales[0])

    model = Net()
    findings = [f for f in gradlint.check(model, (4, 8)).findings if f.code == "GL702"]
    assert findings
    for f in findings:
        freeze = f.fix.splitlines()[0].split("or freeze it: ", 1)[1]
        exec(freeze, {"model": model})  # a SyntaxError or AttributeError fails the test
    assert not model.scales[1].requires_grad and not model.scales[3].requires_grad
    assert not any(p.requires_grad for p in model.blocks[1].parameters())
    assert model.scales[0].requires_grad and model.fc.weight.requires_grad


def main(argv: list[str]) -> int:
    if argv != ["--write"]:
        print(f"usage: {REGENERATE}", file=sys.stderr)
        return 2
    outcomes, failed = all_outcomes()
    DOC.write_text(errors_markdown(outcomes), encoding="utf-8")
    print(f"wrote {DOC.relative_to(ROOT)} ({len(CASES)} cases)")
    for failure in failed:
        print(f"case failed: {failure}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
