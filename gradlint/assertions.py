"""Assertions for test suites: ``gradlint.assert_healthy`` and ``Report.assert_clean``.

Both raise ``AssertionError`` whose message tells the whole story: the verdict, every
finding that fails (code, location, message, fix) and the layers whose gradient is
weakest. The message is built by ``gradlint.output.text``, not by pytest's assertion
rewriting, so it reads the same under pytest, unittest or a plain script, and ``python -O``
cannot strip the check.

After a probe the measurement decides: the verdict is the measured one, and a finding the
measurement refuted (``confirmed=False``) does not fail; confirmed findings and those the
probe has no opinion on (``confirmed=None``) do.

This module imports torch only when a check runs, so ``import gradlint`` stays cheap.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gradlint.base.report import Report

# Rules with their own attenuation threshold, which must follow check's threshold or a
# relaxed threshold would still fail on GL101/GL102.
THRESHOLD_RULES = (("GL101", "vanishing-gradient"), ("GL102", "exploding-gradient"))


def threshold_options(threshold: float | None, rule_options: dict[str, dict[str, Any]] | None
                      ) -> dict[str, dict[str, Any]] | None:
    """``rule_options`` with GL101/GL102 following ``threshold``, unless the caller set them."""
    if threshold is None:
        return rule_options
    out = dict(rule_options or {})
    for code, name in THRESHOLD_RULES:
        if code not in out and name not in out:
            out[code] = {"threshold": threshold}
    return out


def resolve_threshold(threshold: float | None, max_decades: float | None) -> float | None:
    """``threshold=`` and its alias ``max_decades=``: at most one of them, or the same value."""
    if threshold is not None and max_decades is not None and threshold != max_decades:
        raise TypeError(f"threshold={threshold!r} and max_decades={max_decades!r} disagree; give one of them")
    return threshold if threshold is not None else max_decades


def assert_healthy(model: Any, inputs: Any = None, *, probe: bool = False, threshold: float | None = None,
                   max_decades: float | None = None, fail_on: str | None = None, ignore: Iterable[str] = (),
                   device: str = "cpu", seeds: int = 3, **check_kwargs: Any) -> Report:
    """Check ``model`` and raise ``AssertionError`` unless its gradients are healthy.

    Healthy means: gradlint could analyze it, the verdict is ``healthy``, and no finding at
    or above ``fail_on`` remains. With ``probe=True`` a real backward pass runs too and the
    measured values decide: the measured verdict, and only the findings the measurement
    confirmed (or has no opinion on) fail.

    The project's ``[tool.gradlint]`` applies as in ``gradlint.check`` (``config=``): its
    ``ignore`` also accepts the verdicts of the rules it names, as ``ignore=`` does, and a
    verdict whose finding an inline comment silenced is accepted too.

    Args:
        model: The ``nn.Module``.
        inputs: As for ``gradlint.check``.
        probe: Also measure the gradients with a real backward pass (``gradlint.probe``).
        threshold: Decades of attenuation or growth that count as vanishing/exploding
            (default 2); ``max_decades`` is the same.
        max_decades: Alias of ``threshold``.
        fail_on: Lowest severity that fails: ``error``, ``warning`` or ``info`` (default: the
            configuration's ``fail-on``, else ``error``).
        ignore: Rule codes, code prefixes or names not to run and not to fail on (ignoring
            GL101 also accepts a vanishing verdict).
        device: Where the probe runs (``cpu``, ``cuda``, ``cuda:N``, ``auto``).
        seeds: Seeds the probe averages over.
        **check_kwargs: Passed on to ``gradlint.check`` (``select``, ``rule_options``, ...).

    Returns:
        The report, when healthy.

    Raises:
        AssertionError: With the verdict, the failing findings and fixes, and the weakest layers.
    """
    __tracebackhide__ = True
    if isinstance(ignore, str):
        ignore = (ignore,)
    ignore = tuple(ignore)
    thr = resolve_threshold(threshold, max_decades)
    kwargs = dict(check_kwargs)
    if thr is not None:
        kwargs["threshold"] = thr
    kwargs["rule_options"] = threshold_options(thr, kwargs.get("rule_options"))
    kwargs["ignore"] = ignore or None
    kwargs["fail_on"] = fail_on
    from gradlint.run.config import project_config

    config = project_config(kwargs.get("config"))
    kwargs["config"] = False if config is None else config  # read once, for the check and the verdict
    accepted = ignore + (tuple(config.ignore) if config is not None else ())
    if probe:
        from gradlint.probing.probe import probe as run_probe
        report = run_probe(model, inputs, device=device, seeds=seeds, **kwargs)
    else:
        from gradlint.api import check
        report = check(model, inputs, **kwargs)
    return report.assert_clean(ignore=accepted, fail_on=fail_on)
