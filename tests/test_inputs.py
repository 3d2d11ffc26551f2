"""Tests of gradlint.base.targets and gradlint.capture.inputs: declaring, resolving and drawing example inputs."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gradlint.base.errors import InputError, LoadError
from gradlint.base.targets import TARGET_ATTR, TargetOptions, Tokens, check_shape, target, tokens
from gradlint.capture.inputs import ExampleInputs, TensorSpec, resolve_inputs

ROOT = Path(__file__).resolve().parents[1]


# --- gradlint.base.targets -----------------------------------------------------------------------------

def test_targets_module_does_not_import_torch():
    code = "import sys, gradlint.base.targets; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_tokens():
    assert tokens([2, 16], 50) == Tokens((2, 16), 50, "long")
    assert tokens((4,), vocab=3, dtype="int32").dtype == "int32"


@pytest.mark.parametrize("kwargs, message", [
    ({"shape": (2, 8), "vocab": 0}, "vocab=0 must be a positive int"),
    ({"shape": (2, 8), "vocab": True}, "vocab=True must be a positive int"),
    ({"shape": (2, 8), "vocab": 2.5}, "vocab=2.5 must be a positive int"),
    ({"shape": (8, -1), "vocab": 5}, "shape=(8, -1) must contain positive ints"),
    ({"shape": 8, "vocab": 5}, "shape=8 must be a tuple of positive ints"),
    ({"shape": (2, 8), "vocab": 5, "dtype": "float32"}, "dtype='float32' must be an integer dtype name"),
])
def test_tokens_rejects(kwargs, message):
    with pytest.raises(InputError) as info:
        tokens(**kwargs)
    assert message in info.value.message


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 10_000), min_size=1, max_size=6))
def test_check_shape_accepts_positive_ints(dims):
    assert check_shape(tuple(dims)) == tuple(dims)
    assert check_shape(dims) == tuple(dims)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=0, max_size=4), st.integers(-100, 0), st.data())
def test_check_shape_rejects_non_positive(dims, bad, data):
    at = data.draw(st.integers(0, len(dims)))
    shape = tuple(dims[:at] + [bad] + dims[at:])
    with pytest.raises(InputError) as info:
        check_shape(shape)
    assert info.value.message == f"input shape {shape!r} must contain positive ints"


@pytest.mark.parametrize("shape, fragment", [
    ((), "is empty"),
    ((8, True), "must contain positive ints"),
    ((8, 2.0), "must contain positive ints"),
    ("8,512", "must be a tuple of positive ints"),
])
def test_check_shape_rejects_malformed(shape, fragment):
    with pytest.raises(InputError, match=fragment):
        check_shape(shape)


def test_target_bare_and_with_options():
    def make():
        return nn.Linear(2, 2)

    assert target(make) is make
    assert getattr(make, TARGET_ATTR) == TargetOptions()

    @target(inputs=[(2, 3), tokens((2, 5), 9)], kwargs={"depth": 2}, name="mine")
    class Net(nn.Module):
        pass

    options = vars(Net)[TARGET_ATTR]
    assert options == TargetOptions(inputs=[(2, 3), Tokens((2, 5), 9)], kwargs={"depth": 2}, name="mine")
    assert hash(options) == hash(TargetOptions(name="mine"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.name = "other"


def test_target_positional_shape_is_misuse():
    with pytest.raises(LoadError, match="must decorate a model factory") as info:
        target((8, 512))
    assert info.value.hint == "pass inputs by keyword: @gradlint.target(inputs=(8, 512))"


@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"inputs": (8, 0)}, InputError, r"input shape \(8, 0\) must contain positive ints"),
    ({"inputs": [8, 512]}, InputError, "ambiguous"),
    ({"inputs": []}, InputError, "declares no inputs"),
    ({"inputs": {1: (2, 3)}}, InputError, "must be the name of a forward"),
    ({"inputs": {"x": "big"}}, InputError, "must be a tuple of positive ints"),
    ({"inputs": 3}, InputError, "must be a shape tuple"),
    ({"kwargs": [("depth", 2)]}, LoadError, "must be a dict"),
    ({"name": ""}, LoadError, "must be a non-empty str"),
])
def test_target_rejects_malformed_options(kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        target(**kwargs)


# --- TensorSpec -----------------------------------------------------------------------------------

def test_tensor_spec_normalizes_dtype_and_validates():
    assert TensorSpec((2, 3), "long").dtype == "int64"
    assert TensorSpec((2, 3), "float").dtype == "float32"
    assert TensorSpec((), "float32").shape == ()
    with pytest.raises(InputError, match="not a torch dtype name"):
        TensorSpec((2,), "floaty")
    with pytest.raises(InputError, match="non-negative ints"):
        TensorSpec((2, -3))
    with pytest.raises(InputError, match="vocab=0"):
        TensorSpec((2,), "int64", vocab=0)


def test_materialize_floats_follow_the_protocol():
    x = TensorSpec((20_000,)).materialize(generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


def test_materialize_is_reproducible_with_a_generator():
    spec = TensorSpec((4, 5), "bfloat16")
    a = spec.materialize(generator=torch.Generator().manual_seed(3))
    b = spec.materialize(generator=torch.Generator().manual_seed(3))
    assert a.dtype == torch.bfloat16 and torch.equal(a, b)


def test_materialize_tokens_cover_the_vocabulary():
    ids = TensorSpec((4000,), "int64", vocab=7).materialize(generator=torch.Generator().manual_seed(0))
    assert ids.dtype == torch.int64
    assert set(ids.tolist()) == set(range(7))


def test_materialize_bool_and_unknown_ints():
    mask = TensorSpec((1000,), "bool").materialize()
    assert mask.dtype == torch.bool and 0.4 < mask.float().mean().item() < 0.6
    with pytest.raises(InputError, match="without a vocab"):
        TensorSpec((3,), "int64").materialize()


def test_meta():
    t = TensorSpec((2, 7), "float64").meta()
    assert t.device.type == "meta" and t.shape == (2, 7) and t.dtype == torch.float64


def test_from_tensor():
    assert TensorSpec.from_tensor(torch.tensor([[0, 4], [2, 1]])) == TensorSpec((2, 2), "int64", vocab=5)
    assert TensorSpec.from_tensor(torch.tensor([-1, 2])).vocab is None
    assert TensorSpec.from_tensor(torch.zeros(3, dtype=torch.float16)) == TensorSpec((3,), "float16")


# --- ExampleInputs --------------------------------------------------------------------------------

def test_example_inputs_materialize_meta_and_batch():
    inputs = ExampleInputs(args=(TensorSpec((3, 4)),), kwargs={"ids": TensorSpec((3, 2), "int64", 5), "scale": 2.0},
                           source="cli")
    args, kwargs = inputs.materialize()
    assert args[0].shape == (3, 4) and kwargs["ids"].max() < 5 and kwargs["scale"] == 2.0
    args, kwargs = inputs.meta()
    assert args[0].device.type == "meta" and kwargs["ids"].dtype == torch.int64 and kwargs["scale"] == 2.0
    assert inputs.batch_size == 3 and inputs.found
    assert inputs.describe() == "(3, 4) float32, ids: (3, 2) int64 ids < 5, scale: 2.0"
    assert ExampleInputs().batch_size is None and not ExampleInputs().found


def test_example_inputs_reuse_concrete_ints_without_vocab():
    original = torch.tensor([-3, 5])
    inputs = ExampleInputs(args=(TensorSpec.from_tensor(original),), source="decorator",
                           concrete=((original,), {}))
    assert torch.equal(inputs.materialize()[0][0], original)


# --- resolve_inputs: declared ---------------------------------------------------------------------

class TwoIn(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 4)
        self.fc = nn.Linear(3, 4)

    def forward(self, ids, x):
        return self.embed(ids).mean(1) + self.fc(x)


def run(model: nn.Module, inputs: ExampleInputs) -> torch.Tensor:
    """Calls the model on inputs drawn with a fixed seed."""
    args, kwargs = inputs.materialize(generator=torch.Generator().manual_seed(0))
    return model(*args, **kwargs)


def test_decorator_shape():
    inputs = resolve_inputs(nn.Linear(6, 2), TargetOptions(inputs=(4, 6)))
    assert inputs == ExampleInputs((TensorSpec((4, 6)),), {}, "decorator", inputs.note)
    assert inputs.note == "inputs declared by @gradlint.target: (4, 6) float32"
    assert run(nn.Linear(6, 2), inputs).shape == (4, 2)


def test_decorator_list_with_tokens():
    inputs = resolve_inputs(TwoIn(), TargetOptions(inputs=[tokens((2, 5), 11), (2, 3)]))
    assert inputs.args == (TensorSpec((2, 5), "int64", 11), TensorSpec((2, 3)))
    assert run(TwoIn(), inputs).shape == (2, 4)


def test_decorator_dict_with_tokens():
    inputs = resolve_inputs(TwoIn(), TargetOptions(inputs={"ids": tokens((2, 5), 11, dtype="int32"), "x": (2, 3)}))
    assert inputs.args == () and inputs.kwargs == {"ids": TensorSpec((2, 5), "int32", 11), "x": TensorSpec((2, 3))}
    assert run(TwoIn(), inputs).shape == (2, 4)


def test_decorator_tokens_alone():
    inputs = resolve_inputs(nn.Embedding(9, 2), TargetOptions(inputs=tokens((3, 4), 9)))
    assert inputs.args == (TensorSpec((3, 4), "int64", 9),) and inputs.batch_size == 3


def make_inputs():
    """An inputs callable returning a dict of real tensors."""
    return {"ids": torch.tensor([[1, 2, 3]]), "x": torch.randn(1, 3)}


def test_decorator_callable_keeps_concrete_tensors():
    inputs = resolve_inputs(TwoIn(), TargetOptions(inputs=make_inputs))
    assert inputs.source == "decorator"
    assert inputs.kwargs == {"ids": TensorSpec((1, 3), "int64", 4), "x": TensorSpec((1, 3))}
    assert torch.equal(inputs.concrete[1]["ids"], torch.tensor([[1, 2, 3]]))
    assert "make_inputs" in inputs.note
    assert run(TwoIn(), inputs).shape == (1, 4)


def test_decorator_callable_tuple_and_tensor():
    pair = resolve_inputs(TwoIn(),
                          TargetOptions(inputs=lambda: (torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 3))))
    assert [a.shape for a in pair.args] == [(2, 5), (2, 3)]
    single = resolve_inputs(nn.Linear(3, 1), TargetOptions(inputs=lambda: torch.ones(5, 3)))
    assert single.args == (TensorSpec((5, 3)),)


def failing_inputs():
    """An inputs callable that fails on its second line."""
    raise RuntimeError("no data here")


def test_decorator_callable_error_points_at_user_line():
    with pytest.raises(InputError) as info:
        resolve_inputs(nn.Linear(2, 2), TargetOptions(inputs=failing_inputs))
    err = info.value
    assert err.path == __file__
    lines = Path(__file__).read_text().splitlines()
    assert lines[err.line - 1].strip() == 'raise RuntimeError("no data here")'
    assert "RuntimeError: no data here" in err.message
    assert "no data here" in err.traceback_text and "gradlint/capture/inputs.py" not in err.traceback_text


@pytest.mark.parametrize("produced, fragment", [(3, "returned int"), ((1, "a"), "returned no tensor")])
def test_decorator_callable_bad_return(produced, fragment):
    with pytest.raises(InputError, match=fragment):
        resolve_inputs(nn.Linear(2, 2), TargetOptions(inputs=lambda: produced))


# --- resolve_inputs: example_input_array and the command line -------------------------------------

class WithExample(nn.Module):
    def __init__(self, example):
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.example_input_array = example

    def forward(self, x, scale=1.0):
        return self.fc(x) * scale


@pytest.mark.parametrize("example, args, kwargs", [
    (torch.randn(4, 6), (TensorSpec((4, 6)),), {}),
    ((torch.randn(2, 6), 3.0), (TensorSpec((2, 6)), 3.0), {}),
    ({"x": torch.randn(5, 6), "scale": 2.0}, (), {"x": TensorSpec((5, 6)), "scale": 2.0}),
])
def test_example_input_array(example, args, kwargs):
    model = WithExample(example)
    inputs = resolve_inputs(model, None, [(9, 9)])
    assert (inputs.args, inputs.kwargs, inputs.source) == (args, kwargs, "example_input_array")
    assert inputs.concrete is not None
    assert run(model, inputs).shape[-1] == 3


def test_example_input_array_without_tensor():
    with pytest.raises(InputError, match="holds no tensor"):
        resolve_inputs(WithExample("not a tensor"))


def test_order_decorator_then_example_then_cli_then_inference():
    model = WithExample(torch.randn(4, 6))
    assert resolve_inputs(model, TargetOptions(inputs=(1, 6)), [(2, 6)]).source == "decorator"
    assert resolve_inputs(model, TargetOptions(), [(2, 6)]).source == "example_input_array"
    assert resolve_inputs(nn.Linear(6, 3), None, [(2, 6)]).source == "cli"
    assert resolve_inputs(nn.Linear(6, 3), None, []).source == "inferred"


def test_cli_shapes():
    inputs = resolve_inputs(TwoIn(), None, [(2, 5), (2, 3)])
    assert inputs.args == (TensorSpec((2, 5)), TensorSpec((2, 3))) and inputs.source == "cli"
    assert inputs.note == "inputs from --input-shape: (2, 5) float32, (2, 3) float32"


@pytest.mark.parametrize("shape, message", [
    ((8, -1), "input shape (8, -1) must contain positive ints"),
    ([8, 0], "input shape [8, 0] must contain positive ints"),
    ("8x3", "input shape '8x3' must be a tuple of positive ints, such as (8, 512)"),
])
def test_cli_shapes_rejected(shape, message):
    with pytest.raises(InputError) as info:
        resolve_inputs(nn.Linear(2, 2), None, [shape])
    assert info.value.message == message


def test_float_inputs_follow_the_model_dtype():
    model = nn.Linear(6, 3).double()
    assert resolve_inputs(model).args[0].dtype == "float64"
    assert resolve_inputs(model, TargetOptions(inputs=(2, 6))).args[0].dtype == "float64"
    assert resolve_inputs(model, None, [(2, 6)]).args[0].dtype == "float64"


def test_default_batch():
    assert resolve_inputs(nn.Linear(6, 3), default_batch=3).args[0].shape == (3, 6)
    with pytest.raises(InputError, match="default_batch=0 must be a positive int"):
        resolve_inputs(nn.Linear(6, 3), default_batch=0)


# --- resolve_inputs: inference --------------------------------------------------------------------

class Wrap(nn.Module):
    """Calls one layer; returns the first output of layers that return tuples."""

    def __init__(self, *layers):
        super().__init__()
        self.body = nn.Sequential(*layers[:-1])
        self.layer = layers[-1]

    def forward(self, x):
        out = self.layer(self.body(x)) if len(self.body) else self.layer(x)
        return out[0] if isinstance(out, tuple) else out


class Attn(nn.Module):
    def __init__(self, batch_first):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)

    def forward(self, x):
        return self.attn(x, x, x)[0]


@pytest.mark.parametrize("model, shape, vocab, batch_dim, fragments", [
    (nn.Linear(12, 2), (8, 12), None, 0,
     ["from the model itself, a Linear(in_features=12); batch size 8 is a default"]),
    (Wrap(nn.Dropout(), nn.Linear(5, 2)), (8, 5), None, 0, ["layer = Linear(in_features=5)"]),
    (nn.Sequential(nn.Conv1d(2, 3, 3)), (8, 2, 64), None, 0,
     ["0 = Conv1d(in_channels=2), the first layer forward calls", "spatial size 64"]),
    (nn.Sequential(nn.Conv2d(3, 4, 3)), (8, 3, 32, 32), None, 0, ["batch size 8 and spatial size 32 are defaults"]),
    (nn.Sequential(nn.Conv3d(1, 2, 3)), (8, 1, 16, 16, 16), None, 0, ["spatial size 16"]),
    (nn.Sequential(nn.ConvTranspose2d(5, 2, 2)), (8, 5, 32, 32), None, 0, ["ConvTranspose2d(in_channels=5)"]),
    (nn.Sequential(nn.Embedding(30, 4)), (8, 32), 30, 0,
     ["token ids (8, 32) over a vocabulary of 30 (num_embeddings)", "0 = Embedding(num_embeddings=30)",
      "batch size 8 and sequence length 32 are defaults"]),
    (Wrap(nn.LSTM(7, 4, batch_first=True)), (8, 32, 7), None, 0, ["LSTM(input_size=7, batch_first=True)"]),
    (Wrap(nn.GRU(7, 4)), (32, 8, 7), None, 1, ["GRU(input_size=7, batch_first=False)"]),
    (Wrap(nn.RNN(3, 4)), (32, 8, 3), None, 1, ["RNN(input_size=3"]),
    (Attn(True), (8, 32, 8), None, 0, ["MultiheadAttention(embed_dim=8, batch_first=True)"]),
    (Attn(False), (32, 8, 8), None, 1, ["batch_first=False"]),
    (Wrap(nn.LayerNorm(6), nn.Linear(6, 2)), (8, 32, 6), None, 0, ["LayerNorm(normalized_shape=(6,))"]),
    (nn.Sequential(nn.LayerNorm([2, 3, 3])), (8, 2, 3, 3), None, 0, ["normalized_shape=(2, 3, 3)"]),
    (nn.Sequential(nn.BatchNorm2d(3), nn.ReLU()), (8, 3, 32, 32), None, 0, ["BatchNorm2d(num_features=3)"]),
    (nn.Sequential(nn.BatchNorm1d(5)), (8, 5), None, 0, ["BatchNorm1d(num_features=5)"]),
    (nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), (8, 32, 8), None, 0, ["self_attn = MultiheadAttention"]),
])
def test_infer_first_layer(model, shape, vocab, batch_dim, fragments):
    inputs = resolve_inputs(model)
    (spec,) = inputs.args
    assert (inputs.source, spec.shape, spec.vocab, inputs.batch_dim) == ("inferred", shape, vocab, batch_dim)
    assert inputs.batch_size == 8
    for fragment in fragments:
        assert fragment in inputs.note
    assert "batch size 8" in inputs.note and "default" in inputs.note
    with torch.no_grad():
        run(model, inputs)


class HeadFirst(nn.Module):
    """Registers the head before the embedding that forward calls first."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 20)
        self.embed = nn.Embedding(20, 4)

    def forward(self, ids):
        return self.head(self.embed(ids))


