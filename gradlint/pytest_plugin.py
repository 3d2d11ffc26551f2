"""The pytest plugin: a ``gradlint`` fixture and the ``gradlint`` command-line options.

pytest loads it through the ``pytest11`` entry point wherever gradlint is installed, so
this module must stay cheap: it imports neither torch nor the analysis, which load when a
test first uses the fixture's methods.

    def test_model_trains(gradlint):
        gradlint.assert_healthy(MyModel(), (8, 3, 32, 32))

``pytest --gradlint-probe`` makes every ``check`` and ``assert_healthy`` measure the
gradients with a real backward pass too; ``--gradlint-device``, ``--gradlint-seeds``,
``--gradlint-threshold``, ``--gradlint-fail-on`` and ``--gradlint-ignore`` set the other
defaults. Keyword arguments in a test override them.

As ``gradlint check`` does, the fixture reads the project's ``[tool.gradlint]`` (the nearest
``pyproject.toml`` with the table, from pytest's rootdir up; ``--gradlint-config FILE`` names
another, ``--gradlint-isolated`` reads none) and honours ``# noqa: GL...`` and
``# gradlint: ignore`` comments (``--gradlint-ignore-noqa`` turns them off), so a model the
command line passes passes in a test too. The fixture also carries the public API:
``gradlint.tokens(...)``, ``gradlint.target``, ``gradlint.Report`` and the rest of ``gradlint``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from gradlint.base.report import Report


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gradlint", "gradlint: gradient health of PyTorch models (the gradlint fixture)")
    group.addoption("--gradlint-probe", action="store_true", default=False,
                    help="gradlint fixture: also run a real backward pass; the measured values decide.")
    group.addoption("--gradlint-device", default="cpu", metavar="DEVICE",
                    help="gradlint fixture: where probes run: cpu, cuda, cuda:N or auto (default: cpu).")
    group.addoption("--gradlint-seeds", type=int, default=3, metavar="N",
                    help="gradlint fixture: seeds a probe averages over (default: 3).")
    group.addoption("--gradlint-threshold", type=float, default=None, metavar="DECADES",
                    help="gradlint fixture: decades of attenuation or growth that count as vanishing or "
                         "exploding (default: 2).")
    group.addoption("--gradlint-fail-on", choices=("error", "warning", "info"), default=None,
                    help="gradlint fixture: lowest finding severity that fails assert_healthy (default: fail-on "
                         "in [tool.gradlint], else error).")
    group.addoption("--gradlint-ignore", action="append", default=[], metavar="RULES",
                    help="gradlint fixture: rule codes, prefixes or names to skip (repeatable, comma-separated).")
    group.addoption("--gradlint-config", default=None, metavar="FILE",
                    help="gradlint fixture: read [tool.gradlint] from FILE (default: the nearest pyproject.toml "
                         "that has it, from the rootdir up).")
    group.addoption("--gradlint-isolated", action="store_true", default=False,
                    help="gradlint fixture: read no configuration file; gradlint's defaults only.")
    group.addoption("--gradlint-ignore-noqa", action="store_true", default=False,
                    help="gradlint fixture: report findings that # noqa: GL... or # gradlint: ignore comments "
                         "would silence.")


class GradlintFixture:
    """What the ``gradlint`` fixture returns: check, probe and assert, with the command line's defaults.

    Attributes:
        probe_by_default: ``--gradlint-probe``: ``check`` and ``assert_healthy`` probe too.
        device: ``--gradlint-device``.
        seeds: ``--gradlint-seeds``.
        threshold: ``--gradlint-threshold`` (None: gradlint's default of 2 decades).
        fail_on: ``--gradlint-fail-on`` (None: the configuration's, else ``error``).
        ignore: ``--gradlint-ignore``.
        config: The ``[tool.gradlint]`` file to read; None: the nearest one from the working
            directory up; False: none (``--gradlint-isolated``).
        ignore_noqa: ``--gradlint-ignore-noqa``.

    Every other public name of ``gradlint`` (``tokens``, ``target``, ``Report``, ...) is an
    attribute too, so a test that takes the fixture, which shadows the module's name, can still
    write ``gradlint.tokens((8, 128), vocab=32000)``.
    """

    def __init__(self, *, probe: bool = False, device: str = "cpu", seeds: int = 3, threshold: float | None = None,
                 fail_on: str | None = None, ignore: Iterable[str] = (), config: Any = None,
                 ignore_noqa: bool = False) -> None:
        self.probe_by_default = probe
        self.device = device
        self.seeds = seeds
        self.threshold = threshold
        self.fail_on = fail_on
        self.ignore = tuple(ignore)
        self.config = config
        self.ignore_noqa = ignore_noqa

    def __getattr__(self, name: str) -> Any:
        import gradlint

        if name in gradlint.__all__:
            return getattr(gradlint, name)
        raise AttributeError(f"the gradlint fixture has no attribute {name!r} (nor has the gradlint module)")

    @classmethod
    def from_config(cls, config: pytest.Config) -> GradlintFixture:
        """The fixture configured by the ``--gradlint-*`` options."""
        ignore = [p.strip() for arg in config.getoption("gradlint_ignore") for p in arg.split(",") if p.strip()]
        if config.getoption("gradlint_isolated"):
            file: Any = False
        elif config.getoption("gradlint_config"):
            file = config.getoption("gradlint_config")
        else:
            from gradlint.run.config import find
            file = find(config.rootpath) or False
        return cls(probe=config.getoption("gradlint_probe"), device=config.getoption("gradlint_device"),
                   seeds=config.getoption("gradlint_seeds"), threshold=config.getoption("gradlint_threshold"),
                   fail_on=config.getoption("gradlint_fail_on"), ignore=ignore, config=file,
                   ignore_noqa=config.getoption("gradlint_ignore_noqa"))

    def __repr__(self) -> str:
        return (f"GradlintFixture(probe={self.probe_by_default}, device={self.device!r}, seeds={self.seeds}, "
                f"threshold={self.threshold}, fail_on={self.fail_on!r}, ignore={self.ignore})")

    def _check_kwargs(self, kw: dict[str, Any]) -> dict[str, Any]:
        from gradlint.assertions import resolve_threshold, threshold_options

        kw = dict(kw)
        thr = resolve_threshold(kw.pop("threshold", None), kw.pop("max_decades", None))
        thr = self.threshold if thr is None else thr
        if thr is not None:
            kw["threshold"] = thr
        kw["rule_options"] = threshold_options(thr, kw.get("rule_options"))
        ignore = kw.get("ignore") or ()
        kw["ignore"] = self.ignore + ((ignore,) if isinstance(ignore, str) else tuple(ignore)) or None
        if self.fail_on is not None:
            kw.setdefault("fail_on", self.fail_on)
        kw.setdefault("config", self.config)
        kw.setdefault("ignore_noqa", self.ignore_noqa)
        return kw

    def check(self, model: Any, inputs: Any = None, *, probe: bool | None = None, **kw: Any) -> Report:
        """``gradlint.check`` with the command line's defaults; a probe under ``--gradlint-probe``.

        Args:
            model: The ``nn.Module``.
            inputs: As for ``gradlint.check``.
            probe: Measure too (default: ``--gradlint-probe``).
            **kw: Passed on to ``gradlint.check`` (``threshold``/``max_decades``, ``fail_on``,
                ``ignore``, ``select``, ...), overriding the command line's defaults.
        """
        if self.probe_by_default if probe is None else probe:
            return self.probe(model, inputs, **kw)
        from gradlint.api import check

        return check(model, inputs, **self._check_kwargs(kw))

    def probe(self, model: Any, inputs: Any = None, *, device: str | None = None, seeds: int | None = None,
              **kw: Any) -> Report:
        """``gradlint.probe`` with the command line's defaults: predicted and measured gradients.

        Args:
            model: The ``nn.Module``; it is not modified.
            inputs: As for ``gradlint.check``.
            device: Where to measure (default: ``--gradlint-device``).
            seeds: Seeds to average over (default: ``--gradlint-seeds``).
            **kw: Passed on to ``gradlint.check``.
        """
        from gradlint.probing.probe import probe

        return probe(model, inputs, device=device or self.device, seeds=seeds or self.seeds,
                     **self._check_kwargs(kw))

    def assert_healthy(self, model: Any, inputs: Any = None, *, probe: bool | None = None,
                       ignore: Iterable[str] = (), fail_on: str | None = None, **kw: Any) -> Report:
        """Raise ``AssertionError`` unless ``model``'s gradients are healthy; see ``gradlint.assert_healthy``.

        Args:
            model: The ``nn.Module``.
            inputs: As for ``gradlint.check``.
            probe: Measure, and let the measurement decide (default: ``--gradlint-probe``).
            ignore: Rule codes, prefixes or names, added to ``--gradlint-ignore``.
            fail_on: Lowest failing severity (default: ``--gradlint-fail-on``).
            **kw: ``threshold``/``max_decades``, ``device``, ``seeds`` and ``gradlint.check``'s arguments.

        Returns:
            The report, when healthy.
        """
        __tracebackhide__ = True
        from gradlint.assertions import assert_healthy, resolve_threshold

        if isinstance(ignore, str):
            ignore = (ignore,)
        thr = resolve_threshold(kw.pop("threshold", None), kw.pop("max_decades", None))
        kw["threshold"] = self.threshold if thr is None else thr
        kw.setdefault("device", self.device)
        kw.setdefault("seeds", self.seeds)
        kw.setdefault("config", self.config)
        kw.setdefault("ignore_noqa", self.ignore_noqa)
        return assert_healthy(model, inputs, probe=self.probe_by_default if probe is None else probe,
                              ignore=self.ignore + tuple(ignore), fail_on=fail_on or self.fail_on, **kw)


@pytest.fixture
def gradlint(request: pytest.FixtureRequest) -> GradlintFixture:
    """Check PyTorch models' gradients at initialization, with the ``--gradlint-*`` options as defaults.

    Returns an object with ``check(model, inputs, **kw)``, ``probe(model, inputs, **kw)`` and
    ``assert_healthy(model, inputs, **kw)``.
    """
    return GradlintFixture.from_config(request.config)
