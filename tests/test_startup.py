"""The cheap entry points stay cheap: torch is never imported by them.

Each case runs in a fresh interpreter and reads ``sys.modules`` at its end, so a stray
top-level import anywhere on the path shows up here. The times themselves are measured by
``benchmarks/scale.py startup``, not by the tests.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "matplotlib", "jsonschema", "numpy")

# Runs the command line in-process, then reports which heavy modules got imported.
_CLI = """
import json, sys
from gradlint.cli import main
sys.argv = ["gradlint", *{args!r}]
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
print(json.dumps({{"code": code, "loaded": [m for m in {heavy!r} if m in sys.modules]}}), file=sys.stderr)
"""


def _loaded(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return json.loads(proc.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["check", "--help"]])
def test_cli_answers_without_torch(args):
    out = _loaded(_CLI.format(args=args, heavy=HEAVY))
    assert out["code"] in (0, None)
    assert out["loaded"] == []


def test_import_gradlint_leaves_torch_out():
    code = ("import json, sys, gradlint\n"
            "from gradlint import target, tokens, Tokens, GradlintError, __version__\n"
            f"print(json.dumps({{'code': 0, 'loaded': [m for m in {HEAVY!r} if m in sys.modules]}}), file=sys.stderr)")
    assert _loaded(code)["loaded"] == []


# A check of a small model in a fresh interpreter: whether torch's compiler got imported, what
# torch looks like afterwards, and the report; with the compiler imported first when asked.
_CHECK = """
import json, sys
import torch, torch.nn as nn
{first}
import gradlint
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.LayerNorm(32), nn.Linear(32, 4))
report = gradlint.check(model, (torch.randn(8, 16),))
report = gradlint.check(model, (torch.randn(8, 16),))  # a second capture in the same process
# Inputs inferred by trial forwards on the meta device, through BatchNorm's Python meta kernel
# (which sits behind one of torch's _disable_dynamo wrappers).
conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3))
inferred = gradlint.check(conv)
state = {{"compiler": "torch._dynamo" in sys.modules, "attr": "_dynamo" in torch.__dict__,
          "report": report.to_dict(), "inferred": inferred.to_dict()}}
# Afterwards the compiler loads and works as it would have, with the one config module.
compiled = torch.compile(lambda x: torch.tanh(x) * 2, backend="eager")
state["compiled"] = compiled(torch.ones(3)).tolist()
state["one_config"] = torch._dynamo.config is sys.modules["torch._dynamo.config"]
state["export"] = len(torch.export.export(model, (torch.randn(8, 16),)).graph.nodes)
print(json.dumps(state), file=sys.stderr)
"""


def _check_state(first: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHECK.format(first=first)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stderr.strip().splitlines()[-1])


def test_capture_leaves_the_compiler_unloaded_and_working():
    cold = _check_state("")
    assert not cold["compiler"] and not cold["attr"]
    warm = _check_state("import torch._dynamo")
    assert warm["compiler"]
    # The same analysis whether or not the compiler was there first.
    assert cold["report"] == warm["report"]
    assert cold["inferred"] == warm["inferred"] and cold["inferred"]["inputs"]
    for state in (cold, warm):
        assert state["compiled"] == pytest.approx([2 * 0.7615941559557649] * 3)
        assert state["one_config"] and state["export"] > 5