class Features(nn.Module):
    """Reaches its first layer through a helper method and a nested attribute."""

    def __init__(self):
        super().__init__()
        self.classifier = nn.Linear(4, 2)
        self.backbone = nn.ModuleDict({"stem": nn.Conv2d(3, 4, 3), "pool": nn.AdaptiveAvgPool2d(1)})

    def features(self, x):
        return self.backbone.pool(self.backbone.stem(x)).flatten(1)

    def forward(self, x):
        return self.classifier(self.features(x))


def test_infer_prefers_forward_call_order():
    inputs = resolve_inputs(HeadFirst())
    assert inputs.args == (TensorSpec((8, 32), "int64", 20),)
    assert "the first layer forward calls" in inputs.note
    features = resolve_inputs(Features())
    assert features.args == (TensorSpec((8, 3, 32, 32)),)
    assert "backbone.stem = Conv2d(in_channels=3)" in features.note
    run(Features(), features)


def test_infer_image_size_from_config():
    model = nn.Sequential(nn.Conv2d(3, 4, 16, stride=16))
    model.config = SimpleNamespace(image_size=48)
    inputs = resolve_inputs(model)
    assert inputs.args == (TensorSpec((8, 3, 48, 48)),)
    assert "image size 48 (image_size=48 from model.config)" in inputs.note and "spatial size" not in inputs.note


