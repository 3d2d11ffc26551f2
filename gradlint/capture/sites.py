"""Where a model's modules were built and its parameters initialized, recorded while the model is
built, so that a finding can point at the line of its cause (the ``nn.init.normal_`` call in a
helper, the ``nn.Linear`` a helper makes) with the lines that called it as context.

A site is the chain of the user's own frames at the moment: the innermost first, outward to the
target's constructor. The parent's ``__init__`` line that ``definition_sites`` reads from the
source is the chain's outer end, so a finding placed there moves in along its chain, and a
suppression comment on any line of the chain still applies (``gradlint.lint.suppress``).

Only what is built inside ``recording()`` has sites; a model the user built and passed to
``gradlint.check`` has none, and its findings stay at the definitions.
"""

from __future__ import annotations

import functools
import os
import sys
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

from gradlint.capture.graph import Source

__all__ = ["recording", "sites_of"]

_TORCH = os.path.dirname(torch.__file__)
_GRADLINT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_INITS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
          "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")
_SITES: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[Source, ...]]] = weakref.WeakKeyDictionary()


def _user(path: str) -> bool:
    return not (path.startswith(("<", _TORCH, _GRADLINT)) or "site-packages" in path or "dist-packages" in path)


def _chain(frame, skip=None) -> tuple[Source, ...]:
    """The user's frames from ``frame`` outward; frames of ``skip``'s own ``__init__`` chain
    (where ``self`` is it) are passed over, so a module's site is where it was called."""
    out = []
    while frame is not None:
        code = frame.f_code
        if skip is not None and frame.f_locals.get("self") is skip:
            frame = frame.f_back
            continue
        skip = None
        if _user(code.co_filename):
            out.append(Source(code.co_filename, frame.f_lineno, ""))
        frame = frame.f_back
    return tuple(out)


class _Recorder:
    def __init__(self) -> None:
        self.modules: dict[int, tuple[object, tuple[Source, ...]]] = {}
        self.inits: dict[int, tuple[object, tuple[Source, ...]]] = {}


@contextmanager
def recording() -> Iterator[_Recorder]:
    """Records, while the block runs, where each module is constructed and where each tensor is
    last initialized by a ``torch.nn.init`` function; ``attach`` then files them under a model."""
    rec = _Recorder()
    module_init = nn.Module.__init__
    saved = {name: getattr(torch.nn.init, name) for name in _INITS if hasattr(torch.nn.init, name)}

    @functools.wraps(module_init)
    def init(self, *args, **kwargs):
        module_init(self, *args, **kwargs)
        if id(self) not in rec.modules:
            rec.modules[id(self)] = (self, _chain(sys._getframe(1), skip=self))

    def wrap(fn):
        @functools.wraps(fn)
        def recorded(tensor, *args, **kwargs):
            chain = _chain(sys._getframe(1))
            if chain and isinstance(tensor, torch.Tensor):
                rec.inits[id(tensor)] = (tensor, chain)
            return fn(tensor, *args, **kwargs)
        return recorded

    nn.Module.__init__ = init
    for name, fn in saved.items():
        setattr(torch.nn.init, name, wrap(fn))
    try:
        yield rec
    finally:
        nn.Module.__init__ = module_init
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def attach(model: nn.Module, rec: _Recorder) -> None:
    """Files ``rec``'s sites under ``model``'s module and parameter names."""
    out: dict[str, tuple[Source, ...]] = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        got = rec.modules.get(id(mod))
        if name and got is not None and got[0] is mod and got[1]:
            out[name] = got[1]
    for name, p in model.named_parameters(remove_duplicate=False):
        got = rec.inits.get(id(p))
        if got is not None and got[0] is p:
            out[name] = got[1]
    _SITES[model] = out


def sites_of(model: nn.Module) -> dict[str, tuple[Source, ...]]:
    """Per module and parameter name, the chain of user lines that built or initialized it."""
    try:
        return dict(_SITES.get(model, {}))
    except TypeError:
        return {}
