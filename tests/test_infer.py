"""Tests of gradlint.capture.infer: example inputs inferred from the model itself, one convention or
first-layer rule per test, each on a small model whose forward is then run on the inferred inputs."""

from __future__ import annotations

import dataclasses
import inspect
import math
import random
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradlint.capture.forward_reads import parameter_uses
from gradlint.capture.inputs import ExampleInputs, SequenceLengths, TensorSpec, resolve_inputs
from gradlint.capture.layer_inputs import shape_kind


def runs(model: nn.Module, inputs: ExampleInputs) -> object:
    """The model's real forward on the inputs drawn per the protocol (what a probe does)."""
    args, kwargs = inputs.materialize("cpu", torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(*args, **kwargs)


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


# --- several positional inputs --------------------------------------------------------------------

class Diffusion(nn.Module):
    """forward(x, t): t goes through a free function before any layer."""

    def __init__(self, num_classes=None):
        super().__init__()
        self.num_classes = num_classes
        self.time_embed = nn.Sequential(nn.Linear(16, 8), nn.SiLU())
        self.label_emb = nn.Embedding(num_classes, 8) if num_classes else None
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x, t, y=None):
        assert (y is not None) == (self.num_classes is not None), "y if and only if class-conditional"
        emb = self.time_embed(timestep_embedding(t, 16))
        if y is not None:
            emb = emb + self.label_emb(y)
        return self.conv(x) + emb[:, :, None, None]


def test_timestep_by_name():
    inputs = resolve_inputs(Diffusion())
    x, t = inputs.args
    assert x == TensorSpec((8, 3, 32, 32)) and t == TensorSpec((8,), "int64", 1000)
    assert "x: (8, 3, 32, 32) float32 from conv = Conv2d(in_channels=3), the first layer x reaches" in inputs.note
    assert "t: (8,) int64 timesteps below 1000 (by name; 1000 is a default)" in inputs.note
    assert runs(Diffusion(), inputs).shape == (8, 8, 32, 32)


def test_optional_class_labels_when_the_model_is_class_conditional():
    model = Diffusion(num_classes=10)
    inputs = resolve_inputs(model)
    assert inputs.kwargs == {"y": TensorSpec((8,), "int64", 10)}
    assert "y: (8,) int64 class labels below 10 (by name; the num_embeddings of label_emb)" in inputs.note
    runs(model, inputs)


class NoiseLevel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, noise_level):
        return self.fc(x) * torch.log1p(noise_level.abs())[:, None]


def test_noise_level_is_a_float():
    inputs = resolve_inputs(NoiseLevel())
    assert inputs.args[1] == TensorSpec((8,), "float32")
    assert "noise_level: (8,) float32 noise levels (by name)" in inputs.note
    runs(NoiseLevel(), inputs)


class Projection(nn.Module):
    """A projection discriminator: labels reach an embedding, as (batch,) ids."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 4, stride=2, padding=1)
        self.embed = nn.Embedding(7, 6)

    def forward(self, x, labels):
        h = self.conv(x).sum(dim=(2, 3))
        return (h * self.embed(labels)).sum(1)


def test_class_labels_below_the_embedding_size():
    inputs = resolve_inputs(Projection())
    assert inputs.args[1] == TensorSpec((8,), "int64", 7)
    assert "labels: (8,) int64 class labels below 7 (by name; the num_embeddings of embed)" in inputs.note
    assert runs(Projection(), inputs).shape == (8,)


class Classes(nn.Module):
    """Labels read from the class count the model keeps (no embedding reaches them)."""

    def __init__(self):
        super().__init__()
        self.n_classes = 5
        self.fc = nn.Linear(4, 5)

    def forward(self, x, y):
        return F.cross_entropy(self.fc(x), y)


def test_class_labels_below_the_class_count():
    inputs = resolve_inputs(Classes())
    assert inputs.args[1] == TensorSpec((8,), "int64", 5)
    assert "(by name; n_classes=5 from model)" in inputs.note
    runs(Classes(), inputs)


class RNNModel(nn.Module):
    """The word-language-model shape: sequence-first ids and a hidden state from init_hidden."""

    def __init__(self, batch_first=False):
        super().__init__()
        self.encoder = nn.Embedding(50, 6)
        self.rnn = nn.LSTM(6, 5, num_layers=8, batch_first=batch_first)
        self.decoder = nn.Linear(5, 50)

    def forward(self, input, hidden):
        output, hidden = self.rnn(self.encoder(input), hidden)
        return self.decoder(output), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return weight.new_zeros(8, bsz, 5), weight.new_zeros(8, bsz, 5)


def test_hidden_state_from_init_hidden():
    inputs = resolve_inputs(RNNModel())
    ids, (h, c) = inputs.args
    assert (ids.shape, ids.vocab, inputs.batch_dim) == ((32, 8), 50, 1)
    assert h.shape == c.shape == (8, 8, 5) and h.batch_dim == 1
    assert "sequence first like the model's sequence layers" in inputs.note
    assert "hidden: ((8, 8, 5) float32, (8, 8, 5) float32) from RNNModel.init_hidden(8)" in inputs.note
    runs(RNNModel(), inputs)


def test_hidden_state_follows_the_batch_size():
    # Batch-first ids, a state of 8 layers: only the dim that grew with the batch is resized.
    inputs = resolve_inputs(RNNModel(batch_first=True)).with_batch(3)
    ids, (h, _) = inputs.args
    assert (ids.shape, h.shape, inputs.batch_size) == ((3, 32), (8, 3, 5), 3)
    runs(RNNModel(batch_first=True), inputs)


class GRUState(nn.Module):
    """No init method: the state comes from the GRU it reaches."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 3, num_layers=2, bidirectional=True, batch_first=True)

    def forward(self, x, h0):
        return self.gru(x, h0)[0]


