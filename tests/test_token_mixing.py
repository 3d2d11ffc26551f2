"""A Conv1d applied to a (batch, tokens, features) tensor mixes tokens (MLP-Mixer).

``nn.Conv1d(num_patches, hidden, 1)`` treats the token axis as its channels and the feature
axis as its length. The stream it writes back into stays (batch, positions, features): before
docs/design.md §4.1 (L5) the conv relabelled it channels-first, every later Linear then saw no
positions, the final mean over tokens sent back no cross-position correlation r, and the
channel-mixing biases and weights were under-predicted (-0.6 and -0.3 decades here; up to
-0.84 on lucidrains' depth-12 Mixer). Checked against a real backward.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from gradlint.api import predict


class PreNormResidual(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn, self.norm = fn, nn.LayerNorm(dim)

    def forward(self, x):
        return self.fn(self.norm(x)) + x


def feed_forward(dim: int, hidden: int, dense) -> nn.Sequential:
    return nn.Sequential(dense(dim, hidden), nn.GELU(), dense(hidden, dim))


class Mixer(nn.Module):
    """lucidrains' MLPMixer (image 64, patch 16: 16 tokens; dim 64; depth 2), patchified with
    reshape/permute as its einops Rearrange does."""

    def __init__(self, dim: int = 64, depth: int = 2, patch: int = 16, image: int = 64, classes: int = 1000):
        super().__init__()
        self.patch = patch
        tokens = (image // patch) ** 2
        conv = lambda i, o: nn.Conv1d(i, o, kernel_size=1)
        self.embed = nn.Linear(patch * patch * 3, dim)
        self.blocks = nn.Sequential(*[nn.Sequential(
            PreNormResidual(dim, feed_forward(tokens, 4 * dim, conv)),
            PreNormResidual(dim, feed_forward(dim, dim // 2, nn.Linear))) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        b, c, h, w = x.shape
        p = self.patch
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)
        return self.head(self.norm(self.blocks(self.embed(x))).mean(dim=1))


def measured(seeds: int = 4) -> dict[str, float]:
    acc: dict[str, float] = {}
    for s in range(seeds):
        torch.manual_seed(100 + s)
        model = Mixer().double().train()
        y = model(torch.randn(2, 3, 64, 64, dtype=torch.float64))
        (torch.randn_like(y) * y).sum().backward()
        for n, p in model.named_parameters():
            acc[n] = acc.get(n, 0.0) + p.grad.pow(2).mean().item() / seeds
    return acc


def test_mixer_gradients_match_a_real_backward():
    torch.manual_seed(0)
    model = Mixer().double().train()
    prop = predict(model, (torch.randn(2, 3, 64, 64, dtype=torch.float64),)).result.propagation
    truth = measured()
    # The token-mixing conv's second bias is constant along the features of a token, which
    # every LayerNorm below removes: its gradient is exactly 0, which the engine cannot see
    # (docs/design.md §11). Everything else is compared.
    skip = {f"blocks.{i}.0.fn.2.bias" for i in range(2)}
    errors = {n: 0.5 * (math.log10(prop.params[n]) - math.log10(truth[n])) for n in truth if n not in skip}
    bad = {n: round(e, 3) for n, e in errors.items() if abs(e) > 0.25}
    assert not bad, bad
    # The channel-mixing layers read the stream whose positions the conv must not relabel.
    channel = {n: e for n, e in errors.items() if ".1.fn." in n or n.startswith(("head", "embed", "norm"))}
    assert max(abs(e) for e in channel.values()) < 0.15, channel


def test_stream_keeps_its_positions():
    torch.manual_seed(0)
    prop = predict(Mixer().double().train(), (torch.randn(2, 3, 64, 64, dtype=torch.float64),)).result.propagation
    g = prop.graph
    convs = [n for n in g.nodes if n.kind == "conv"]
    assert convs and all(prop.forward_state[n.name].roles == "BPF" for n in convs)
    means = [n for n in g.nodes if n.kind == "reduce"]
    # The mean over tokens shares one gradient among them: r reaches the stream below it.
    below = prop.backward_state[means[-1].inputs[0]]
    assert below.r > 0.5 * below.s
