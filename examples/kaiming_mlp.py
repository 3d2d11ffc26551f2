"""The 20-layer MLP fixed: ReLU with He (Kaiming) init keeps the gradient flat.

    gradlint check examples/kaiming_mlp.py
"""

import torch.nn as nn

import gradlint


@gradlint.target(inputs=(64, 256))
class KaimingMLP(nn.Module):
    def __init__(self, depth: int = 20, width: int = 256):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(width, width) for _ in range(depth)])
        for layer in self.layers:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = layer(x).relu()
        return self.layers[-1](x)
