"""Capture's stand-ins for the modules fake-tensor dispatch imports but static shapes never use
(gradlint.capture.fakemode): each answer is the real function's answer, and anything the
stand-ins do not know goes to the real module.

What a fresh process imports, and that the analysis is the same with the real modules, is
tested in tests/test_startup.py.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest
import torch
import torch.fx.experimental.symbolic_shapes as real
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv

from gradlint.capture import fakemode

ANSWERS = fakemode._symbolic_shapes_answers()


def _fake(*shape: int) -> torch.Tensor:
    with FakeTensorMode():
        return torch.empty(*shape)


VALUES = [None, 0, 3, 2.5, True, "name", (), (1, 2), [1, [2, 3]], {"a": 1, 2: (3,)}, torch.Size([2, 3]),
          torch.randn(2, 3), torch.randn(4, 3).t(), torch.randn(2, 3)[:, 1:], _fake(2, 3), torch.Generator()]


def _same(name: str, *args: object) -> None:
    def outcome(fn):
        try:
            out = fn(*args)
        except Exception as e:  # noqa: BLE001 - the real function's errors are part of its answer
            return ("raises", type(e))
        if hasattr(out, "__next__"):
            out = list(out)
        return ("returns", type(out), out)

    assert outcome(ANSWERS[name]) == outcome(getattr(real, name)), (name, args)


def test_every_answer_is_named_after_a_real_function():
    for name in ANSWERS:
        assert callable(getattr(real, name)), name


@pytest.mark.parametrize("name", ["_iterate_exprs", "_iterate_nodes", "free_unbacked_symbols",
                                  "has_free_unbacked_symbols"])
def test_walks_of_static_values_answer_as_the_real_ones(name):
    for value in VALUES:
        _same(name, value)


@pytest.mark.parametrize("name", ["expect_true", "guard_bool", "guard_or_false", "guard_or_true",
                                  "guard_size_oblivious", "statically_known_true", "guard_int",
                                  "guarding_hint_or_throw", "is_nested_int", "is_symbolic", "has_guarding_hint"])
def test_guards_on_plain_values_answer_as_the_real_ones(name):
    # Values of the wrong kind too: the real function's error is the answer.
    for value in (True, False, 0, 7, 2.5, None, "x"):
        _same(name, value)


def test_joins_and_equality_answer_as_the_real_ones():
    for args in [(True,), (False,), (True, True), (True, False, True), (False, False)]:
        _same("sym_and", *args)
        _same("sym_or", *args)
    for x, y in [(1, 1), (1, 2), (True, 1), ((1, 2), (1, 2)), ([1, 2], (1, 2)), ((1, 2), (1, 2, 3)),
                 ((1, (2, 3)), (1, (2, 4))), ((), ()), (1.5, 1.5), ("a", "a")]:
        _same("sym_eq", x, y)
    _same("compute_unbacked_bindings", None, _fake(2, 3))


def test_symbolic_values_go_to_the_real_functions():
    env = ShapeEnv()
    s = env.create_unbacked_symint()
    assert ANSWERS["has_free_unbacked_symbols"](s) is True
    assert ANSWERS["free_unbacked_symbols"]([1, s]) == real.free_unbacked_symbols([1, s])
    assert list(ANSWERS["_iterate_exprs"]((s, 2))) == list(real._iterate_exprs((s, 2)))
    assert list(ANSWERS["_iterate_nodes"]([s])) == [s.node]
    assert ANSWERS["guard_or_false"](s == 3) is real.guard_or_false(s == 3)
    assert ANSWERS["statically_known_true"](s >= 0) is real.statically_known_true(s >= 0)
    assert ANSWERS["is_nested_int"](s) is False
    assert ANSWERS["is_symbolic"](s) is True
    assert ANSWERS["has_guarding_hint"](s) is real.has_guarding_hint(s)
    assert str(ANSWERS["sym_eq"]((s, 2), (s, 2))) == str(real.sym_eq((s, 2), (s, 2)))
    assert str(ANSWERS["sym_and"](s >= 0, s < 5)) == str(real.sym_and(s >= 0, s < 5))


def test_a_constants_name_is_the_compilers():
    from torch._dynamo.source import ConstantSource

    ours, theirs = fakemode._ConstantSource("c0"), ConstantSource("c0")
    assert (ours.name, ours.guard_source, ours.is_ephemeral()) == (theirs.name, theirs.guard_source,
                                                                   theirs.is_ephemeral())


# In a fresh interpreter, where neither module is imported: a stand-in answers its names (the
# exception only to fake-tensor dispatch), knows its file, has no path where the module has
# none, and brings the real module back for anything else; a stale stand-in forwards to it.
_FRESH = """
import json, sys
import torch
from gradlint.capture import fakemode
sym = "torch.fx.experimental.symbolic_shapes"
out = {}
with fakemode.unused_imports_deferred():
    stand_in, sympy_stand_in = sys.modules[sym], sys.modules["sympy"]
    out["deferred"] = [type(stand_in).__name__, type(sympy_stand_in).__name__]
    out["file"] = stand_in.__file__.endswith("symbolic_shapes.py")
    out["path"] = hasattr(stand_in, "__path__")
    from torch.fx.experimental.symbolic_shapes import guard_or_false
    out["answered"] = guard_or_false is fakemode._answers()[sym]["guard_or_false"][0]
    namespace = {"__name__": "torch._prims_common"}
    exec("import sympy\\nbasic = sympy.Basic", namespace)  # an import made as torch makes it
    placeholder = namespace["basic"]
    out["not_yet_basic"] = not isinstance(3, placeholder)
    out["still_deferred"] = [type(sys.modules[n]).__name__ for n in (sym, "sympy")]
    exception = stand_in.GuardOnDataDependentSymNode  # asked from here, not from fake-tensor dispatch
    real = sys.modules[sym]
    out["real_exception"] = exception is real.GuardOnDataDependentSymNode and type(real).__name__ == "module"
    out["stale_forwards"] = stand_in.ShapeEnv is real.ShapeEnv and stand_in.guard_or_false(True) is True
    symbol = sympy_stand_in.Symbol("x")  # another name: the real sympy
    out["basic_after"] = [isinstance(symbol, placeholder), isinstance(3, placeholder)]
