"""gradlint: will the gradient vanish or explode at initialization, where, and why.

The public API; everything not named in ``__all__`` is private. Torch is imported only
when a name that needs it is first used, so ``gradlint --version`` and user files that
only use ``@gradlint.target`` stay cheap.
"""

from __future__ import annotations

from typing import Any

from gradlint._version import __version__
from gradlint.base.errors import GradlintError, InputError, LoadError, TraceError
from gradlint.base.targets import Tokens, target, tokens

__all__ = [
    "__version__", "check", "probe", "assert_healthy", "target", "tokens", "Tokens", "Report", "Finding",
    "Severity", "ExitCode", "GradlintError", "InputError", "LoadError", "TraceError",
]

#: The packages that never import torch (a test imports each of their modules and checks): what
#: serves ``--version``, ``--help``, configuration errors and cache hits lives in them. Torch is
#: imported by the stages that touch the model: capture, engine, lint, probing.
TORCH_FREE = ("gradlint.base", "gradlint.load", "gradlint.run", "gradlint.output")

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
