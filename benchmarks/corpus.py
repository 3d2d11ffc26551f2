"""The model corpus the accuracy benchmark measures: synthetic models with known failure
modes and real architectures built from Hugging Face transformers configs (random init).

Every entry builds its model on the CPU with a fixed seed and declares its example inputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn as nn

from gradlint.capture.inputs import ExampleInputs, TensorSpec


@dataclass(frozen=True)
class Entry:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], ExampleInputs]
    family: str  # "synthetic" or "hf"
    note: str = ""


def floats(*shape: int) -> Callable[[], ExampleInputs]:
    return lambda: ExampleInputs((TensorSpec(tuple(shape)),), {}, "decorator")


def tokens(b: int, t: int, vocab: int, **consts: Any) -> Callable[[], ExampleInputs]:
    return lambda: ExampleInputs((TensorSpec((b, t), "int64", vocab),), dict(consts), "decorator")


# -- synthetic ------------------------------------------------------------------------------------

def mlp(depth: int, width: int, act: type[nn.Module] | None, init: str = "default", bias: bool = True,
        gain: float = 1.0) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(depth):
        lin = nn.Linear(width, width, bias=bias)
        if init == "kaiming":
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        elif init == "xavier":
            nn.init.xavier_uniform_(lin.weight, gain=gain)
        elif init == "std1":
            nn.init.normal_(lin.weight, std=1.0)
        if bias and init != "default":
            nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < depth - 1 and act is not None:
            layers.append(act())
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    def __init__(self, width: int, norm: bool, zero_last: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(width) if norm else nn.Identity()
        self.fc = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        nn.init.kaiming_normal_(self.fc.weight, nonlinearity="relu")
        nn.init.kaiming_normal_(self.fc2.weight, nonlinearity="relu")
        nn.init.zeros_(self.fc.bias)
        nn.init.zeros_(self.fc2.bias)
        if zero_last:
            nn.init.zeros_(self.fc2.weight)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc(self.norm(x))))


class ResMLP(nn.Module):
    def __init__(self, depth: int = 20, width: int = 256, norm: bool = False, zero_last: bool = False):
        super().__init__()
        self.blocks = nn.Sequential(*[ResBlock(width, norm, zero_last) for _ in range(depth)])
        self.out = nn.Linear(width, width)

    def forward(self, x):
        return self.out(self.blocks(x))


def bn_mlp(depth: int = 30, width: int = 256) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, width))


def cnn(depth: int = 8, ch: int = 32, bn: bool = False, kaiming: bool = False) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, ch, 3, padding=1)]
    for _ in range(depth - 1):
        if bn:
            layers.append(nn.BatchNorm2d(ch))
        layers.append(nn.ReLU())
        layers.append(nn.Conv2d(ch, ch, 3, padding=1))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, 10)]
    m = nn.Sequential(*layers)
    if kaiming:
        for x in m.modules():
            if isinstance(x, nn.Conv2d):
                nn.init.kaiming_normal_(x.weight, nonlinearity="relu")
                nn.init.zeros_(x.bias)
    return m


class RecurrentNet(nn.Module):
    def __init__(self, kind: str, size: int = 128, forget_bias: float = 0.0):
        super().__init__()
        cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[kind]
        self.rnn = cls(size, size, batch_first=True)
        if kind == "lstm" and forget_bias:
            with torch.no_grad():
                self.rnn.bias_ih_l0[size:2 * size].fill_(forget_bias)
                self.rnn.bias_hh_l0[size:2 * size].zero_()
        self.head = nn.Linear(size, size)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class Encoder(nn.Module):
    def __init__(self, d: int = 128, layers: int = 6, norm_first: bool = False):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.1, batch_first=True, norm_first=norm_first)
        self.enc = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d) if norm_first else None,
                                         enable_nested_tensor=False)
        self.head = nn.Linear(d, d)

    def forward(self, x):
        return self.head(self.enc(x))


class LayerScaleBlock(nn.Module):
    def __init__(self, d: int, init: float):
        super().__init__()
        self.dw = nn.Conv2d(d, d, 7, padding=3, groups=d)
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.gamma = nn.Parameter(init * torch.ones(d))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(nn.functional.gelu(self.fc1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class LayerScaleNet(nn.Module):
    def __init__(self, d: int = 64, depth: int = 8, init: float = 1e-6):
        super().__init__()
        self.stem = nn.Conv2d(3, d, 4, stride=4)
        self.blocks = nn.Sequential(*[LayerScaleBlock(d, init) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(self.norm(x.mean((2, 3))))


class UnscaledAttention(nn.Module):
    """Eager self-attention without the 1/sqrt(d) scale, with a residual and LayerNorm."""

    def __init__(self, d: int = 256, layers: int = 2):
        super().__init__()
        self.qkv = nn.ModuleList([nn.Linear(d, 3 * d) for _ in range(layers)])
        self.proj = nn.ModuleList([nn.Linear(d, d) for _ in range(layers)])
        self.norms = nn.ModuleList([nn.LayerNorm(d) for _ in range(layers)])

    def forward(self, x):
        for qkv, proj, norm in zip(self.qkv, self.proj, self.norms):
            q, k, v = qkv(norm(x)).chunk(3, dim=-1)
            att = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
            x = x + proj(att @ v)
        return x


def seeded(fn: Callable[[], nn.Module], seed: int = 0) -> Callable[[], nn.Module]:
    def build():
        torch.manual_seed(seed)
        return fn()
    return build


SYNTHETIC = [
    Entry("mlp-sigmoid-default", seeded(lambda: mlp(20, 256, nn.Sigmoid)), floats(64, 256), "synthetic"),
    Entry("mlp-tanh-xavier", seeded(lambda: mlp(20, 256, nn.Tanh, "xavier")), floats(64, 256), "synthetic"),
    Entry("mlp-tanh-xavier-gain3", seeded(lambda: mlp(20, 256, nn.Tanh, "xavier", gain=3.0)), floats(64, 256),
          "synthetic"),
    Entry("mlp-relu-default", seeded(lambda: mlp(20, 256, nn.ReLU)), floats(64, 256), "synthetic"),
    Entry("mlp-relu-kaiming", seeded(lambda: mlp(20, 256, nn.ReLU, "kaiming")), floats(64, 256), "synthetic"),
    Entry("mlp-relu-std1-nobias", seeded(lambda: mlp(10, 256, nn.ReLU, "std1", bias=False)), floats(64, 256),
          "synthetic"),
    Entry("mlp-gelu-default", seeded(lambda: mlp(12, 256, nn.GELU)), floats(64, 256), "synthetic"),
    Entry("mlp-silu-kaiming", seeded(lambda: mlp(20, 256, nn.SiLU, "kaiming")), floats(64, 256), "synthetic"),
    Entry("resmlp-nonorm", seeded(lambda: ResMLP(20, 256)), floats(64, 256), "synthetic"),
    Entry("resmlp-prenorm", seeded(lambda: ResMLP(20, 256, norm=True)), floats(64, 256), "synthetic"),
    Entry("resmlp-zeroinit", seeded(lambda: ResMLP(20, 256, zero_last=True)), floats(64, 256), "synthetic"),
    Entry("mlp-batchnorm-30", seeded(lambda: bn_mlp(30, 256)), floats(64, 256), "synthetic"),
    Entry("cnn-plain-default", seeded(lambda: cnn(8, 32)), floats(16, 3, 32, 32), "synthetic"),
    Entry("cnn-bn-kaiming", seeded(lambda: cnn(8, 32, bn=True, kaiming=True)), floats(16, 3, 32, 32), "synthetic"),
    Entry("rnn-tanh-64", seeded(lambda: RecurrentNet("rnn")), floats(16, 64, 128), "synthetic"),
    Entry("lstm-default-32", seeded(lambda: RecurrentNet("lstm")), floats(16, 32, 128), "synthetic"),
    Entry("lstm-forget1-12", seeded(lambda: RecurrentNet("lstm", forget_bias=1.0)), floats(16, 12, 128), "synthetic"),
    Entry("gru-default-32", seeded(lambda: RecurrentNet("gru")), floats(16, 32, 128), "synthetic"),
    Entry("transformer-postln-6", seeded(lambda: Encoder(128, 6)), floats(16, 32, 128), "synthetic"),
    Entry("transformer-preln-6", seeded(lambda: Encoder(128, 6, norm_first=True)), floats(16, 32, 128), "synthetic"),
    Entry("layerscale-convnet", seeded(lambda: LayerScaleNet()), floats(8, 3, 32, 32), "synthetic"),
    Entry("attention-unscaled", seeded(lambda: UnscaledAttention()), floats(8, 32, 256), "synthetic"),
]


# -- Hugging Face architectures -------------------------------------------------------------------

def _hf(cls_name: str, config_name: str, **cfg: Any) -> Callable[[], nn.Module]:
    def build():
        import transformers
        torch.manual_seed(0)
        config = getattr(transformers, config_name)(**cfg)
        return getattr(transformers, cls_name)(config).train()
    return build


def _image(b: int, c: int, s: int) -> Callable[[], ExampleInputs]:
    return lambda: ExampleInputs((TensorSpec((b, c, s, s)),), {"return_dict": False}, "decorator")


V = 1000
HF = [
    Entry("hf-bert", _hf("BertModel", "BertConfig", vocab_size=V, hidden_size=128, num_hidden_layers=4,
                         num_attention_heads=4, intermediate_size=512, max_position_embeddings=128),
          tokens(8, 32, V, return_dict=False), "hf"),
    Entry("hf-roberta", _hf("RobertaModel", "RobertaConfig", vocab_size=V, hidden_size=128, num_hidden_layers=4,
                            num_attention_heads=4, intermediate_size=512, max_position_embeddings=130),
          tokens(8, 32, V, return_dict=False), "hf"),
    Entry("hf-distilbert", _hf("DistilBertModel", "DistilBertConfig", vocab_size=V, dim=128, n_layers=4, n_heads=4,
                               hidden_dim=512, max_position_embeddings=128),
          tokens(8, 32, V, return_dict=False), "hf"),
    Entry("hf-gpt2-lm", _hf("GPT2LMHeadModel", "GPT2Config", vocab_size=V, n_embd=128, n_layer=4, n_head=4,
                            n_positions=128, bos_token_id=0, eos_token_id=0),
          tokens(8, 32, V, use_cache=False, return_dict=False), "hf"),
    Entry("hf-llama-lm", _hf("LlamaForCausalLM", "LlamaConfig", vocab_size=V, hidden_size=128, intermediate_size=344,
                             num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=128),
          tokens(8, 32, V, use_cache=False, return_dict=False), "hf"),
    Entry("hf-mistral", _hf("MistralModel", "MistralConfig", vocab_size=V, hidden_size=128, intermediate_size=344,
                            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=128),
          tokens(8, 32, V, use_cache=False, return_dict=False), "hf"),
    Entry("hf-t5-encoder", _hf("T5EncoderModel", "T5Config", vocab_size=V, d_model=128, d_kv=32, d_ff=512,
                               num_layers=4, num_heads=4),
          tokens(8, 32, V, return_dict=False), "hf"),
    Entry("hf-vit", _hf("ViTModel", "ViTConfig", image_size=32, patch_size=4, num_channels=3, hidden_size=128,
                        num_hidden_layers=4, num_attention_heads=4, intermediate_size=512),
          _image(8, 3, 32), "hf"),
    Entry("hf-resnet", _hf("ResNetModel", "ResNetConfig", num_channels=3, embedding_size=32,
                           hidden_sizes=[32, 64, 128, 256], depths=[2, 2, 2, 2], layer_type="basic"),
          _image(8, 3, 64), "hf"),
    Entry("hf-convnext", _hf("ConvNextModel", "ConvNextConfig", num_channels=3, hidden_sizes=[32, 64, 128, 256],
                             depths=[2, 2, 2, 2], image_size=64),
          _image(8, 3, 64), "hf"),
]

CORPUS = SYNTHETIC + HF
