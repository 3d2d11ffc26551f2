"""PyTorch Lightning: a callback that checks the LightningModule's gradients when a fit starts.

    from gradlint.lightning import GradlintCallback

    trainer = Trainer(callbacks=[GradlintCallback(on_unhealthy="stop")])
    trainer.fit(model)   # model.example_input_array gives the inputs

At ``on_fit_start`` it runs ``gradlint.check`` on the module (a meta-device copy: no weight is
touched, no step is taken) with its ``example_input_array``, reads the project's
``[tool.gradlint]`` as ``gradlint.check`` does, and, unless the module is healthy (the same test
as ``gradlint.assert_healthy``), warns, stops the fit before its first step, or raises.
Install with ``pip install "torch-gradlint[lightning]"`` (the ``pytorch-lightning`` package;
the unified ``lightning`` package works too).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

try:
    import pytorch_lightning as pl
except ImportError:  # the unified package
    try:
        import lightning.pytorch as pl
    except ImportError as e:
        raise ImportError("gradlint.lightning needs PyTorch Lightning: pip install 'torch-gradlint[lightning]'") from e

__all__ = ["GradlintCallback", "GradlintWarning"]

_MODES = ("warn", "stop", "raise")


class GradlintWarning(UserWarning):
    """The module about to be fit is not healthy (``GradlintCallback(on_unhealthy="warn")``)."""


class GradlintCallback(pl.Callback):
    """Check the LightningModule when ``trainer.fit`` starts.

    Args:
        inputs: The example inputs, as for ``gradlint.check``; default: the module's
            ``example_input_array`` (without one, and without ``inputs``, gradlint infers them
            from the first layer, as ``gradlint.check`` does).
        on_unhealthy: ``"warn"`` (default): a ``GradlintWarning`` with the whole story, and the
            fit goes on; ``"stop"``: the same warning, and the fit stops before its first step
            (``trainer.should_stop``); ``"raise"``: ``AssertionError``, as ``assert_healthy`` raises.
        ignore: Rule codes, prefixes or names not to run and not to fail on.
        fail_on: Lowest finding severity that counts as unhealthy (default: the configuration's,
            else ``error``).
        **check_kwargs: Passed on to ``gradlint.check`` (``threshold``, ``select``, ``config``, ...).

    Attributes:
        report: The last fit's ``Report`` (None before a fit).
    """

    def __init__(self, inputs: Any = None, *, on_unhealthy: str = "warn", ignore: Iterable[str] = (),
                 fail_on: str | None = None, **check_kwargs: Any) -> None:
        if on_unhealthy not in _MODES:
            raise ValueError(f"on_unhealthy={on_unhealthy!r} must be one of {', '.join(map(repr, _MODES))}")
        self.inputs = inputs
        self.on_unhealthy = on_unhealthy
        self.ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore)
        self.fail_on = fail_on
        self.check_kwargs = check_kwargs
        self.report = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        from gradlint.api import check
        from gradlint.output.text import assertion_failure
        from gradlint.run.config import project_config

        config = project_config(self.check_kwargs.get("config"))
        kwargs = {**self.check_kwargs, "config": False if config is None else config,
                  "ignore": self.ignore or None, "fail_on": self.fail_on}
        # inputs None: check() takes example_input_array itself, and the report says so.
        self.report = check(pl_module, self.inputs, name=type(pl_module).__name__, **kwargs)
        accepted = self.ignore + (tuple(config.ignore) if config is not None else ())
        failure = assertion_failure(self.report, ignore=accepted, fail_on=self.fail_on)
        if failure is None:
            return
        if self.on_unhealthy == "raise":
            raise AssertionError(failure)
        warnings.warn(failure, GradlintWarning, stacklevel=1)  # the caller is Lightning's hook loop
        if self.on_unhealthy == "stop":
            trainer.should_stop = True
