"""A fast subset of the ecosystem corpus (benchmarks/ecosystem/): the models real repositories
define, discovered and built with the constructor values their repositories spell out, each
value with where it came from. `python benchmarks/ecosystem.py` runs the whole corpus through
`gradlint check`; these check construction and provenance only, in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gradlint.load import Repository, discover, find_arguments, import_file, instantiate, user_code

CORPUS = Path(__file__).resolve().parents[1] / "benchmarks" / "ecosystem"


@pytest.fixture
def corpus(monkeypatch):
    """Resolves a corpus file's model from inside its repository folder, as a user runs gradlint."""

    def resolve(rel: str, name: str):
        slug, _, inner = rel.partition("/")
        monkeypatch.chdir(CORPUS / slug)
        module = import_file(inner)
        found = {t.name: t for t in discover(module, inner).targets}
        target = found[name]
        with user_code(inner):
            resolution = find_arguments(target.obj, name, inner, Repository(inner, module), optional=True)
        return found, target, resolution

    return resolve


def sources(resolution) -> dict[str, tuple[str, str, str]]:
    return {a.name: (a.value, a.how, a.source.replace(os.sep, "/")) for a in resolution.arguments}


def test_nanogpt_config_from_the_training_script(corpus):
    found, _, res = corpus("nanogpt/model.py", "GPT")
    assert list(found) == ["GPT"]  # LayerNorm, Block, MLP, CausalSelfAttention are its building blocks
    config = res.kwargs["config"]
    assert (config.n_layer, config.n_embd, config.bias, config.vocab_size) == (12, 768, False, 50304)
    assert sources(res)["config"][1:] == ("found", "train.py:157")


def test_word_language_model_argparse_defaults_and_an_assumed_vocabulary(corpus):
    _, target, res = corpus("pytorch-examples/word_language_model/model.py", "RNNModel")
    assert res.kwargs == {"rnn_type": "LSTM", "ntoken": 1000, "ninp": 200, "nhid": 200, "nlayers": 2,
                          "dropout": 0.2, "tie_weights": False}
    ntoken = sources(res)["ntoken"]
    assert ntoken[1:] == ("assumed", "word_language_model/main.py:103")
    assert "main.py:103 computes it at run time (len(corpus.dictionary))" in \
        next(a.note for a in res.arguments if a.name == "ntoken")
    assert sources(res)["nhid"] == ("200", "found", "word_language_model/main.py:107")
    model = instantiate(target, kwargs=res.kwargs)
    assert model.encoder.num_embeddings == 1000 and model.rnn.hidden_size == 200


def test_super_resolution_required_option_from_the_readme(corpus):
    _, target, res = corpus("pytorch-examples/super_resolution/model.py", "Net")
    assert res.kwargs == {"upscale_factor": 3}
    assert sources(res)["upscale_factor"] == ("3", "found", "super_resolution/README.md:31")
    assert instantiate(target, kwargs=res.kwargs).pixel_shuffle.upscale_factor == 3


def test_unet_built_as_its_readme_does(corpus):
    _, target, res = corpus("pytorch-unet/unet.py", "UNet")
    assert res.kwargs == {"n_classes": 2, "padding": True, "up_mode": "upsample"}
    assert {s[2] for s in sources(res).values()} == {"README.md:48"}
    instantiate(target, kwargs=res.kwargs)


def test_tcn_imports_its_own_package_and_takes_the_experiment_values(corpus):
    _, target, res = corpus("tcn/TCN/adding_problem/model.py", "TCN")
    assert res.kwargs == {"input_size": 2, "output_size": 1, "num_channels": [30] * 8, "kernel_size": 7,
                          "dropout": 0.0}
    assert sources(res)["kernel_size"][2] == "TCN/adding_problem/add_test.py:60"
    instantiate(target, kwargs=res.kwargs)


def test_cifar_factories_are_the_models_and_the_classes_their_blocks(corpus):
    found, target, res = corpus("pytorch-cifar/models/resnet.py", "ResNet18")
    assert list(found) == ["ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152"]
    assert target.kind == "factory" and res.kwargs == {}


def test_mamba_config_from_the_readme_and_a_model_whose_values_come_from_a_checkpoint(corpus):
    _, _, res = corpus("mambapy/mambapy/mamba.py", "Mamba")
    assert (res.kwargs["config"].d_model, res.kwargs["config"].n_layers) == (16, 2)
    assert sources(res)["config"][1:] == ("found", "README.md:59")
    pytest.importorskip("einops")
    _, _, res = corpus("mamba-minimal/model.py", "Mamba")
    ((param, why),) = res.missing
    assert param == "args" and why.startswith("model.py:126 computes it at run time (ModelArgs(d_model=config_data[")
