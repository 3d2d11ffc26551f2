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