out["left"] = [n for n in ("sympy", sym) if isinstance(sys.modules.get(n), fakemode._Deferred)]
print(json.dumps(out))
"""


def test_stand_ins_answer_their_names_and_hand_the_rest_to_the_real_module():
    proc = subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"deferred": ["_Deferred", "_Deferred"], "file": True, "path": False, "answered": True,
                   "not_yet_basic": True, "still_deferred": ["_Deferred", "_Deferred"], "real_exception": True,
                   "stale_forwards": True, "basic_after": [True, False], "left": []}


def _layout(t: torch.Tensor) -> tuple:
    return (tuple(t.shape), t.stride(), t.dtype, t.device)


def test_batch_norms_output_is_the_kernels_where_it_is_certain():
    answered = 0
    for shape, fmt, dtype, affine, stats, training in itertools.product(
            [(4, 3), (4, 3, 5), (2, 3, 4, 5), (2, 3, 2, 4, 5), (1, 3), (1, 3, 1, 1)],
            [torch.contiguous_format, torch.channels_last, torch.channels_last_3d],
            [torch.float32, torch.float64, torch.bfloat16], [True, False], [True, False], [True, False]):
        with FakeTensorMode():
            x = torch.empty(shape, dtype=dtype)
            if fmt is torch.channels_last and len(shape) == 4 or fmt is torch.channels_last_3d and len(shape) == 5:
                x = x.contiguous(memory_format=fmt)
            c = shape[1]
            per_channel = [torch.empty(c) if affine else None] * 2 + [torch.empty(c) if stats else None] * 2
            args = (x, *per_channel, training, 0.1, 1e-5, False)
            ours = fakemode._batch_norm(args, {})
            try:
                theirs = torch.ops.aten.batch_norm.default(*args)
            except Exception:  # noqa: BLE001 - the kernel refuses: so must the rule
                theirs = None
        if ours is not None:
            answered += 1
            assert theirs is not None and _layout(ours) == _layout(theirs), (shape, fmt, dtype, affine, stats, training)
    assert answered == 252  # of 432: the rest (eval without statistics, one value per channel, ...) go to the kernel


def test_batch_norm_leaves_what_it_cannot_be_sure_of_to_the_kernel():
    with FakeTensorMode():
        x, c = torch.empty(4, 3, 5), torch.empty(3)
        assert fakemode._batch_norm((x, torch.empty(4), c, c, c, True, 0.1, 1e-5, False), {}) is None  # wrong size
        assert fakemode._batch_norm((x[:, :, ::2], c, c, c, c, True, 0.1, 1e-5, False), {}) is None  # not dense
        one = torch.empty(1, 3)
        assert fakemode._batch_norm((one, c, c, c, c, True, 0.1, 1e-5, False), {}) is None  # one value per channel
        assert fakemode._batch_norm((x, c, c, None, None, False, 0.1, 1e-5, False), {}) is None  # eval, no stats
        assert fakemode._batch_norm((x.long(), c, c, c, c, True, 0.1, 1e-5, False), {}) is None


def test_slow_kernels_run_once_per_signature_and_still_refuse():
    slow, runs = fakemode.SlowKernels(), []
    func = torch.ops.aten.native_batch_norm.default

    def run(args):
        def go():
            runs.append(1)
            return func(*args)
        return go

    with FakeTensorMode():
        for channels_last in (False, False, True, True):
            x, c = torch.empty(2, 3, 4, 5), torch.empty(3)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            args = (x, c, c, torch.empty(3), torch.empty(3), True, 0.1, 1e-5)
            out = slow(func, args, {}, run(args))
            assert [_layout(o) for o in out] == [_layout(o) for o in func(*args)]
        assert len(runs) == 2  # once per layout
        bad = (torch.empty(2, 3, 4, 5), torch.empty(4), None, None, None, True, 0.1, 1e-5)
        for _ in range(2):
            with pytest.raises(RuntimeError):
                slow(func, bad, {}, run(bad))
