"""The user's own model, run on fake tensors for capture, and left as it was found.

A copy of the model on the meta device is not the model: tensors the forward makes without
``device=`` land on the CPU next to meta weights, a ``lambda`` or closure kept as an attribute
still calls the original modules, and a weight a pre-forward hook computes (legacy
``spectral_norm``, ``weight_norm``) is a stale attribute. So capture runs the original model,
as ``torch.export``'s non-strict mode does: its parameters, buffers and plain tensor
attributes are swapped for ``FakeTensor``s (shapes, dtypes and devices, no storage, no
arithmetic) through ``torch.nn.utils.stateless._reparametrize_module``, and the inputs are
fake too. A model whose weights already live on the meta device has no values to protect and
nothing to read: it keeps the meta-device copy (``gradlint.capture.meta``).

Everything the forward may change is restored afterwards (``untouched``): every module's
attributes (what a forward assigns, train/eval, hooks, the parameter and buffer tables), the
random generators and the grad mode. Real parameters and buffers are never handed to the
forward, so their values, gradients, ``requires_grad`` and BatchNorm's running statistics stay
as they were.
"""

from __future__ import annotations

import contextlib
import random
import sys
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.utils.stateless import _reparametrize_module
from torch.utils._pytree import tree_flatten, tree_unflatten

from gradlint.capture.examples import _map, _plain
from gradlint.capture.fakemode import compiler_unloaded, fake_tensor, no_idle_trace_handler, unused_imports_deferred
from gradlint.capture.inputs import ExampleInputs, TensorSpec
from gradlint.capture.meta import caches_kept, meta_copy
from gradlint.capture.reads import ValueReader


def on_meta(model: nn.Module) -> bool:
    """Whether the model holds meta-device tensors (no values): it is captured through a meta copy."""
    return any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def _model_device(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


_CONTAINERS = (dict, OrderedDict, list, set)  # refilled in place; other containers are put back as they are


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Restores, on exit, what a forward may change: every module's attributes (and the contents
    of the tables among them: parameters, buffers, submodules, hooks), the random generators,
    the grad mode and the caches of the model's own modules (``meta.caches_kept``).

    The modules' own containers are refilled in place, so references to them stay valid.
    """
    saved = []
    for mod in model.modules():
        attrs = dict(mod.__dict__)
        # Most of a module's tables are empty hook dicts: an empty one is only checked for
        # emptiness on exit (a third of this function's cost on a ResNet-50's 280 modules).
        contents = {k: (v, (list(v.items()) if isinstance(v, dict) else list(v)) if v else None)
                    for k, v in attrs.items() if type(v) in _CONTAINERS}
        saved.append((mod, attrs, contents))
    grad = torch.is_grad_enabled()
    cpu_rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    py_rng = random.getstate()
    np = sys.modules.get("numpy")
    np_rng = np.random.get_state() if np is not None else None
    try:
        with caches_kept(model):
            yield
    finally:
        for mod, attrs, contents in saved:
            d = mod.__dict__
            for k in [k for k in d if k not in attrs]:
                del d[k]
            d.update(attrs)
            for container, items in contents.values():
                if items is None:
                    if container:
                        container.clear()
                    continue
                now = list(container.items()) if isinstance(container, dict) else list(container)
                if len(now) != len(items) or any(a is not b for a, b in zip(now, items)):
                    container.clear()
                    if isinstance(container, dict):
                        container.update(items)
                    elif isinstance(container, list):
                        container.extend(items)
                    else:
                        container.update(items)
        torch.set_grad_enabled(grad)
        torch.random.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        random.setstate(py_rng)
        if np_rng is not None:
            np.random.set_state(np_rng)


@dataclass
class FakeForward:
    """What to call for capture: ``model(*args, **kwargs)``, with ``reader`` to answer the
    values the forward reads (None on the meta path, where no value can be read)."""

    model: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    reader: ValueReader | None
    mode: FakeTensorMode | None
    real: dict[int, torch.Tensor] = field(default_factory=dict)  # id of a fake -> the tensor it stands for


@contextlib.contextmanager
def fake_forward(model: nn.Module, inputs: ExampleInputs, *, enter: bool = True) -> Iterator[FakeForward]:
    """The user's model in train mode with fake parameters, buffers and tensor attributes, and
    fake inputs; the model is restored on exit. A model on the meta device gets a meta copy.

    Args:
        model: The user's model.
        inputs: Its example inputs.
        enter: Whether to enter the fake mode (``torch.export`` enters it itself).
    """
    if on_meta(model):
        args, kwargs = inputs.meta()
        yield FakeForward(meta_copy(model).train(), args, kwargs, None, None)
        return
    with untouched(model), no_idle_trace_handler(), compiler_unloaded(), unused_imports_deferred():
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        memo: dict[int, torch.Tensor] = {}
        real: dict[int, torch.Tensor] = {}

        def fake(t: torch.Tensor) -> torch.Tensor:
            if id(t) not in memo:
                memo[id(t)] = fake_tensor(mode, t)
                real[id(memo[id(t)])] = t
            return memo[id(t)]

        real_buffers = dict(model.named_buffers(remove_duplicate=False))
        swapped = {n: fake(t) for n, t in (*model.named_parameters(remove_duplicate=False), *real_buffers.items())}
        # Plain tensor attributes too: an in-place op the forward runs on one would otherwise
        # run on the real tensor (fake mode computes ops whose inputs are all real).
        for mod in model.modules():
            for k, v in list(vars(mod).items()):
                if isinstance(v, torch.Tensor):
                    mod.__dict__[k] = fake(v)
                elif type(v) in (list, tuple) and v and all(isinstance(x, torch.Tensor) for x in v):
                    mod.__dict__[k] = type(v)(fake(x) for x in v)
        device = _model_device(model)
        # Sequence lengths are a plain list of ints, as the model gets them.
        leaves, spec = tree_flatten((_map(inputs.args, _plain), _map(inputs.kwargs, _plain)))
        fake_leaves = []
        with mode:
            for leaf in leaves:
                if isinstance(leaf, TensorSpec):
                    leaf = torch.empty(leaf.shape, dtype=getattr(torch, leaf.dtype), device=device)
                elif isinstance(leaf, torch.Tensor):
                    leaf = fake(leaf)
                fake_leaves.append(leaf)
        args, kwargs = tree_unflatten(fake_leaves, spec)
        reader = ValueReader(mode, inputs, leaves, spec, device, real_buffers, real)
        model.train()
        with _reparametrize_module(model, swapped, tie_weights=True, strict=True, stack_weights=True), \
                (mode if enter else contextlib.nullcontext()):
            yield FakeForward(model, tuple(args), kwargs, reader, mode, real)