def test_hidden_state_from_the_rnn_it_reaches():
    inputs = resolve_inputs(GRUState())
    assert inputs.args == (TensorSpec((8, 32, 4)), TensorSpec((4, 8, 3)))
    assert "the initial state gru = GRU(hidden_size=3) takes" in inputs.note
    runs(GRUState(), inputs)


class Masked(nn.Module):
    """A required mask that may be None, and an optional one left out."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, ids, src_mask, key_padding_mask=None, targets=None):
        x = self.embed(ids)
        return self.attn(x, x, x, attn_mask=src_mask, key_padding_mask=key_padding_mask)[0]


def test_masks_may_be_none():
    inputs = resolve_inputs(Masked())
    assert inputs.args == (TensorSpec((8, 32), "int64", 20), None) and inputs.kwargs == {}
    assert "src_mask: None, a mask (by name) that forward runs without" in inputs.note
    runs(Masked(), inputs)


class Packed(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(12, 4)
        self.rnn = nn.GRU(4, 4, batch_first=True)

    def forward(self, input_var, input_lengths=None):
        packed = nn.utils.rnn.pack_padded_sequence(self.embedding(input_var), input_lengths, batch_first=True)
        output, _ = self.rnn(packed)
        return nn.utils.rnn.pad_packed_sequence(output, batch_first=True)[0]


def test_lengths_by_name():
    inputs = resolve_inputs(Packed())
    assert inputs.kwargs == {"input_lengths": SequenceLengths(8, 32)}
    assert inputs.meta()[1] == {"input_lengths": [32] * 8}
    assert "input_lengths: [32] * 8, full lengths (by name)" in inputs.note
    assert inputs.with_batch(2).kwargs == {"input_lengths": SequenceLengths(2, 32)}
    assert runs(Packed(), inputs).shape == (8, 32, 4)


class Seq2Seq(nn.Module):
    """Encoder-decoder: each input reaches its own embedding (sequence first, like nn.Transformer)."""

    def __init__(self):
        super().__init__()
        self.src_embedding = nn.Embedding(30, 8)
        self.tgt_embedding = nn.Embedding(40, 8)
        self.transformer = nn.Transformer(8, 2, 1, 1, 16, dropout=0.0)
        self.ff = nn.Linear(8, 40)

    def forward(self, src, trg):
        return self.ff(self.transformer(self.src_embedding(src), self.tgt_embedding(trg)))


def test_encoder_decoder_inputs():
    inputs = resolve_inputs(Seq2Seq())
    assert inputs.args == (TensorSpec((32, 8), "int64", 30), TensorSpec((32, 8), "int64", 40))
    assert "trg: (32, 8) int64 ids < 40 from tgt_embedding = Embedding(num_embeddings=40)" in inputs.note
    runs(Seq2Seq(), inputs)


class TwoTowers(nn.Module):
    """CLIP's shape: helper methods, a tower behind an attribute, a text length the model fixes."""

    def __init__(self):
        super().__init__()
        self.context_length = 20
        self.visual = nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.Flatten(1), nn.LazyLinear(6))
        self.visual.input_resolution = 48
        self.token_embedding = nn.Embedding(100, 6)
        self.positional_embedding = nn.Parameter(torch.zeros(20, 6))

    def encode_image(self, image):
        return self.visual(image.type(torch.float32))

    def encode_text(self, text):
        x = self.token_embedding(text) + self.positional_embedding
        return x.mean(1)

    def forward(self, image, text):
        return self.encode_image(image) @ self.encode_text(text).t()


def test_inputs_through_helper_methods_with_sizes_from_the_model():
    model = TwoTowers()
    inputs = resolve_inputs(model)
    assert inputs.args == (TensorSpec((8, 3, 48, 48)), TensorSpec((8, 20), "int64", 100))
    assert "image size 48 (input_resolution=48 from model.visual)" in inputs.note
    assert "sequence length 20 (context_length=20 from model)" in inputs.note
    runs(model, inputs)


