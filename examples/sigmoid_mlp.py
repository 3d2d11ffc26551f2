"""A 20-layer sigmoid MLP with PyTorch's default init: the gradient vanishes.

    gradlint check examples/sigmoid_mlp.py
"""

import torch.nn as nn

import gradlint


@gradlint.target(inputs=(64, 256))
class SigmoidMLP(nn.Module):
    def __init__(self, depth: int = 20, width: int = 256):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(width, width) for _ in range(depth)])
        self.act = nn.Sigmoid()

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        return self.layers[-1](x)
