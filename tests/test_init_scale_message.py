"""GL301's message states how far off the critical scale an init is, readably at any scale,
and the baseline fingerprint of that message does not depend on the scale."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import gradlint
from gradlint.output import fingerprint
from gradlint.rules.init_scale_mismatch import _relative

LONG_NUMBER = re.compile(r"\d{6,}")


def _stack(std: float) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(6):
        lin = nn.Linear(32, 32)
        nn.init.normal_(lin.weight, std=std)
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _gl301(std: float):
    report = gradlint.check(_stack(std), inputs=(8, 32), select=["GL301"])
    (finding,) = [f for f in report.findings if f.code == "GL301"]
    return finding


@pytest.mark.parametrize("ratio, text", [
    (16.2, "16x"), (9999.4, "9999x"), (12345.0, "1.23e+04x"), (1.5913e21, "1.59e+21x"), (1e21, "1e+21x"),
    (0.5, "0.5x"), (1 / 628.42, "1/628 of"), (1 / 62842, "1/6.28e+04 of"), (1 / 6.2842e18, "1/6.28e+18 of"),
])
def test_ratios_read_as_plain_numbers_then_e_notation(ratio, text):
    assert _relative(ratio) == text


@pytest.mark.parametrize("std, shown", [(1e10, "1.59e+21x the critical"), (1e-10, "1/6.28e+18 of the critical")])
def test_a_huge_mismatch_is_not_printed_digit_by_digit(std, shown):
    f = _gl301(std)
    assert shown in f.message, f.message
    assert not LONG_NUMBER.search(f.message), f.message


def test_the_fingerprint_masks_the_ratio_in_every_form(tmp_path):
    root = Path(tmp_path)
    # Masked, the e-notation reads as the plain form did: one number.
    assert fingerprint.mask("1.59e+21x the critical") == fingerprint.mask("16x the critical") == "#x the critical"
    assert fingerprint.mask("1/6.28e+18 of the x") == fingerprint.mask("1/628 of the x") == "#/# of the x"
    # A finding whose init gets a little or a lot worse keeps its fingerprint: the message differs
    # only in numbers, e-notation included.
    mild, huge = _gl301(1.0), _gl301(1e10)
    assert "16x the critical" in mild.message and "e+21x the critical" in huge.message
    assert fingerprint.mask(mild.message) == fingerprint.mask(huge.message)
    assert fingerprint.fingerprint(mild, "Net", root) == fingerprint.fingerprint(huge, "Net", root)
    small, tiny = _gl301(0.01), _gl301(1e-10)
    assert "1/628 of" in small.message and "e+18 of" in tiny.message
    assert fingerprint.fingerprint(small, "Net", root) == fingerprint.fingerprint(tiny, "Net", root)
