"""A vanilla tanh RNN over 64 time steps: the long-range gradient vanishes.

The shared weights' gradients look fine (every step contributes to them); the gradient
from the last step back to the first is what dies, about 0.34 decades per step.

    gradlint check examples/vanilla_rnn.py
"""

import torch.nn as nn

import gradlint


@gradlint.target(inputs=(16, 64, 128))
class VanillaRNN(nn.Module):
    def __init__(self, size: int = 128):
        super().__init__()
        self.rnn = nn.RNN(size, size, batch_first=True)
        self.head = nn.Linear(size, size)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])
