"""Mixture-of-experts layers: transformers' routing (softmax, top-k, renormalization) and its
grouped expert matmuls have transfer rules, and the expert and router weights' gradients
match a real backward pass.

Tolerances as in test_transfers.py: the accuracy docs/design.md verifies for the weight
gradient relation (W1, +-3%), widened only by the measured seed-to-seed noise (helpers.Trials).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from helpers import Trials, decades, log_rms

from gradlint.api import predict
from gradlint.capture.inputs import ExampleInputs, TensorSpec

transformers = pytest.importorskip("transformers")
V = 1000
W1 = decades(0.03)


def toks():
    return ExampleInputs((TensorSpec((4, 32), "int64", V),), {"use_cache": False, "return_dict": False}, "decorator")


def mixtral_config(**kw):
    base = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)
    return transformers.MixtralConfig(**(base | kw))


class Block(nn.Module):
    """One sparse MoE block on float inputs (B, T, d), every weight drawn N(0, std²)."""

    def __init__(self, cls, config):
        super().__init__()
        # What a PreTrainedModel sets up for its blocks (the eager loop is not exportable).
        config._experts_implementation = "grouped_mm"
        self.moe = cls(config)
        for p in self.moe.parameters():
            nn.init.normal_(p, std=config.initializer_range)

    def forward(self, x):
        out = self.moe(x)
        return out[0] if isinstance(out, tuple) else out


def mixtral_block(**kw):
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    return lambda: Block(MixtralSparseMoeBlock, mixtral_config(**kw))


def qwen2_moe_block(**kw):
    # Top-k probabilities used as they are (norm_topk_prob=False), next to a shared expert.
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock
    cfg = transformers.Qwen2MoeConfig(hidden_size=64, moe_intermediate_size=64, shared_expert_intermediate_size=64,
                                      num_experts=4, num_experts_per_tok=2, norm_topk_prob=False, **kw)
    return lambda: Block(Qwen2MoeSparseMoeBlock, cfg)


def test_mixtral_on_the_meta_device_has_a_rule_for_every_moe_op():
    with torch.device("meta"):
        model = transformers.MixtralForCausalLM(mixtral_config())
    report, result = predict(model, toks())
    assert report.analysis == "export"
    assert not [f for f in report.findings if f.code == "GL902"], report.findings
    routers = [n for n in result.graph.nodes if n.kind == "router"]
    assert [n.attrs for n in routers] == [{"experts": 4, "k": 2, "normalize": True, "dim": -1}] * 2
    grouped = [n.params["weight"] for n in result.graph.nodes if n.kind == "moe_linear"]
    assert grouped == [f"model.layers.{i}.mlp.experts.{p}" for i in (0, 1) for p in ("gate_up_proj", "down_proj")]
    experts = [p for p in report.params if ".experts." in p.name]
    assert len(experts) == 4 and all(p.predicted_grad_rms > 0 for p in experts)


# Peaked routing (std 0.2: logit variance 2.6 across experts; the whole-model test below has
# Mixtral's near-uniform default, variance 0.03), renormalized or not.
BLOCKS = {
    "mixtral": mixtral_block(initializer_range=0.2),
    "qwen2-moe-unnormalized": qwen2_moe_block(initializer_range=0.2),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_moe_block_gradients_match_a_real_backward_pass(name):
    t = Trials(BLOCKS[name], (4, 32, 64), seeds=6)
    assert not [f for f in t.report.findings if f.code == "GL902"]
    t.check_node(t.node("router"), "q", W1)
    for p in ("moe.experts.gate_up_proj", "moe.experts.down_proj", "moe.gate.weight"):
        t.check_param(p, W1)


def test_mixtral_expert_gradients_follow_the_gradient_that_reaches_the_block():
    """In the whole model the experts' gradients are off by what the gradient reaching each
    MoE block is off by (+0.05 decades here, from the attention layers above it, as in the
    dense Llama of the same size), to within W1's accuracy: the MoE rules add no error of
    their own."""
    t = Trials(lambda: transformers.MixtralForCausalLM(mixtral_config()), toks(), seeds=4)
    nodes = t.results[0].propagation.nodes
    for layer in (0, 1):
        out = next(n.name for n in nodes if n.kind == "reduce" and n.module == f"model.layers.{layer}.mlp.experts")
        for p in ("gate_up_proj", "down_proj"):
            name = f"model.layers.{layer}.mlp.experts.{p}"
            diffs, preds = [], []
            for (report, meas), result in zip(t.pairs, t.results):
                prop = result.propagation
                pred = math.log10(next(x for x in report.params if x.name == name).predicted_grad_rms)
                own = (pred - log_rms(meas.param_ms[name][0])) - (log_rms(prop.node(out).s) - log_rms(meas.node_s[out]))
                diffs.append(own)
                preds.append(pred)
            t.check_diffs(name, diffs, preds, W1)


class _TopK(nn.Module):
    def __init__(self, k: int | None, largest: bool = True):
        super().__init__()
        self.a, self.b = nn.Linear(64, 64), nn.Linear(k or 64, 32)
        self.k, self.largest = k, largest

    def forward(self, x):
        h = self.a(x)
        v = torch.sort(h, dim=-1).values if self.k is None else h.topk(self.k, dim=-1, largest=self.largest).values
        return self.b(v)


class _Dispatch(nn.Module):
    """Every row read three times, as an MoE dispatches each token to k experts."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(64, 64), nn.Linear(64, 32)

    def forward(self, x):
        return self.b(self.a(x)[torch.arange(x.shape[0]).repeat_interleave(3)])


@pytest.mark.parametrize("build", [lambda: _TopK(8), lambda: _TopK(16, largest=False), lambda: _TopK(None), _Dispatch],
                         ids=["topk", "bottom-k", "sort", "gather-with-repeats"])
def test_topk_sort_and_repeated_gathers_match_a_real_backward_pass(build):
    t = Trials(build, (64, 64), seeds=6)
    assert not [f for f in t.report.findings if f.code == "GL902"]
    for p in ("a.weight", "b.weight"):
        t.check_param(p, W1)
