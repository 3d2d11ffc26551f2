"""Third-party rule packs: the entry-point group and `gradlint test-rules`."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gradlint.cli import main

PACK = Path(__file__).resolve().parent / "fixtures" / "rulepack"


@pytest.fixture(autouse=True)
def unregister_pack():
    """Keep the toy pack's rule out of the rest of the session."""
    yield
    from gradlint.lint.rule import REGISTRY
    REGISTRY.pop("GL801", None)
    for name in [m for m in sys.modules if m == "example_pack" or m.startswith("example_pack.")]:
        del sys.modules[name]


def test_test_rules_runs_the_harness_on_a_pack(monkeypatch):
    monkeypatch.syspath_prepend(str(PACK))
    r = CliRunner().invoke(main, ["test-rules", "example_pack"])
    assert r.exit_code == 0, r.output
    assert "ok   GL801-bad-0" in r.output and "ok   GL801-good-0" in r.output and "0 failed" in r.output


def test_test_rules_checks_the_severity_a_bad_example_states(monkeypatch):
    monkeypatch.syspath_prepend(str(PACK))
    from example_pack.wide_layer import TooWideLinear

    monkeypatch.setattr(TooWideLinear, "bad", (dataclasses.replace(TooWideLinear.bad[0], severity="error"),))
    r = CliRunner().invoke(main, ["test-rules", "example_pack"])
    assert r.exit_code != 0
    assert "fired at '0' with severity 'warning', expected 'error'" in r.output and "1 failed" in r.output


def test_pack_rules_run_in_check_once_registered(monkeypatch):
    monkeypatch.syspath_prepend(str(PACK))
    import example_pack  # noqa: F401  (what the entry point does)
    import torch.nn as nn

    import gradlint
    report = gradlint.check(nn.Sequential(nn.Linear(8, 2048)), (4, 8))
    assert any(f.code == "GL801" for f in report.findings)


def test_entry_points_are_loaded(monkeypatch):
    import gradlint.lint.rule as rule_mod

    loaded = []

    class EP:
        def load(self):
            loaded.append(True)

    monkeypatch.setattr(rule_mod, "_PACKS_LOADED", [])
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [EP()] if group == "gradlint.rules" else [])
    rule_mod.load_builtin()
    assert loaded == [True]


def test_unknown_package():
    r = CliRunner().invoke(main, ["test-rules", "json"])
    assert r.exit_code != 0 and "registers no rules" in r.output
