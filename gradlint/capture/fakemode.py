"""Capture's fake tensors without the parts of torch they import and capture never uses.

A first fake-tensor forward imports ``torch._dynamo``, whose ``__init__`` imports the whole
compiler (about 0.9 s), then symbolic shapes with sympy (0.4 s) and, through torch's C++
dispatch, DTensor (0.2 s): each more than a one-file ``gradlint check`` spends on its analysis
(``benchmarks/speed.py --only floor``). gradlint compiles nothing and captures static shapes
with no DTensor: ``compiler_unloaded`` and ``fake_tensor`` keep the compiler out,
``unused_imports_deferred`` the other two, and ``no_idle_trace_handler`` keeps torch's
structured-trace logging from capturing a Python stack for every fake tensor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import importlib.machinery
import importlib.util
import logging
import operator
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

_PACKAGE = "torch._dynamo"


def fake_tensor(mode: FakeTensorMode, tensor: torch.Tensor) -> torch.Tensor:
    """A fake tensor with ``tensor``'s shape, strides, dtype, device and ``requires_grad``.

    Made by a factory call under the mode rather than ``mode.from_tensor``, whose every call
    imports ``torch._dynamo.source`` (and with it the compiler). What ``from_tensor`` adds,
    storage aliasing between distinct tensors, capture does not use: a tensor met twice is
    faked once, by the caller's memo. Tensors that are not plain strided ones take
    ``from_tensor``.
    """
    if type(tensor) not in (torch.Tensor, nn.Parameter) or tensor.layout != torch.strided or tensor.is_quantized:
        return mode.from_tensor(tensor, static_shapes=True)
    from_meta = getattr(mode.fake_tensor_converter, "from_meta_and_device", None)
    if from_meta is not None:
        # A fresh meta tensor wrapped as it is: a third of the factory call's cost, which a
        # ResNet-50's 320 weights and buffers pay on every check. The parameter flag is set as
        # nn.Parameter sets it on a tensor subclass, without its detach through the mode.
        meta = torch.empty_strided(tensor.size(), tensor.stride(), dtype=tensor.dtype, device="meta")
        out = from_meta(mode, meta, tensor.device)
        if tensor.requires_grad:
            out.requires_grad_(True)
        if isinstance(tensor, nn.Parameter):
            out._is_param = True
        return out
    with mode:
        out = torch.empty_strided(tensor.size(), tensor.stride(), dtype=tensor.dtype, device=tensor.device)
        if isinstance(tensor, nn.Parameter):  # torch.export checks its state dict holds parameters
            return nn.Parameter(out, requires_grad=tensor.requires_grad)
    return out.requires_grad_(tensor.requires_grad) if tensor.requires_grad else out


@contextlib.contextmanager
def no_idle_trace_handler() -> Iterator[None]:
    """Detaches torch's structured-trace handler while capture runs, where no trace is asked for.

    torch attaches a ``LazyTraceHandler`` to its ``torch.__trace`` logger at import, and the
    handler drops itself on its first record when no trace directory is set (``TORCH_TRACE``).
    Until then every fake tensor made logs its storage with a captured Python stack, whose
    symbolization imports ``torch._inductor`` and with it the compiler; ``quiet`` disables
    the logger, so the handler never sees the record that would remove it.
    """
    logger = logging.getLogger("torch.__trace")
    idle = [h for h in logger.handlers if type(h).__name__ == "LazyTraceHandler" and getattr(h, "root_dir", "") is None]
    for handler in idle:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in idle:
            if handler not in logger.handlers:
                logger.addHandler(handler)


class _ConfigOnly(types.ModuleType):
    """``torch._dynamo`` while capture runs, with its ``config`` submodule and nothing else
    loaded; any other attribute imports the real package, which then replaces it."""

    def __getattr__(self, name: str) -> object:
        return getattr(importlib.import_module(_PACKAGE), name)


@contextlib.contextmanager
def compiler_unloaded() -> Iterator[None]:
    """Fake tensors and dispatch modes, for the duration of capture, without the compiler.

    Three things import ``torch._dynamo`` (and the whole compiler behind its ``__init__``) on a
    first fake-tensor forward, and none of them needs it when nothing is compiled:
    ``FakeTensorMode`` reads flags from ``torch._dynamo.config``; ``mode.from_tensor`` imports
    ``torch._dynamo.source`` (``fake_tensor`` makes fake tensors another way); and torch wraps
    dispatch modes, decompositions and more in ``torch._disable_dynamo``, whose wrapper imports
    the compiler on its first call to build the function that keeps it from tracing in.

    So, while capture runs, ``torch._dynamo`` is a stand-in that holds the real config module
    (loaded alone, as a submodule of the stand-in, and left in ``sys.modules``, so the real
    package's ``from . import config`` takes that same module later) and imports the real
    package for anything else; and each function wrapped so far stands for its own disabled
    version (the attribute the wrapper caches it in). Both are undone on exit. Where the
    compiler is already imported, nothing is done.
    """
    if _PACKAGE in sys.modules or "_dynamo" in torch.__dict__:
        yield
        return
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        yield
        return
    stand_in = _ConfigOnly(_PACKAGE)
    stand_in.__path__ = list(spec.submodule_search_locations)
    sys.modules[_PACKAGE] = stand_in
    try:
        # Loaded once per process; a later stand-in takes the module already loaded.
        stand_in.config = importlib.import_module(_PACKAGE + ".config")
    finally:
        if sys.modules.get(_PACKAGE) is stand_in:
            del sys.modules[_PACKAGE]
    torch._dynamo = stand_in
    undisabled = _undisabled()
    try:
        yield
    finally:
        for fn in undisabled:
            if fn.__dict__.get("__dynamo_disable") is fn:
                del fn.__dynamo_disable
        if torch.__dict__.get("_dynamo") is stand_in:
            del torch._dynamo


_WRAPPED: list[Callable] | None = None


def _wrapped() -> list[Callable]:
    """The functions ``torch._disable_dynamo`` has wrapped, found once per process (a scan of
    the heap, about 15 ms): torch wraps them as its modules are imported, and one wrapped later
    only costs the compiler's import on its first call."""
    global _WRAPPED
    if _WRAPPED is None:
        import torch._compile

        codes = [c for c in torch._compile._disable_dynamo.__code__.co_consts
                 if isinstance(c, types.CodeType) and c.co_name == "inner" and "fn" in c.co_freevars]
        _WRAPPED = []
        if len(codes) == 1:
            slot = codes[0].co_freevars.index("fn")
            _WRAPPED = [w.__closure__[slot].cell_contents for w in gc.get_referrers(codes[0])
                        if isinstance(w, types.FunctionType) and w.__closure__ is not None]
    return _WRAPPED


def _undisabled() -> list[Callable]:
    """Every wrapped function not yet called, made to stand for its own disabled version; the
    list of them."""
    out = []
    for fn in _wrapped():
        if getattr(fn, "__dynamo_disable", None) is None and hasattr(fn, "__dict__"):
            fn.__dynamo_disable = fn
            out.append(fn)
    return out


# --- imports fake-tensor dispatch makes and capture's static shapes never use ------------------

_SYMBOLIC = "torch.fx.experimental.symbolic_shapes"
_SYMPY_FUNCTIONS = "torch.utils._sympy.functions"
_DYNAMO_SOURCE = "torch._dynamo.source"
_DTENSOR = "torch.distributed.tensor"
_FAKE_TENSOR = "torch._subclasses.fake_tensor"


class _Deferred(types.ModuleType):
    """A module not imported yet, in ``sys.modules`` while capture runs.

    It answers a few names itself (``_answers``), each to the importers listed with it
    (``None``: to any). Any other name, or any other importer, imports the real module, which
    takes its place in ``sys.modules``; a stale reference to the stand-in keeps forwarding
    other names to it.
    """

    def __init__(self, name: str, spec: Any, answers: dict[str, tuple[object, frozenset[str] | None]]) -> None:
        super().__init__(name)
        self.__spec__ = spec
        self._only_to = {k: v for k, v in answers.items() if v[1] is not None}
        # Answers for any importer are plain attributes: fake-tensor dispatch asks for them
        # ~40,000 times in a CIFAR MobileNetV2's check. They stay correct after the real module
        # is imported (each passes anything symbolic to the real function).
        self.__dict__.update({k: v[0] for k, v in answers.items() if v[1] is None})

    def __getattr__(self, name: str) -> object:
        answer = self._only_to.get(name)
        if answer is not None and sys.modules.get(self.__name__) is self and \
                sys._getframe(1).f_globals.get("__name__") in answer[1]:
            return answer[0]
        spec = self.__spec__
        if name == "__path__" and spec.submodule_search_locations is None:
            raise AttributeError(name)  # asked by every ``from module import ...``: a plain module has none
        if name == "__file__" and spec.has_location:
            return spec.origin
        return getattr(_real(self.__name__), name)


def _real(name: str) -> types.ModuleType:
    if isinstance(sys.modules.get(name), _Deferred):
        del sys.modules[name]
    return importlib.import_module(name)


def _if_imported(module: str, name: str) -> Any:
    real = sys.modules.get(module)
    return None if real is None or isinstance(real, _Deferred) else getattr(real, name)


class _Absent(type):
    """The type of a class standing for one whose module is not imported yet: nothing is an
    instance or a subclass of it until the real class exists, and anything else asked of it
    (an attribute, a call) goes to the real class, importing it."""

    def __instancecheck__(cls, obj: object) -> bool:
        real = _if_imported(cls._module, cls.__name__)
        return real is not None and isinstance(obj, real)

    def __subclasscheck__(cls, sub: type) -> bool:
        real = _if_imported(cls._module, cls.__name__)
        return real is not None and issubclass(sub, real)

    def __getattr__(cls, name: str) -> object:
        return getattr(getattr(_real(cls._module), cls.__name__), name)

    def __call__(cls, *args: object, **kwargs: object) -> object:
        return getattr(_real(cls._module), cls.__name__)(*args, **kwargs)


def _absent(module: str, name: str) -> type:
    return _Absent(name, (), {"_module": module, "__qualname__": name,
                              "__doc__": f"{module}.{name}, not imported yet (gradlint.capture.fakemode)"})


class _GuardOnDataDependentSymNode(RuntimeError):
    """Stands for symbolic_shapes' exception in fake-tensor dispatch's ``except`` clauses: only
    a symbolic value raises the real one, and making a symbolic value imports the real module."""


def _static(value: object) -> bool:
    """Whether ``value`` holds nothing symbolic, in the terms of symbolic_shapes' own walks
    (``_iterate_exprs``, ``_iterate_nodes``): plain numbers, strings and None, containers of
    them, strided tensors with integer sizes, strides and offset, generators. Anything else
    (a SymInt, a sympy expression, a sparse or nested tensor, an unknown object) is left to
    the real functions."""
    if value is None or isinstance(value, (int, float, bool, str, torch.Generator)):
        return True  # SymInt and SymFloat are not int or float subclasses
    if isinstance(value, (tuple, list)):  # torch.Size too
        return all(_static(v) for v in value)
    if isinstance(value, dict):
        return all(_static(k) and _static(v) for k, v in value.items())
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided or value.is_nested:
            return False
        return (all(type(s) is int for s in value.size()) and all(type(s) is int for s in value.stride())
                and type(value.storage_offset()) is int)
    return False


@dataclasses.dataclass(frozen=True)
class _ConstantSource(torch._guards.Source):
    """``torch._dynamo.source.ConstantSource`` as fake tensors use it: the name of a constant
    (a tensor the forward made from Python data, such as the index of ``x[:, [-1]]``) that
    fake-tensor dispatch converts. Its real module imports the compiler: 3 s on a fresh
    nanoGPT check."""

    source_name: str

    @property
    def _name_template(self) -> str:
        return self.source_name

    @property
    def guard_source(self) -> torch._guards.GuardSource:
        return torch._guards.GuardSource.CONSTANT


def _symbolic_shapes_answers() -> dict[str, object]:
    """The symbolic_shapes functions that fake-tensor dispatch, meta kernels and decompositions
    import on every op, answered for plain values as the real ones answer them
    (``tests/test_fakemode.py`` compares the two); anything else goes to the real function."""
    from torch.utils._ordered_set import OrderedSet

    def real(name: str) -> Callable:
        return getattr(_real(_SYMBOLIC), name)

    def passing(name: str, kinds: tuple[type, ...]) -> Callable:
        # The guards and hints: a plain bool (or int) is its own answer.
        def answer(a: object, *args: object, **kwargs: object) -> object:
            return a if type(a) in kinds else real(name)(a, *args, **kwargs)
        return answer

    def walking(name: str, empty: Callable[[], object]) -> Callable:
        def answer(val: object) -> object:
            return empty() if _static(val) else real(name)(val)
        return answer

    def joining(name: str, join: Callable[[Iterable[bool]], bool]) -> Callable:
        def answer(x: object, *others: object) -> object:
            if type(x) is bool and all(type(y) is bool for y in others):
                return join((x, *others))
            return real(name)(x, *others)
        return answer

    def sym_eq(x: object, y: object) -> object:
        if isinstance(x, (tuple, list)) and isinstance(y, (tuple, list)):
            if len(x) != len(y):
                return False
            return functools.reduce(operator.and_, map(sym_eq, x, y), True)
        if type(x) in (int, bool) and type(y) in (int, bool):
            return x == y
        return real("sym_eq")(x, y)

    def compute_unbacked_bindings(shape_env: object, *args: object, **kwargs: object) -> object:
        # No shape environment, no unbacked symbols to bind: the real function's first line.
        return None if shape_env is None else real("compute_unbacked_bindings")(shape_env, *args, **kwargs)

    def is_nested_int(s: object) -> bool:
        return isinstance(s, torch.SymInt) and real("is_nested_int")(s)

    def is_symbolic(val: object) -> bool:
        return False if isinstance(val, (int, float, bool)) else real("is_symbolic")(val)

    def has_guarding_hint(a: object) -> bool:
        return True if type(a) in (int, float, bool) else real("has_guarding_hint")(a)

    answers: dict[str, object] = {
        name: passing(name, (bool,)) for name in
        ("expect_true", "guard_bool", "guard_or_false", "guard_or_true", "guard_size_oblivious",
         "statically_known_true")}
    answers.update(guard_int=passing("guard_int", (int,)),
                   guarding_hint_or_throw=passing("guarding_hint_or_throw", (int, bool)),
                   _iterate_exprs=walking("_iterate_exprs", lambda: iter(())),
                   _iterate_nodes=walking("_iterate_nodes", lambda: iter(())),
                   free_unbacked_symbols=walking("free_unbacked_symbols", OrderedSet),
                   has_free_unbacked_symbols=walking("has_free_unbacked_symbols", lambda: False),
                   sym_and=joining("sym_and", all), sym_or=joining("sym_or", any), sym_eq=sym_eq,
                   compute_unbacked_bindings=compute_unbacked_bindings, is_nested_int=is_nested_int,
                   is_symbolic=is_symbolic, has_guarding_hint=has_guarding_hint)
    return answers


_ANSWERS: dict[str, dict[str, tuple[object, frozenset[str] | None]]] = {}


def _answers() -> dict[str, dict[str, tuple[object, frozenset[str] | None]]]:
    """Per deferred module, the names its stand-in answers and to whom; built once."""
    if not _ANSWERS:
        _ANSWERS["sympy"] = {
            # ``isinstance(x, (Number, TensorLike, sympy.Basic))`` in every elementwise op's dtype rule.
            "Basic": (_absent("sympy", "Basic"), frozenset({"torch._prims_common"}))}
        # Imported, and never used, by the density test of every dtype conversion.
        _ANSWERS[_SYMPY_FUNCTIONS] = {"Max": (_absent(_SYMPY_FUNCTIONS, "Max"), frozenset({"torch._prims_common"}))}
        _ANSWERS[_SYMBOLIC] = {name: (fn, None) for name, fn in _symbolic_shapes_answers().items()}
        # Converting a constant names it (meta_utils) and asks whether it came from random (fake_tensor).
        _ANSWERS[_DYNAMO_SOURCE] = {
            "ConstantSource": (_ConstantSource, frozenset({"torch._subclasses.meta_utils"})),
            "RandomValueSource": (_absent(_DYNAMO_SOURCE, "RandomValueSource"), frozenset({_FAKE_TENSOR}))}
        _ANSWERS[_SYMBOLIC]["GuardOnDataDependentSymNode"] = (_GuardOnDataDependentSymNode, frozenset({_FAKE_TENSOR}))
    return _ANSWERS


_DTENSOR_SETTLED = False


def _settle_dtensor() -> None:
    """Has torch's C++ dispatch look ``DTensor`` up now, while a stand-in module answers it.

    On its first dispatch to a tensor subclass (fake tensors are one), torch's C++ dispatch
    imports ``torch.distributed.tensor`` to ask whether the tensor is a DTensor, and keeps the
    class it got for the process. Here it gets a stand-in (``_absent``) that answers those
    questions as the real class would, and the stand-in module is gone before any Python code
    can import it: a real DTensor later still takes C++'s fast path (``tests/test_startup.py``).
    """
    global _DTENSOR_SETTLED
    _DTENSOR_SETTLED = True
    if _DTENSOR in sys.modules or not torch.distributed.is_available() or _spec(_DTENSOR) is None:
        return
    stand_in = _Deferred(_DTENSOR, _spec(_DTENSOR), {"DTensor": (_absent(_DTENSOR, "DTensor"), None)})
    sys.modules[_DTENSOR] = stand_in
    try:
        with compiler_unloaded(), FakeTensorMode():
            probe = torch.empty(1)
        with compiler_unloaded():
            torch.ops.aten.alias.default(probe)  # outside the mode: a dispatch on the FakeTensor subclass
    finally:
        if sys.modules.get(_DTENSOR) is stand_in:
            del sys.modules[_DTENSOR]


@contextlib.contextmanager
def unused_imports_deferred() -> Iterator[None]:
    """Fake-tensor dispatch without the imports it makes for symbolic shapes and DTensors.

    On its first ops, ``FakeTensorMode`` imports ``torch.fx.experimental.symbolic_shapes``
    and ``sympy`` (0.4 s) and, through torch's C++ dispatch, ``torch.distributed.tensor``
    (0.2 s): together more than a one-file ``gradlint check`` spends on its analysis. With
    static shapes and no DTensor, it uses neither. While capture runs, the first two are
    stand-ins (``_Deferred``) that answer what dispatch asks of them on static values and import
    the real module for anything else; C++ dispatch's DTensor lookup is answered once per
    process (``_settle_dtensor``). The stand-ins are removed on exit; a module imported
    already is left as it is.
    """
    answers = _answers()
    installed = []
    for name in ("sympy", _SYMPY_FUNCTIONS, _SYMBOLIC, _DYNAMO_SOURCE):
        if name not in sys.modules and _spec(name) is not None:
            stand_in = _Deferred(name, _spec(name), answers[name])
            sys.modules[name] = stand_in
            installed.append((name, stand_in))
    try:
        if not _DTENSOR_SETTLED:
            _settle_dtensor()
        yield
    finally:
        for name, stand_in in installed:
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]


