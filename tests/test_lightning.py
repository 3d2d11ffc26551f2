"""The Lightning callback, with the real ``pytorch-lightning`` package: a Trainer fits a tiny
module for one step, and the callback checks the module at ``on_fit_start``."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("pytorch_lightning")

from gradlint.lightning import GradlintCallback, GradlintWarning  # noqa: E402 - after the skip


class Tiny(pl.LightningModule):
    """A regression MLP; ``act`` sigmoid with ``depth`` 20 vanishes, ReLU with He init does not."""

    def __init__(self, act: str = "relu", depth: int = 2, width: int = 16):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(width, width) for _ in range(depth)])
        if act == "relu":
            for layer in self.layers:
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        self.act = torch.sigmoid if act == "sigmoid" else torch.relu
        self.example_input_array = torch.zeros(8, width)

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        return self.layers[-1](x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(module: pl.LightningModule, callback: GradlintCallback) -> pl.Trainer:
    data = DataLoader(TensorDataset(torch.randn(16, 16), torch.randn(16, 16)), batch_size=8)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    with warnings.catch_warnings():
        # Lightning's own advice (num_workers, a small dataset) is not what is tested here.
        warnings.filterwarnings("ignore", module="pytorch_lightning")
        warnings.filterwarnings("ignore", module="lightning_fabric")
        trainer.fit(module, data)
    return trainer


def test_a_healthy_module_trains_without_a_word():
    callback = GradlintCallback(config=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradlintWarning)
        trainer = fit(Tiny("relu"), callback)
    assert trainer.global_step == 1
    assert callback.report.summary.verdict == "healthy"
    assert callback.report.inputs == "(8, 16) float32 (from example_input_array)"


def test_an_unhealthy_module_warns_and_trains_or_stops_before_its_first_step():
    with pytest.warns(GradlintWarning, match=r"Tiny is not healthy: verdict vanishing") as caught:
        trainer = fit(Tiny("sigmoid", depth=20), GradlintCallback(config=False))
    assert trainer.global_step == 1   # warn: the fit goes on
    assert "GL101 [error]" in str(caught[0].message)

    callback = GradlintCallback(on_unhealthy="stop", config=False)
    with pytest.warns(GradlintWarning):
        trainer = fit(Tiny("sigmoid", depth=20), callback)
    assert trainer.global_step == 0   # stopped before the first optimizer step
    assert callback.report.summary.verdict == "vanishing"

    with pytest.raises(AssertionError, match="verdict vanishing"):
        fit(Tiny("sigmoid", depth=20), GradlintCallback(on_unhealthy="raise", config=False))
    # Ignoring the rules accepts the verdict, as assert_healthy does.
    quiet = GradlintCallback(on_unhealthy="raise", ignore=["GL1", "GL2", "GL4", "GL5"], config=False)
    assert fit(Tiny("sigmoid", depth=20), quiet).global_step == 1


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="on_unhealthy='halt'"):
        GradlintCallback(on_unhealthy="halt")
