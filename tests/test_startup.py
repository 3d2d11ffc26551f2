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


# A check of a small model in a fresh interpreter: which of the modules fake-tensor capture
# needs none of got imported (torch's compiler; sympy and symbolic shapes; DTensor), what torch
# looks like afterwards, and the reports; with those modules imported first when asked.
_DEFERRED = ("torch._dynamo", "sympy", "torch.fx.experimental.symbolic_shapes", "torch.distributed.tensor")
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


class LastPosition(nn.Module):  # a constant made from Python data, as nanoGPT's x[:, [-1], :]
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(x[:, [-1], :])


last = gradlint.check(LastPosition(), (torch.randn(2, 5, 16),))


class Mixed(nn.Module):  # embeddings, a transformer layer, an LSTM, conv, group norm, pooling, SDPA
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        self.enc = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
        self.lstm = nn.LSTM(32, 32, batch_first=True)
        self.conv = nn.Conv1d(32, 32, 3, padding=1)
        self.gn = nn.GroupNorm(4, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, ids):
        x, _ = self.lstm(self.enc(self.emb(ids)))
        y = nn.functional.max_pool1d(self.gn(nn.functional.gelu(self.conv(x.transpose(1, 2)))), 2).transpose(1, 2)
        q = y.reshape(y.shape[0], y.shape[1], 4, 8).transpose(1, 2)
        a = nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True).transpose(1, 2).reshape(y.shape)
        return self.head(nn.functional.dropout(a.softmax(-1), 0.1)).mean(1)


mixed = gradlint.check(Mixed(), (torch.randint(0, 100, (4, 16)),))
state = {{"loaded": [m for m in {deferred!r} if m in sys.modules], "attr": "_dynamo" in torch.__dict__,
          "report": report.to_dict(), "inferred": inferred.to_dict(),
          "last": last.to_dict(), "mixed": mixed.to_dict()}}


class Gathered(nn.Module):  # a data-dependent shape: torch.export, with the real modules, mid-capture
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        h = self.a(x)
        return self.b(h[torch.nonzero(h.abs().sum(-1) > 0).squeeze(-1)]).relu()


state["gathered"] = gradlint.check(Gathered(), (torch.randn(8, 16),)).to_dict()
# Afterwards the compiler loads and works as it would have, with the one config module.
compiled = torch.compile(lambda x: torch.tanh(x) * 2, backend="eager")
state["compiled"] = compiled(torch.ones(3)).tolist()
state["one_config"] = torch._dynamo.config is sys.modules["torch._dynamo.config"]
state["export"] = len(torch.export.export(model, (torch.randn(8, 16),)).graph.nodes)
batch = torch.export.Dim("batch")
dynamic = torch.export.export(model, (torch.randn(8, 16),), dynamic_shapes=({{0: batch}},))
state["dynamic"] = dynamic.module()(torch.ones(5, 16)).shape[0]
# And DTensors take torch's C++ fast path as they would have (a one-process fake world).
import torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, distribute_tensor
dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=1)
x = torch.randn(4, 4)
d = distribute_tensor(x, init_device_mesh("cpu", (1,)), [Replicate()])
y = d.relu() @ d + 1
state["dtensor"] = [type(y) is DTensor, torch.allclose(y.full_tensor(), x.relu() @ x + 1)]
print(json.dumps(state), file=sys.stderr)
"""


def _check_state(first: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHECK.format(first=first, deferred=_DEFERRED)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stderr.strip().splitlines()[-1])


def test_capture_leaves_unneeded_modules_unloaded_and_working():
    cold = _check_state("")
    assert cold["loaded"] == [] and not cold["attr"]
    warm = _check_state("import torch._dynamo")
    assert warm["loaded"] == list(_DEFERRED)  # the compiler imports the other two
    dtensor = _check_state("import torch.distributed.tensor")
    assert "torch.distributed.tensor" in dtensor["loaded"] and "torch._dynamo" not in dtensor["loaded"]
    # The same analysis whether or not those modules were there first.
    for other in (warm, dtensor):
        for key in ("report", "inferred", "last", "mixed", "gathered"):
            assert cold[key] == other[key], key
    assert cold["inferred"]["inputs"] and cold["gathered"]["status"] == "ok"
    assert cold["last"]["analysis"] == cold["mixed"]["analysis"] == "export"  # the graph, recorded
    for state in (cold, warm, dtensor):
        assert state["compiled"] == pytest.approx([2 * 0.7615941559557649] * 3)
        assert state["one_config"] and state["export"] > 5
        assert state["dynamic"] == 5 and state["dtensor"] == [True, True]
