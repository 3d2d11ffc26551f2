"""Example models that several rules test themselves on (their ``good`` and ``bad`` cases)."""

from __future__ import annotations

import torch.nn as nn


class RNNHead(nn.Module):
    """A recurrent layer read at its last step, as a sequence classifier does."""

    def __init__(self, cell: str = "rnn", size: int = 32):
        super().__init__()
        self.rnn = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell](size, size, batch_first=True)
        self.head = nn.Linear(size, size)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])
