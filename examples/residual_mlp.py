"""The deep MLP fixed another way: pre-norm residual blocks.

    gradlint check examples/residual_mlp.py
"""

import torch.nn as nn

import gradlint


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x):
        return x + self.fc2(self.fc1(self.norm(x)).relu())


@gradlint.target(inputs=(64, 256))
class ResidualMLP(nn.Module):
    def __init__(self, depth: int = 20, width: int = 256):
        super().__init__()
        self.blocks = nn.Sequential(*[Block(width) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, width)

    def forward(self, x):
        return self.head(self.norm(self.blocks(x)))
