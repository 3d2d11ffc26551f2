"""Products written with ``torch.einsum`` whose contracted letter is not the last dim, and
talking-heads attention (vit-pytorch's CaiT: the scores mixed across heads before the softmax,
the probabilities mixed after it, ``einsum('b h i j, h g -> b g i j', ...)``).

Two faults, both checked against a real backward here:

- The plain product rule took the contracted size from a's last dim and the gradient sums
  from the output's last two dims, whatever the equation said: the head-mixing einsum
  contracts the heads (8), not the keys (64), and its parameter's gradient sums over
  b·i·j terms.
- Attention fusion took the head-mixing einsums for the score and value products, so the
  "attention" it built had the mixing matrices for keys and values. On CaiT every weight of
  the patch transformer was 0.7 to 1.5 decades high (median 0.67, p90 1.41 decades); now the
  median is 0.04.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from helpers import measured_log_rms

from gradlint.api import predict
from gradlint.capture import einsum
from gradlint.capture.graph import Node
from gradlint.engine.state import Fwd
from gradlint.engine.transfers.attention import _counts, einsum_counts


class TalkingHeads(nn.Module):
    """CaiT's Attention (vit-pytorch, cait.py), without dropout."""

    def __init__(self, dim: int = 128, heads: int = 8, dim_head: int = 16):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.mix_heads_pre_attn = nn.Parameter(torch.randn(heads, heads))
        self.mix_heads_post_attn = nn.Parameter(torch.randn(heads, heads))
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x):
        b, n, _ = x.shape
        x = self.norm(x)
        q, k, v = (self.to_q(x), *self.to_kv(x).chunk(2, dim=-1))
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        dots = torch.einsum("b h i d, b h j d -> b h i j", q, k) * self.scale
        dots = torch.einsum("b h i j, h g -> b g i j", dots, self.mix_heads_pre_attn)
        attn = torch.einsum("b h i j, h g -> b g i j", dots.softmax(dim=-1), self.mix_heads_post_attn)
        out = torch.einsum("b h i j, b h j d -> b h i d", attn, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


def test_einsum_counts_read_the_equation():
    # 'bhij,hg->bgij': each output sums over h (8); a's gradient over g (8); b's over b·i·j.
    assert einsum_counts("b h i j, h g -> b g i j", (4, 8, 64, 64), (8, 8)) == (8, 8, 4 * 64 * 64)
    assert einsum_counts("bhid,bhjd->bhij", (4, 8, 64, 32), (4, 8, 64, 32)) == (32, 64, 64)
    assert einsum_counts("...ij,...jk", (4, 3, 5), (4, 5, 7)) == (5, 7, 3)
    assert einsum_counts("ij,jk,kl->il", (2, 3), (3, 4)) is None


def test_a_products_counts_from_capture_letters_are_the_equations():
    # The matmul rule reads the letters capture kept on the node (einsum.terms, once per
    # product); they give what reading the equation again gives.
    for eq, sa, sb in [("b h i j, h g -> b g i j", (4, 8, 64, 64), (8, 8)),
                       ("bhid,bhjd->bhij", (4, 8, 64, 32), (4, 8, 64, 32)), ("...ij,...jk", (4, 3, 5), (4, 5, 7))]:
        ins, out = einsum.terms(eq, [len(sa), len(sb)])
        kept = Node("e", "matmul", attrs={"equation": eq, "target": "einsum", "terms": (*ins, out)})
        read = Node("e", "matmul", attrs={"equation": eq, "target": "einsum"})
        a, b = Fwd(q=1.0, shape=sa), Fwd(q=1.0, shape=sb)
        assert _counts(kept, a, b, ()) == _counts(read, a, b, ()) == einsum_counts(eq, sa, sb)


def test_talking_heads_attention_matches_a_real_backward():
    torch.manual_seed(0)
    model = TalkingHeads()
    report, result = predict(model, (torch.randn(4, 64, 128),))
    # The head-mixing products are not attention's score or value products.
    assert not any(n.kind == "attention" for n in result.graph.nodes)
    truth = measured_log_rms(model, (4, 64, 128))
    for p in report.params:
        if p.name.startswith("norm"):
            continue
        err = math.log10(p.predicted_grad_rms) - truth[p.name]
        assert abs(err) < 0.2, (p.name, err)
