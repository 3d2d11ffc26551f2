"""Fixed tables added to activations, and images cut into patches by reshapes (issue 14:
vit-pytorch's SimpleViT), predicted against a real backward pass (tests/helpers.py Trials).

A sin-cos position table is the same in every sample and overlaps strongly between positions
(its low frequencies are nearly constant), so after it every token shares a large component:
a mean over tokens keeps it (q of the pooled vector ≈ kt, not q/T) and sends every token the
same gradient (r = s). Before the fix the table was read as zero and the patchified image's
positions as features: SimpleViT's weights came out 0.5 to 1.3 decades low.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from helpers import Trials


def sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """vit-pytorch's ``posemb_sincos_2d``."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4) / (dim // 4 - 1))
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1)


class TinySimpleViT(nn.Module):
    """SimpleViT's layout: patchify by reshape/permute (what einops' Rearrange exports to),
    LayerNorm-Linear-LayerNorm, + a fixed table, one pre-norm attention and MLP block, mean over
    tokens, a linear head. ``as_buffer`` registers the table; otherwise it is a plain tensor
    attribute, which export lifts as a constant (as SimpleViT holds it)."""

    def __init__(self, dim: int = 64, patch: int = 4, image: int = 32, heads: int = 4, as_buffer: bool = False):
        super().__init__()
        self.patch, self.heads = patch, heads
        pdim = 3 * patch * patch
        self.embed = nn.Sequential(nn.LayerNorm(pdim), nn.Linear(pdim, dim), nn.LayerNorm(dim))
        table = sincos_2d(image // patch, image // patch, dim)
        if as_buffer:
            self.register_buffer("pos", table)
        else:
            self.pos = table
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, img):
        b, c, hh, ww = img.shape
        p = self.patch
        x = img.reshape(b, c, hh // p, p, ww // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p * c)
        x = self.embed(x) + self.pos.to(img.dtype)
        t, d = x.shape[1], x.shape[2]
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        x = x + self.out((attn @ v).transpose(1, 2).reshape(b, t, d))
        x = x + self.mlp(x)
        return self.head(self.norm(x).mean(dim=1))


@pytest.mark.parametrize("as_buffer", [False, True])
def test_sincos_table_and_patches_against_backward(as_buffer):
    t = Trials(lambda: TinySimpleViT(as_buffer=as_buffer), (2, 3, 32, 32), seeds=4)
    for name in ("embed.1.weight", "embed.1.bias", "qkv.weight", "out.weight", "mlp.1.weight", "mlp.3.weight",
                 "head.weight"):
        # head.weight reads the pooled vector's q: what the tokens share, not 1/T of a token's q.
        t.check_param(name, 0.1)


def test_table_statistics_are_the_tables():
    """The const node carries the table's own mean square, mean and row overlap."""
    from gradlint.api import predict

    model = TinySimpleViT(as_buffer=True)
    result = predict(model, (torch.randn(2, 3, 32, 32),)).result
    const = next(n for n in result.graph.nodes if n.kind == "const" and n.attrs.get("buffer") == "pos")
    f = result.propagation.forward_state[const.name]
    table = model.pos.double()
    n = table.shape[0]
    overlap = ((table.sum(0) ** 2).sum() - (table ** 2).sum()) / (n * (n - 1) * table.shape[1])
    assert f.q == pytest.approx(float(table.pow(2).mean()))
    assert f.mu == pytest.approx(float(table.mean()))
    assert f.k == pytest.approx(f.q)  # the same in every sample
    assert f.kt == pytest.approx(float(overlap))


def test_nonfinite_table_is_not_added():
    """An additive -inf mask selects entries; it adds no signal whose moments mean anything."""
    from gradlint.api import predict

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)
            self.register_buffer("mask", torch.triu(torch.full((8, 8), float("-inf")), 1))

        def forward(self, x):
            return torch.softmax(self.lin(x) + self.mask, dim=-1)

    result = predict(Masked(), (torch.randn(2, 8, 8),)).result
    assert result.propagation.params["lin.weight"] is not None
    assert math.isfinite(result.propagation.params["lin.weight"])


class InterleavedRotary(nn.Module):
    """llama2.c's attention: rotary embeddings applied as real and imaginary halves of
    interleaved pairs times cos/sin buffers, then causal SDPA. The tables multiply: before,
    a product with a constant passed the other factor through, so x_r·cos − x_i·sin came out
    with twice x's second moment and llama2.c's wq/wk were 0.4–0.55 decades high."""

    def __init__(self, dim: int = 96, heads: int = 4, seq: int = 32):
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.wq, self.wk, self.wv = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.wo = nn.Linear(dim, dim, bias=False)
        freqs = 1.0 / (10000.0 ** (torch.arange(0, self.hd, 2).float() / self.hd))
        freqs = torch.outer(torch.arange(seq), freqs)
        self.register_buffer("cos", torch.cos(freqs), persistent=False)
        self.register_buffer("sin", torch.sin(freqs), persistent=False)

    def rotate(self, x):
        xr, xi = x.reshape(x.shape[:-1] + (-1, 2)).unbind(-1)
        cos, sin = self.cos.view(1, x.shape[1], 1, -1), self.sin.view(1, x.shape[1], 1, -1)
        return torch.stack([xr * cos - xi * sin, xr * sin + xi * cos], dim=-1).flatten(3)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (w(x).view(b, t, self.heads, self.hd) for w in (self.wq, self.wk, self.wv))
        q, k = self.rotate(q), self.rotate(k)
        out = nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                         is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))


def test_rotary_tables_multiply_against_backward():
    from gradlint.api import predict

    torch.manual_seed(0)
    model = InterleavedRotary()
    report, _ = predict(model, (torch.randn(4, 32, 96),))
    real = model.double().train()
    truth: dict[str, float] = {}
    for s in range(4):
        torch.manual_seed(100 + s)
        real.zero_grad(set_to_none=True)
        y = real(torch.randn(4, 32, 96, dtype=torch.float64))
        (torch.randn_like(y) * y).sum().backward()
        for n, p in real.named_parameters():
            truth[n] = truth.get(n, 0.0) + 0.5 * math.log10(float(p.grad.pow(2).mean())) / 4
    for p in report.params:
        err = math.log10(p.predicted_grad_rms) - truth[p.name]
        assert abs(err) < 0.15, (p.name, err)