_SPECS: dict[str, Any] = {}


def _spec(name: str) -> Any:
    """The module's import spec (found once per process), or None where it is not installed."""
    if name not in _SPECS:
        parent = name.rpartition(".")[0]
        try:
            if not parent or parent in sys.modules:
                _SPECS[name] = importlib.util.find_spec(name)
            else:  # found without importing the parent (``find_spec`` would: torch._dynamo's is the compiler)
                found = _spec(parent)
                locations = found.submodule_search_locations if found is not None else None
                _SPECS[name] = importlib.machinery.PathFinder.find_spec(name, locations) if locations else None
        except (ImportError, ValueError):
            _SPECS[name] = None
    return _SPECS[name]


# --- ops fake tensors run slowly and cannot cache -------------------------------------------------

_aten = torch.ops.aten
# BatchNorm's fake (and meta) kernel is a Python decomposition, 12 to 20 ms a call in a check,
# that FakeTensorMode does not cache because the op writes its running statistics in place:
# most of a CIFAR MobileNetV2's check. What it makes depends on its inputs' metadata alone.
_UNCACHED = frozenset({_aten.batch_norm.default, _aten.native_batch_norm.default,
                       _aten._native_batch_norm_legit.default, _aten._native_batch_norm_legit.no_stats,
                       _aten._native_batch_norm_legit_functional.default,
                       _aten._native_batch_norm_legit_no_training.default})
