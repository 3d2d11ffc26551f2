"""A 20-layer ReLU MLP whose weights are drawn from N(0, 1): the gradient explodes.

The weight-gradient profile is flat (every layer's gradient and activation are scaled by
the same huge factor), which is why gradlint judges the signal, not the ratio of gradients.

    gradlint check examples/relu_std1_mlp.py
"""

import torch.nn as nn

import gradlint


@gradlint.target(inputs=(64, 256))
class ReLUStd1MLP(nn.Module):
    def __init__(self, depth: int = 20, width: int = 256):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(width, width, bias=False) for _ in range(depth)])
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=1.0)

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = layer(x).relu()
        return self.layers[-1](x)
