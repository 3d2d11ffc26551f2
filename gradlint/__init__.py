"""gradlint: will the gradient vanish or explode at initialization, where, and why.

The public API; everything not named in ``__all__`` is private. Torch is imported only
when a name that needs it is first used, so ``gradlint --version`` and user files that
only use ``@gradlint.target`` stay cheap.
"""

from __future__ import annotations

import warnings
from typing import Any

from gradlint._version import __version__
from gradlint.base.errors import GradlintError, InputError, LoadError, TraceError
from gradlint.base.targets import Tokens, target, tokens

__all__ = [
    "__version__", "check", "probe", "assert_healthy", "target", "tokens", "Tokens", "Report", "Finding",
    "Severity", "ExitCode", "GradlintError", "InputError", "LoadError", "TraceError",
]

# torch imports NumPy when it can and warns when it cannot; gradlint does not need it.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

_LAZY = {
    "check": ("gradlint.api", "check"),
    "probe": ("gradlint.probing.probe", "probe"),
    "assert_healthy": ("gradlint.assertions", "assert_healthy"),
    "Report": ("gradlint.base.report", "Report"),
    "Finding": ("gradlint.base.findings", "Finding"),
    "Severity": ("gradlint.base.findings", "Severity"),
    "ExitCode": ("gradlint.base.findings", "ExitCode"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gradlint' has no attribute {name!r}")