_PLAIN = (int, float, bool, str, type(None), torch.dtype, torch.device)
_PLAIN_TENSORS = (torch.Tensor, FakeTensor, nn.Parameter)
_DENSE = {4: torch.channels_last, 5: torch.channels_last_3d}


def _tensor_key(t: torch.Tensor) -> tuple:
    return (tuple(t.shape), t.stride(), t.storage_offset(), t.dtype, t.device, t.layout)


def _batch_norm(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """``aten.batch_norm``'s output where nothing about it is in doubt, else None: a dense
    floating input with at least two values per channel when training, and per-channel tensors
    of exactly its channel count (the checks its kernel makes, so no error is skipped). The
    output is then laid out as the input (tests/test_fakemode.py compares it with the kernel's)."""
    if kwargs or len(args) != 9:
        return None
    x, weight, bias, mean, var, training = args[:6]
    if type(x) not in _PLAIN_TENSORS or x.layout != torch.strided or not x.dtype.is_floating_point:
        return None
    if x.dim() < 2 or x.numel() == 0 or not (x.is_contiguous() or (
            x.dim() in _DENSE and x.is_contiguous(memory_format=_DENSE[x.dim()]))):
        return None
    if training is not False and x.numel() // x.shape[1] < 2:
        return None
    for t in (weight, bias, mean, var):
        if t is not None and (type(t) not in _PLAIN_TENSORS or t.shape != (x.shape[1],)
                              or t.device != x.device or not t.dtype.is_floating_point):
            return None
    if training is False and (mean is None or var is None):
        return None
    return torch.empty_like(x)


class SlowKernels:
    """The ops in ``_UNCACHED`` with their slow kernels run as rarely as their outputs allow:
    ``aten.batch_norm`` where its output is certain (``_batch_norm``), and otherwise once per
    signature of the inputs' metadata, later calls getting fresh tensors with the metadata the
    kernel gave (fake ones under a fake mode, meta ones on the meta device). Outputs that alias
    an input, or inputs that are not plain tensors and scalars, always take the kernel."""

    def __init__(self) -> None:
        self._outputs: dict[tuple, tuple | None] = {}

    def __call__(self, func: Any, args: tuple, kwargs: dict, run: Callable[[], Any]) -> Any:
        if func not in _UNCACHED:
            return run()
        if func is _aten.batch_norm.default:
            out = _batch_norm(args, kwargs)
            if out is not None:
                return out
        key = self._key(func, args, kwargs)
        if key is None:
            return run()
        if key not in self._outputs:
            out = run()
            self._outputs[key] = self._describe(out, [*args, *kwargs.values()])
            return out
        described = self._outputs[key]
        if described is None:
            return run()
        made = [torch.empty_strided(shape, stride, dtype=dtype, device=device) for shape, stride, dtype, device in
                described[1]]
        return tuple(made) if described[0] else made[0]

    @staticmethod
    def _key(func: Any, args: tuple, kwargs: dict) -> tuple | None:
        key: list[object] = [func, *kwargs]
        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.Tensor):
                if type(value) not in _PLAIN_TENSORS or value.layout != torch.strided:
                    return None
                key.append(_tensor_key(value))
            elif isinstance(value, _PLAIN):
                key.append(value)
            else:
                return None
        return tuple(key)

    @staticmethod
    def _describe(out: Any, inputs: list) -> tuple | None:
        outs = out if isinstance(out, tuple) else (out,)
        described = []
        for o in outs:
            if type(o) not in _PLAIN_TENSORS or o.layout != torch.strided or o.storage_offset() != 0:
                return None
            if any(isinstance(i, torch.Tensor) and (o is i or torch._C._is_alias_of(o, i)) for i in inputs):
                return None
            described.append((tuple(o.shape), o.stride(), o.dtype, o.device))
        return (isinstance(out, tuple), described)


class SlowKernelsSkipped(TorchDispatchMode):
    """``SlowKernels`` for a forward on the meta device (input inference's trial forwards)."""

    def __init__(self) -> None:
        super().__init__()
        self.slow = SlowKernels()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        return self.slow(func, args, kwargs, lambda: func(*args, **kwargs))