# --- sizes from the model -------------------------------------------------------------------------

@dataclasses.dataclass
class Config:
    image_size: int = 40
    block_size: int = 16


class ConfigNet(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("config, said", [
    (Config(), "image_size=40 from model.config"),
    ({"image_size": 40}, "image_size=40 from model.config"),
    (SimpleNamespace(img_size=(40, 40)), "img_size=(40, 40) from model.config"),
])
def test_image_size_from_configs(config, said):
    inputs = resolve_inputs(ConfigNet(config))
    assert inputs.args == (TensorSpec((8, 3, 40, 40)),)
    assert f"image size 40 ({said})" in inputs.note and "spatial size" not in inputs.note


class PatchViT(nn.Module):
    """A patch embedding (kernel = stride) and a table of 6x6 patches plus a class token."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.pos_embedding = nn.Parameter(torch.zeros(1, 37, 8))
        self.cls = nn.Parameter(torch.zeros(1, 1, 8))

    def forward(self, img):
        x = self.patch(img).flatten(2).transpose(1, 2)
        return torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos_embedding


def test_image_size_from_a_positional_table():
    inputs = resolve_inputs(PatchViT())
    assert inputs.args == (TensorSpec((8, 3, 24, 24)),)
    assert "image size 24 (6x6 patches of 4 in the positional table pos_embedding (1, 37, 8))" in inputs.note
    runs(PatchViT(), inputs)


class Rearrange(nn.Module):
    """What einops.layers.torch.Rearrange keeps: gradlint reads its pattern, never imports einops."""

    def __init__(self, pattern, **axes_lengths):
        super().__init__()
        self.pattern, self.axes_lengths = pattern, axes_lengths

    def forward(self, x):
        p1, p2 = self.axes_lengths["p1"], self.axes_lengths["p2"]
        b, c, h, w = x.shape
        x = x.reshape(b, c, h // p1, p1, w // p2, p2).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (h // p1) * (w // p2), p1 * p2 * c)


class EinopsViT(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_patch_embedding = nn.Sequential(
            Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=8, p2=8), nn.LayerNorm(192), nn.Linear(192, 16))
        self.pos_embedding = nn.Parameter(torch.zeros(1, 26, 16))

    def forward(self, img):
        x = self.to_patch_embedding(img)
        return torch.cat([x[:, :1], x], 1) + self.pos_embedding


def test_einops_patch_embedding():
    inputs = resolve_inputs(EinopsViT())
    assert inputs.args == (TensorSpec((8, 3, 40, 40)),)
    assert "to_patch_embedding.0 = Rearrange('b c (h p1) (w p2) -> b (h w) (p1 p2 c)')" in inputs.note
    runs(EinopsViT(), inputs)


class TinyGPT(nn.Module):
    def __init__(self, block_size):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(11, 4)
        self.wpe = nn.Embedding(block_size, 4)

    def forward(self, idx, targets=None):
        return self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))


def test_sequence_length_capped_by_the_block_size():
    inputs = resolve_inputs(TinyGPT(block_size=10))
    assert inputs.args == (TensorSpec((8, 10), "int64", 11),)
    assert "sequence length 10 (block_size=10 from model)" in inputs.note
    # A longer block keeps the default length.
    assert resolve_inputs(TinyGPT(block_size=64)).args == (TensorSpec((8, 32), "int64", 11),)


# --- first layers that do not fix the shape -------------------------------------------------------

class Styled(nn.Module):
    def __init__(self, pad):
        super().__init__()
        self.pad = pad
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(self.pad(x))


@pytest.mark.parametrize("pad", [nn.ReflectionPad2d(1), nn.ReplicationPad2d(2), nn.ZeroPad2d(1)])
def test_padding_before_a_conv(pad):
    inputs = resolve_inputs(Styled(pad))
    assert inputs.args == (TensorSpec((8, 3, 32, 32)),)
    assert "conv = Conv2d(in_channels=3), the first layer forward calls" in inputs.note


@pytest.mark.parametrize("model, shape, said", [
    (nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), (8, 1, 28, 28), "read as 1 channel of 28x28 (784 = 1·28·28)"),
    (nn.Sequential(nn.Flatten(), nn.Linear(3072, 10)), (8, 3, 32, 32), "read as 3 channels of 32x32"),
    (nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), (8, 12), "1 = Linear(in_features=12) after a flatten"),
])
def test_flatten_before_a_linear(model, shape, said):
    inputs = resolve_inputs(model)
    assert inputs.args == (TensorSpec(shape),)
    assert said in inputs.note
    runs(model, inputs)


class ViewThenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1 * 16 * 16, 3)

    def forward(self, x):
        return self.fc(x.view(x.size(0), -1))


def test_view_to_batch_rows_before_a_linear():
    inputs = resolve_inputs(ViewThenLinear())
    assert inputs.args == (TensorSpec((8, 1, 16, 16)),)
    runs(ViewThenLinear(), inputs)


class CellLoop(nn.Module):
    def __init__(self, time_first):
        super().__init__()
        self.time_first = time_first
        self.cell = nn.LSTMCell(5, 4)

    def forward(self, x):
        h = c = None
        if self.time_first:
            for x_t in x:
                h, c = self.cell(x_t, None if h is None else (h, c))
        else:
            for t in range(x.size(1)):
                h, c = self.cell(x[:, t], None if h is None else (h, c))
        return h


@pytest.mark.parametrize("time_first, shape, order", [(False, (8, 32, 5), "x[:, t]"), (True, (32, 8, 5), "x[t]")])
def test_loops_over_a_cell(time_first, shape, order):
    inputs = resolve_inputs(CellLoop(time_first))
    assert inputs.args == (TensorSpec(shape),)
    assert f"cell = LSTMCell(input_size=5), called per time step ({order})" in inputs.note
    assert runs(CellLoop(time_first), inputs).shape == (8, 4)


@pytest.mark.parametrize("cell", [nn.RNNCell(3, 2), nn.GRUCell(3, 2), nn.LSTMCell(3, 2)])
def test_one_step_of_a_cell(cell):
    inputs = resolve_inputs(cell)
    assert inputs.args == (TensorSpec((8, 3)),)
    runs(cell, inputs)


class ScaledEmbedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(25, 4)

    def forward(self, tokens):
        return self.embedding(tokens.long()) * 2.0


class WrappedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 25)
        self.tok = ScaledEmbedding()

    def forward(self, tokens):
        return self.head(self.tok(tokens))


def test_embedding_behind_a_wrapper():
    inputs = resolve_inputs(WrappedLM())
    assert inputs.args == (TensorSpec((8, 32), "int64", 25),)
    assert "tok.embedding = Embedding(num_embeddings=25)" in inputs.note


class ValidUNet(nn.Module):
    """Valid convolutions and a crop: the forward needs inputs larger than the default."""

    def __init__(self):
        super().__init__()
        self.down = nn.ModuleList([nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3)])
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        skips = []
        for i, conv in enumerate(self.down):
            x = F.relu(conv(x))
            skips.append(x)
            x = F.max_pool2d(x, 2) if i < 2 else x
        x = self.up(x)
        skip = skips[1]
        dy, dx = (skip.shape[2] - x.shape[2]) // 2, (skip.shape[3] - x.shape[3]) // 2
        assert dy >= 0 and x.shape[2] >= 16, "too small for this depth"
        return self.out(torch.cat([x, skip[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]], 1))


def test_unet_valid_convolutions_grow_the_size():
    inputs = resolve_inputs(ValidUNet())
    assert inputs.args == (TensorSpec((8, 1, 64, 64)),)
    assert "spatial size 64 (the forward does not run at 32) are defaults" in inputs.note
    runs(ValidUNet(), inputs)


# --- what cannot be inferred, and what inference leaves alone -------------------------------------

class Unknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, z):
        return self.fc(x) * z.sigmoid()


def test_a_parameter_nothing_explains_is_named_with_its_line():
    inputs = resolve_inputs(Unknown())
    assert not inputs.found
    line = inspect.getsourcelines(Unknown.forward)[1]
    assert "nothing says what forward's parameter 'z' (" in inputs.note
    assert f"test_infer.py:{line}) takes" in inputs.note
    assert "declare them, e.g. @gradlint.target(inputs=[(8, 4), <shape of z>])" in inputs.note


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, t):
        if random.random() < 2:  # consumes Python's random state on every call
            x = x + torch.randn(x.shape, device=x.device)
        print("forward ran")
        return self.fc(x)


def test_trial_forwards_leave_random_states_weights_and_stdout_alone(capsys):
    model = Noisy()
    before = [p.detach().clone() for p in model.parameters()]
    py_state, torch_state = random.getstate(), torch.random.get_rng_state()
    inputs = resolve_inputs(model)
    assert inputs.found
    assert random.getstate() == py_state and torch.equal(torch.random.get_rng_state(), torch_state)
    assert all(torch.equal(a, b) and b.device.type == "cpu" for a, b in zip(before, model.parameters()))
    assert capsys.readouterr().out == ""


def test_forward_reads_follows_parameters():
    uses = parameter_uses(TwoTowers(), shape_kind)
    assert (uses["image"].path, uses["image"].flow.how) == ("visual", "exact")
    assert (uses["text"].path, uses["text"].arg) == ("token_embedding", 0)
    assert parameter_uses(Diffusion(), shape_kind)["t"].flow.how == "opaque"