def test_infer_falls_back_to_registration_order():
    namespace = {"nn": nn}
    exec(compile(
        "class NoSource(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(5, 2)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x)\n", "<generated>", "exec"), namespace)
    inputs = resolve_inputs(namespace["NoSource"]())
    assert inputs.args == (TensorSpec((8, 5)),)
    assert "registration order" in inputs.note


class TwoRequired(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x, t):
        return self.fc(x) + t


class CustomLeaf(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x * self.scale


def test_inferred_inputs_the_forward_rejects_are_kept_for_the_error():
    # t is a timestep by its name, but fc(x) + t cannot broadcast: the capture then reports the
    # forward's own error on these inputs, rather than an analysis without inputs.
    inputs = resolve_inputs(TwoRequired())
    assert inputs.args == (TensorSpec((8, 3)), TensorSpec((8,), "int64", 1000))
    assert inputs.note.endswith("; the forward raised on every combination tried")


@pytest.mark.parametrize("model, fragment", [
    (Wrap(CustomLeaf()), "layer = CustomLeaf"),
    (nn.Sequential(nn.ReLU()), "no layer gradlint can read an input shape from"),
])
def test_nothing_inferred(model, fragment):
    inputs = resolve_inputs(model)
    assert (inputs.source, inputs.args, inputs.kwargs) == (None, (), {})
    assert not inputs.found and inputs.batch_size is None
    assert inputs.note.startswith("could not infer example inputs: ")
    assert fragment in inputs.note
    assert "parameter shapes only" in inputs.note and "forward pass" in inputs.note
