"""Constructor arguments found, not demanded: the restricted evaluator on small synthetic
repositories (tmp_path), the config classes, the conventional sizes, what is never run, and the
models that matter (factories, building blocks)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gradlint.load import Repository, discover, find_arguments, forget_user_modules, import_file, user_code
from gradlint.run.check_file import Settings, check_file
from gradlint.run.config import Config

HEAD = "import torch.nn as nn\n\n\n"

GPT = HEAD + textwrap.dedent("""
    from dataclasses import dataclass


    @dataclass
    class GPTConfig:
        n_layer: int = 2
        n_embd: int = 8
        vocab_size: int = 50


    class Block(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.fc = nn.Linear(config.n_embd, config.n_embd)

        def forward(self, x):
            return x + self.fc(x)


    class GPT(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.wte = nn.Embedding(config.vocab_size, config.n_embd)
            self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])

        def forward(self, idx):
            x = self.wte(idx)
            for block in self.h:
                x = block(x)
            return x
""")

NET = HEAD + textwrap.dedent("""
    class Net(nn.Module):
        def __init__(self, width, depth=1):
            super().__init__()
            self.layers = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])

        def forward(self, x):
            return self.layers(x)
""")


def repo(tmp_path: Path, files: dict[str, str]) -> Path:
    (tmp_path / ".git").mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text) if not text.startswith("import torch") else text)
    return tmp_path


def resolve(root: Path, name: str, model: str = "model.py", given=None, optional=False):
    path = root / model
    module = import_file(path)
    with user_code(path):
        return find_arguments(getattr(module, name), name, path, Repository(path, module), given, optional)


def found(resolution) -> dict[str, tuple[str, str, str]]:
    return {a.name: (a.value, a.how, a.source.rsplit("/", 1)[-1]) for a in resolution.arguments}


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def reports(root: Path, model: str = "model.py", name: str | None = None, all_targets: bool = False):
    events = list(check_file(str(root / model), name, Settings(config=Config(all_targets=all_targets))))
    return [e[1] for e in events if e[0] == "report"], [e[1] for e in events if e[0] == "note"]


# --- config classes ---------------------------------------------------------------------------

def test_dataclass_config_with_defaults(tmp_path):
    root = repo(tmp_path, {"model.py": GPT})
    res = resolve(root, "GPT")
    assert not res.missing
    assert type(res.kwargs["config"]).__name__ == "GPTConfig" and res.kwargs["config"].n_layer == 2
    (argument,) = res.arguments
    assert argument.how == "default" and argument.note == "GPTConfig() with its defaults"
    assert argument.source.endswith(f"model.py:{line_of(root / 'model.py', '@dataclass')}")  # where it starts


def test_config_matched_by_the_attributes_the_constructor_reads(tmp_path):
    root = repo(tmp_path, {"model.py": HEAD + textwrap.dedent("""
        class TrainerConfig:
            def __init__(self):
                self.lr = 0.1
                self.epochs = 3


        class ModelConfig:
            def __init__(self):
                self.width = 8
                self.depth = 2


        class Net(nn.Module):
            def __init__(self, cfg):
                super().__init__()
                self.fc = nn.Linear(cfg.width, cfg.width)
                self.depth = cfg.depth

            def forward(self, x):
                return self.fc(x)
    """)})
    res = resolve(root, "Net")
    assert type(res.kwargs["cfg"]).__name__ == "ModelConfig"


def test_config_by_annotation_and_by_classmethod(tmp_path):
    root = repo(tmp_path, {"model.py": HEAD + textwrap.dedent("""
        from typing import NamedTuple, Optional


        class Sizes(NamedTuple):
            width: int = 4


        class Net(nn.Module):
            def __init__(self, sizes: Optional[Sizes]):
                super().__init__()
                self.fc = nn.Linear(sizes.width, sizes.width)

            def forward(self, x):
                return self.fc(x)


        class Holder:
            pass


        class Other(nn.Module):
            @classmethod
            def get_default_config(cls):
                config = Holder()
                config.width = 6
                return config

            def __init__(self, config):
                super().__init__()
                self.fc = nn.Linear(config.width, config.width)

            def forward(self, x):
                return self.fc(x)
    """)})
    assert resolve(root, "Net").kwargs["sizes"] == (4,)
    res = resolve(root, "Other")
    assert res.kwargs["config"].width == 6 and res.arguments[0].note == "Other.get_default_config()"


def test_config_class_with_required_fields_from_its_own_call_site(tmp_path):
    root = repo(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/model.py": HEAD + textwrap.dedent("""
            from dataclasses import dataclass


            @dataclass
            class ModelArgs:
                d_model: int
                n_layer: int = 1


            class Mamba(nn.Module):
                def __init__(self, args: ModelArgs):
                    super().__init__()
                    self.fc = nn.Linear(args.d_model, args.d_model)

                def forward(self, x):
                    return self.fc(x)
        """),
        "README.md": """
            # usage
            ```python
            from pkg.model import Mamba, ModelArgs
            args = ModelArgs(d_model=16)
            ```
        """})
    res = resolve(root, "Mamba", "pkg/model.py")
    assert res.kwargs["args"].d_model == 16
    assert found(res)["args.d_model"] == ("16", "found", f"README.md:{line_of(root / 'README.md', 'ModelArgs(d')}")


# --- call sites ---------------------------------------------------------------------------------

def test_training_script_constants_dict_and_branches(tmp_path):
    root = repo(tmp_path, {"model.py": GPT, "train.py": """
        import os
        from model import GPT, GPTConfig

        n_layer = 4
        n_embd = 16
        init_from = "scratch"
        if os.path.exists("meta.pkl"):
            n_layer = 100
        model_args = dict(n_layer=n_layer, n_embd=n_embd, vocab_size=None)
        if init_from == "scratch":
            model_args["vocab_size"] = 64
            model = GPT(GPTConfig(**model_args))
        elif init_from == "resume":
            model_args["vocab_size"] = 1
            model = GPT(GPTConfig(**model_args))
    """})
    res = resolve(root, "GPT")
    config = res.kwargs["config"]
    assert (config.n_layer, config.n_embd, config.vocab_size) == (4, 16, 64)
    assert found(res)["config"][1:] == ("found", f"train.py:{line_of(root / 'train.py', 'model = GPT')}")


def test_argparse_defaults(tmp_path):
    root = repo(tmp_path, {"model.py": NET, "main.py": """
        import argparse
        from model import Net

        parser = argparse.ArgumentParser()
        parser.add_argument("--width", type=int, default="12")
        parser.add_argument("--deep", action="store_true")
        args = parser.parse_args()
        model = Net(args.width, depth=3 if args.deep else 2).to("cpu")
    """})
    assert resolve(root, "Net").kwargs == {"width": 12, "depth": 2}


def test_value_computed_from_data_is_assumed_and_says_where(tmp_path):
    root = repo(tmp_path, {"model.py": HEAD + textwrap.dedent("""
        class LM(nn.Module):
            def __init__(self, ntoken, width):
                super().__init__()
                self.emb = nn.Embedding(ntoken, width)

            def forward(self, x):
                return self.emb(x)
    """), "main.py": """
        import data
        from model import LM

        corpus = data.Corpus("./data")
        ntokens = len(corpus.dictionary)
        model = LM(ntokens, 32)
    """})
    res = resolve(root, "LM")
    assert res.kwargs == {"ntoken": 1000, "width": 32}
    assumed = next(a for a in res.arguments if a.name == "ntoken")
    line = line_of(root / "main.py", "ntokens = len")
    assert assumed.how == "assumed" and assumed.source.endswith(f"main.py:{line}")
    assert f"main.py:{line} computes it at run time (len(corpus.dictionary))" in assumed.note
    assert "vocabulary size" in assumed.note
    # Never presented as found: the report says assumed.
    (report,), _ = reports(root, name="LM")
    assert report.status == "ok", report.error
    text = str(report)
    assert "ntoken=1000 assumed (vocabulary size;" in text and "width=32 from" in text


def test_unknown_value_that_is_no_conventional_size_is_missing(tmp_path):
    root = repo(tmp_path, {"model.py": NET, "train.py": """
        import json
        from model import Net

        width = json.load(open("sizes.json"))["width"]
        net = Net(width)
    """})
    res = resolve(root, "Net")
    (missing,) = res.missing
    assert missing[0] == "width" and "train.py:5 computes it at run time (json.load(" in missing[1]


def test_readme_code_block(tmp_path):
    root = repo(tmp_path, {"model.py": NET, "README.md": """
        # Net

        ```bash
        pip install net
        ```

        ```python
        from model import Net

        net = Net(width=24)
        ```
    """})
    res = resolve(root, "Net")
    assert res.kwargs == {"width": 24}
    assert found(res)["width"] == ("24", "found", f"README.md:{line_of(root / 'README.md', 'Net(width')}")


def test_preference_file_main_block_then_scripts_then_readme_but_most_resolved_first(tmp_path):
    model = NET + textwrap.dedent("""

        if __name__ == "__main__":
            net = Net(4)
    """)
    files = {"model.py": model, "train.py": "from model import Net\nnet = Net(8)\n",
             "README.md": "```python\nfrom model import Net\nNet(16)\n```\n"}
    assert resolve(repo(tmp_path / "a", files), "Net").kwargs == {"width": 4}
    files["model.py"] = NET + "\n\nif __name__ == '__main__':\n    import sys\n    net = Net(int(sys.argv[1]))\n"
    assert resolve(repo(tmp_path / "b", files), "Net").kwargs == {"width": 8}
    del files["train.py"]
    assert resolve(repo(tmp_path / "c", files), "Net").kwargs == {"width": 16}


def test_parameters_of_the_enclosing_function_bound_by_its_call(tmp_path):
    root = repo(tmp_path, {"model.py": NET, "main.py": """
        from argparse import ArgumentParser
        from model import Net


        def main(opts):
            model = Net(width=opts.width, depth=opts.depth)


        if __name__ == "__main__":
            parser = ArgumentParser()
            parser.add_argument("--width", type=int, default=20)
            parser.add_argument("--depth", type=int, default=3)
            args = parser.parse_args()
            main(args)
    """})
    assert resolve(root, "Net").kwargs == {"width": 20, "depth": 3}


def test_constructor_arguments_through_an_outer_class_in_another_file(tmp_path):
    root = repo(tmp_path, {"TCN/__init__.py": "", "TCN/tcn.py": NET, "TCN/task/model.py": """
        from torch import nn
        from TCN.tcn import Net


        class Wrapper(nn.Module):
            def __init__(self, size, layers):
                super().__init__()
                self.net = Net(size, depth=layers)
    """, "TCN/task/run.py": """
        from model import Wrapper
        model = Wrapper(6, 2)
    """})
    res = resolve(root, "Net", "TCN/tcn.py")
    assert res.kwargs == {"width": 6, "depth": 2}


def test_defaults_dict_of_a_creation_helper(tmp_path):
    root = repo(tmp_path, {"pkg/__init__.py": "", "pkg/unet.py": NET, "pkg/script_util.py": """
        from .unet import Net


        def model_defaults():
            return dict(image_size=64, width=32, attention="16,8")


        def create_model(image_size, width, attention):
            resolutions = []
            for res in attention.split(","):
                resolutions.append(image_size // int(res))
            return Net(width=width, depth=len(resolutions))
    """})
    assert resolve(root, "Net", "pkg/unet.py").kwargs == {"width": 32, "depth": 2}


def test_required_option_from_a_readme_command_line(tmp_path):
    root = repo(tmp_path, {"model.py": NET, "main.py": """
        import argparse
        from model import Net

        parser = argparse.ArgumentParser()
        parser.add_argument("--width", type=int, required=True)
        opt = parser.parse_args()
        net = Net(width=opt.width)
    """, "README.md": "Train:\n\n```bash\npython main.py --batch 4 --width 7 --lr 0.1\n```\n"})
    res = resolve(root, "Net")
    assert res.kwargs == {"width": 7}
    assert found(res)["width"] == ("7", "found", "README.md:4")


def test_option_default_found_by_its_name(tmp_path):
    root = repo(tmp_path, {"model.py": NET, "trainer.py": """
        from model import Net


        class Trainer:
            def __init__(self, config):
                self.config = config

            def build(self):
                self.net = Net(self.config.width)
    """, "parameters.py": """
        import argparse


        def get_parameters():
            parser = argparse.ArgumentParser()
            parser.add_argument("--width", type=int, default=48)
            return parser.parse_args()
    """})
    res = resolve(root, "Net")
    assert res.kwargs == {"width": 48}
    assert found(res)["width"] == ("48", "found", "parameters.py:7")


# --- never run -----------------------------------------------------------------------------------

def test_scripts_and_entry_points_are_never_run(tmp_path):
    marker = tmp_path / "ran"
    root = repo(tmp_path, {"model.py": NET + textwrap.dedent(f"""

        def train():
            open({str(marker)!r}, "w").write("model.train ran")
            return 3


        if __name__ == "__main__":
            net = Net(train())
    """), "train.py": f"""
        import sys
        from model import Net

        open({str(marker)!r}, "w").write("train.py ran")
        sys.exit(1)
        net = Net(5)
    """})
    res = resolve(root, "Net")
    assert res.kwargs == {"width": 5}
    assert not marker.exists()


def test_a_long_loop_does_not_stall(tmp_path):
    root = repo(tmp_path, {"model.py": NET, "train.py": """
        from model import Net

        total = 0
        for i in range(10 ** 9):
            total += i
        while True:
            total += 1
        net = Net(3)
    """})
    assert resolve(root, "Net").kwargs == {"width": 3}


# --- the models that matter --------------------------------------------------------------------

FACTORIES = HEAD + textwrap.dedent("""
    class BasicBlock(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.fc = nn.Linear(width, width)

        def forward(self, x):
            return x + self.fc(x)


    class ResNet(nn.Module):
        def __init__(self, block, depth):
            super().__init__()
            self.layers = nn.Sequential(*[block(8) for _ in range(depth)])

        def forward(self, x):
            return self.layers(x)


    def ResNet18():
        return ResNet(BasicBlock, 2)


    def resnet_deep():
        net = ResNet(BasicBlock, 4)
        return net


    def main():
        net = ResNet18()
        print(net)


    def test():
        net = ResNet18()
        net.train()
""")


def test_factories_are_targets_and_building_blocks_are_not(tmp_path):
    root = repo(tmp_path, {"model.py": FACTORIES})
    path = root / "model.py"
    found_ = discover(import_file(path), path)
    assert [(t.name, t.kind) for t in found_.targets] == [("ResNet18", "factory"), ("resnet_deep", "factory")]
    assert {b.name for b in found_.blocks} == {"BasicBlock", "ResNet"}
    got, notes = reports(root)
    assert [r.target.rsplit("::")[-1] for r in got] == ["ResNet18", "resnet_deep"]
    assert all(r.status == "ok" for r in got), [r.error for r in got]
    assert notes == []  # a building block costs no note


def test_building_blocks_on_request_get_their_arguments_from_the_model(tmp_path):
    root = repo(tmp_path, {"model.py": GPT, "train.py": "from model import GPT, GPTConfig\n"
                                                        "model = GPT(GPTConfig(n_layer=3, n_embd=4))\n"})
    path = root / "model.py"
    assert [t.name for t in discover(import_file(path), path).targets] == ["GPT"]
    got, _ = reports(root, all_targets=True)
    assert [r.name for r in got] == ["Block", "GPT"]
    block = got[0]
    assert block.status == "ok", block.error
    (argument,) = block.arguments
    assert argument.name == "config" and argument.source.endswith(f"model.py:{line_of(path, 'Block(config)')}")
    assert "n_embd=4" in argument.value and block.params[0].shape == (4, 4)


def test_missing_value_names_the_parameter_and_where_to_give_it(tmp_path):
    root = repo(tmp_path, {"model.py": NET})
    (report,), _ = reports(root)
    assert report.status == "error"
    assert report.line == line_of(root / "model.py", "def __init__")
    assert "Net's constructor needs width, and gradlint found no value for it: no call of Net in the " \
           "repository gives it" in report.error
    assert '[tool.gradlint] targets = [{ path = "' in report.error and "kwargs = { width = ... }" in report.error
    assert "gradlint init" in report.error


def test_orphan_class_beside_a_model_is_a_note(tmp_path):
    root = repo(tmp_path, {"model.py": FACTORIES + textwrap.dedent("""

        class FixedNorm(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.w = nn.Parameter(nn.init.ones_(nn.Parameter(__import__("torch").empty(d))))

            def forward(self, x):
                return x * self.w
    """)})
    got, notes = reports(root)
    assert [r.name for r in got] == ["ResNet18", "resnet_deep"]
    (note,) = notes
    assert "skipped FixedNorm: FixedNorm's constructor needs d" in note and "nothing in the repository builds it" \
        in note


def test_no_argument_model_built_as_the_readme_does_but_not_as_a_smoke_test(tmp_path):
    model = HEAD + textwrap.dedent("""
        class UNet(nn.Module):
            def __init__(self, width=4, padding=False):
                super().__init__()
                self.fc = nn.Linear(width, width)

            def forward(self, x):
                return self.fc(x)


        if __name__ == "__main__":
            net = UNet(width=2)
    """)
    root = repo(tmp_path / "a", {"model.py": model})
    assert resolve(root, "UNet", optional=True).kwargs == {}
    root = repo(tmp_path / "b", {"model.py": model,
                                 "README.md": "```python\nfrom model import UNet\nm = UNet(padding=True)\n```\n"})
    assert resolve(root, "UNet", optional=True).kwargs == {"padding": True}
    got, _ = reports(root)
    assert got[0].arguments[0].source.endswith("README.md:3") and got[0].status == "ok"


@pytest.mark.parametrize("annotation", ["", ": Config"])
def test_nested_table_builds_the_config_class(tmp_path, annotation):
    root = repo(tmp_path, {"model.py": HEAD + textwrap.dedent(f"""
        from dataclasses import dataclass


        @dataclass
        class Config:
            width: int
            depth: int = 1


        class Net(nn.Module):
            def __init__(self, config{annotation}):
                super().__init__()
                self.fc = nn.Linear(config.width, config.width)

            def forward(self, x):
                return self.fc(x)
    """), "pyproject.toml": """
        [tool.gradlint]
        targets = [{ path = "model.py::Net", kwargs = { config = { width = 5 } }, inputs = [2, 5] }]
    """})
    from gradlint.run.config import load as load_config

    config = load_config(root / "pyproject.toml")
    events = list(check_file(str(root / "model.py"), None, Settings(config=config)))
    (report,) = [e[1] for e in events if e[0] == "report"]
    assert report.status == "ok", report.error
    assert report.params[0].shape == (5, 5)


def test_a_base_class_the_package_builds_itself_is_a_model_and_so_is_what_a_builder_function_makes(tmp_path):
    # improved-diffusion's unet.py: UNetModel and its subclass SuperResModel, both made by
    # script_util.py's create_model(...) functions, which need arguments and so are no models.
    root = repo(tmp_path, {"pkg/__init__.py": "", "pkg/net.py": """\
        import torch.nn as nn


        class Base(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.fc = nn.Linear(width, width)

            def forward(self, x):
                return self.fc(x)


        class Double(Base):
            def __init__(self, width=4):
                super().__init__(width * 2)


        class Head(nn.Module):
            def __init__(self, n):
                super().__init__()
                self.fc = nn.Linear(n, n)

            def forward(self, x):
                return self.fc(x)
        """, "pkg/util.py": """\
        from .net import Base, Head


        def create_model(width):
            return Base(width)


        def create_head(n):
            return Head(n)


        def defaults():
            return create_model(6), create_head(3)
        """})
    path = root / "pkg" / "net.py"
    found_ = discover(import_file(path), path)
    assert [t.name for t in found_.targets] == ["Base", "Double", "Head"]
    assert found_.blocks == ()
    res = resolve(root, "Base", model="pkg/net.py")
    assert res.kwargs == {"width": 6} and found(res)["width"][2] == f"util.py:{line_of(root / 'pkg/util.py', 'Base(')}"
    # Only a class the package builds (util.py calls Base) stops being the base class of its subclass.
    (root / "pkg" / "util.py").write_text("from .net import Double\n\n\ndef create_model():\n    return Double()\n")
    forget_user_modules()
    found_ = discover(import_file(path), path)
    assert [t.name for t in found_.targets] == ["Head"]
    assert {b.name: b.reason for b in found_.blocks} == {
        "Base": "the base class of Double", "Double": "a building block of pkg/util.py::create_model"}
