"""Tests of gradlint.load: naming, importing, discovering and building targets."""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

import pytest
from torch import nn

from gradlint.base.errors import GradlintError, InputError, LoadError
from gradlint.load import (
    Discovery,
    Skipped,
    Target,
    discover,
    find_project_root,
    format_user_traceback,
    import_file,
    instantiate,
    iter_python_files,
    parse_target_arg,
    user_code,
)
from gradlint.load.files import absolute_import_roots

FIXTURES = Path(__file__).parent / "fixtures" / "loading"
BROKEN = {"syntax_error.py", "missing_import.py", "raises_at_import.py", "exits.py"}


def line_of(path: Path, text: str) -> int:
    """The 1-based line of the first line of ``path`` containing ``text``."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} not in {path}")


def load(name: str, target: str | None = None) -> Discovery:
    """Imports a fixture file and discovers its targets (or the one named)."""
    path = FIXTURES / name
    return discover(import_file(path), path, target)


def write(path: Path, text: str) -> Path:
    """Writes dedented source to ``path``, creating its directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def assert_no_gradlint_frames(text: str) -> None:
    """Checks that a user traceback shows neither gradlint's nor importlib's frames."""
    assert "gradlint/load/" not in text
    assert "<frozen importlib" not in text


# --- parse_target_arg -------------------------------------------------------------------------

@pytest.mark.parametrize("arg, expected", [
    ("model.py", (Path("model.py"), None)),
    ("models/", (Path("models"), None)),
    ("src/model.py::Net", (Path("src/model.py"), "Net")),
    ("model.py::Outer.Inner", (Path("model.py"), "Outer.Inner")),
])
def test_parse_target_arg(arg, expected):
    assert parse_target_arg(arg) == expected


@pytest.mark.parametrize("arg, fragment", [
    ("::Net", "names no file"),
    ("model.py::", "is not a Python name"),
    ("model.py::1st", "is not a Python name"),
    ("models/::Net", "needs a file, not a directory"),
])
def test_parse_target_arg_rejects(arg, fragment):
    with pytest.raises(LoadError, match=fragment):
        parse_target_arg(arg)


def test_parse_target_arg_rejects_existing_directory_with_name(tmp_path):
    with pytest.raises(LoadError, match="needs a file"):
        parse_target_arg(f"{tmp_path}::Net")


# --- iter_python_files --------------------------------------------------------------------------

def test_iter_python_files_walks_sorted_and_skips_tool_dirs(tmp_path):
    for rel in ["b.py", "a.py", "sub/c.py", "sub/deeper/d.py", "notes.txt", ".hidden/x.py", "__pycache__/y.py",
                "venv/v.py", ".venv/v.py", "site-packages/s.py", "node_modules/n.py", ".git/g.py", "build/b.py",
                "dist/d.py", ".tox/t.py", "myenv/e.py"]:
        write(tmp_path / rel, "")
    (tmp_path / "myenv" / "pyvenv.cfg").write_text("home = /usr\n")
    found = iter_python_files([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.py", "b.py", "sub/c.py", "sub/deeper/d.py"]


def test_iter_python_files_keeps_files_as_given_and_dedupes(tmp_path):
    script = write(tmp_path / "tool", "")
    model = write(tmp_path / "m.py", "")
    found = iter_python_files([model, script, tmp_path, str(model)])
    assert found == [model, script]


def test_iter_python_files_missing_path(tmp_path):
    with pytest.raises(LoadError, match="no such file or directory") as info:
        iter_python_files([tmp_path / "nope.py"])
    assert info.value.path.endswith("nope.py")


# --- find_project_root ----------------------------------------------------------------------------

@pytest.mark.parametrize("marker", ["pyproject.toml", "setup.py", "setup.cfg", ".git"])
def test_find_project_root_nearest_marker(tmp_path, marker):
    (tmp_path / marker).mkdir() if marker == ".git" else (tmp_path / marker).write_text("")
    inner = write(tmp_path / "src" / "pkg" / "m.py", "")
    assert find_project_root(inner) == tmp_path.resolve()


def test_find_project_root_defaults_to_file_dir(tmp_path):
    inner = write(tmp_path / "a" / "m.py", "")
    if any((d / m).exists() for d in tmp_path.resolve().parents
           for m in ("pyproject.toml", "setup.py", "setup.cfg", ".git")):
        pytest.skip("the temporary directory sits inside a project")
    assert find_project_root(inner) == inner.parent.resolve()


# --- import_file ----------------------------------------------------------------------------------

def test_import_file_private_name_and_no_main_block(monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    path_before, argv_before = list(sys.path), list(sys.argv)
    module = import_file(FIXTURES / "tiny_mlp.py")
    assert module.__name__.startswith("_gradlint_") and module.__name__.endswith("tiny_mlp")
    assert module.__name__ in sys.modules
    assert module.TinyMLP.__module__ == module.__name__
    assert sys.path == path_before
    assert sys.argv == argv_before
    assert sys.dont_write_bytecode is False


def test_import_file_twins_do_not_collide():
    a = import_file(FIXTURES / "twin_a" / "model.py")
    b = import_file(FIXTURES / "twin_b" / "model.py")
    assert a.__name__ != b.__name__
    assert a.Net is not b.Net
    # Each model.py sees its own helpers.py, in either order.
    assert (a.Net().fc.in_features, b.Net().fc.in_features) == (3, 5)
    assert import_file(FIXTURES / "twin_a" / "model.py").Net().fc.in_features == 3


def test_import_file_keeps_sibling_modules():
    module = import_file(FIXTURES / "imports_class.py")
    assert sys.modules["tiny_mlp"].TinyMLP is module.TinyMLP
    assert sys.modules["instances"].model is module.borrowed
    assert str(FIXTURES) not in sys.path and str(FIXTURES.resolve()) not in sys.path


def test_import_file_package_relative_import():
    module = import_file(FIXTURES / "pkg" / "model.py")
    assert module.__package__ == "pkg"
    assert module.__name__.startswith("pkg._gradlint_")
    assert type(module.PkgNet().blocks[0]) is sys.modules["pkg.layers"].Block
    init = import_file(FIXTURES / "pkg" / "__init__.py")
    assert init is sys.modules["pkg"]


def test_import_file_package_named_like_a_loaded_module(tmp_path):
    import json

    write(tmp_path / "json" / "__init__.py", "")
    write(tmp_path / "json" / "layers.py", "WIDTH = 6\n")
    path = write(tmp_path / "json" / "model.py", """\
        from torch import nn
        from .layers import WIDTH

        class JNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(WIDTH, 1)
        """)
    module = import_file(path)
    assert module.JNet().fc.in_features == 6
    assert module.__package__ != "json"
    assert sys.modules["json"] is json


def test_import_file_project_root_on_path():
    module = import_file(FIXTURES / "proj" / "src" / "nets" / "net.py")
    assert module.ProjNet().fc.in_features == 7


def test_import_file_explicit_project_root(tmp_path):
    write(tmp_path / "root_helper_mod.py", "VALUE = 11\n")
    path = write(tmp_path / "deep" / "er" / "m.py", "import root_helper_mod\nVALUE = root_helper_mod.VALUE\n")
    assert import_file(path, project_root=tmp_path).VALUE == 11


def test_import_file_resets_module_level_argparse(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["gradlint", "check", "--not-a-flag-of-theirs"])
    module = import_file(FIXTURES / "argv_at_import.py")
    assert module.args.width == 4
    assert sys.argv == ["gradlint", "check", "--not-a-flag-of-theirs"]


def test_import_file_absolute_import_of_its_own_repository(tmp_path):
    # TCN/adding_problem/model.py in a folder without project markers: `from TCN.tcn import ...`
    # resolves once the folder holding TCN/ is on the path.
    write(tmp_path / "tcn" / "TCN" / "__init__.py", "")
    write(tmp_path / "tcn" / "TCN" / "tcn.py", "LEVELS = 8\n")
    path = write(tmp_path / "tcn" / "TCN" / "adding_problem" / "model.py", "from TCN.tcn import LEVELS\n")
    assert import_file(path).LEVELS == 8
    assert absolute_import_roots(path.resolve()) == [(tmp_path / "tcn").resolve()]


def test_absolute_import_roots_never_shadow_installed_packages(tmp_path):
    write(tmp_path / "repo" / "mine" / "__init__.py", "")
    write(tmp_path / "repo" / "json.py", "")  # would shadow the standard library's json
    path = write(tmp_path / "repo" / "sub" / "model.py", "import json\nfrom mine import x\n")
    assert absolute_import_roots(path.resolve()) == []


def test_import_file_module_named_like_its_package(tmp_path):
    # seq2seq/models/seq2seq.py imports its own package: the package root comes first on the path.
    write(tmp_path / "seq2seq" / "__init__.py", "")
    write(tmp_path / "seq2seq" / "models" / "__init__.py", "")
    write(tmp_path / "seq2seq" / "models" / "rnn.py", "HIDDEN = 4\n")
    path = write(tmp_path / "seq2seq" / "models" / "seq2seq.py", "from seq2seq.models.rnn import HIDDEN\n")
    assert import_file(path).HIDDEN == 4


def test_import_file_syntax_error():
    path = FIXTURES / "syntax_error.py"
    with pytest.raises(LoadError) as info:
        import_file(path)
    err = info.value
    assert err.path == str(path) and err.line == 3
    assert f"{path}:3: SyntaxError" in str(err)
    assert "def broken(:" in err.traceback_text


def test_import_file_syntax_error_in_helper(tmp_path):
    helper = write(tmp_path / "bad_helper_for_loading.py", "x = (\n")
    path = write(tmp_path / "m.py", "import bad_helper_for_loading\n")
    with pytest.raises(LoadError) as info:
        import_file(path)
    assert info.value.path == str(helper) and info.value.line == 1


def test_import_file_missing_package():
    path = FIXTURES / "missing_import.py"
    with pytest.raises(LoadError) as info:
        import_file(path)
    err = info.value
    assert (err.path, err.line) == (str(path), 4)
    assert "ModuleNotFoundError" in err.message
    assert "gradlint_fixture_package_that_is_not_installed" in err.message
    assert "install" in err.hint
    assert "missing_import.py\", line 4" in err.traceback_text
    assert_no_gradlint_frames(err.traceback_text)


def test_import_file_exception_points_at_innermost_user_line():
    path = FIXTURES / "raises_at_import.py"
    with pytest.raises(LoadError) as info:
        import_file(path)
    err = info.value
    assert (err.path, err.line) == (str(path), 5)
    assert "ValueError" in err.message and "width must be even" in err.message
    assert "line 8" in err.traceback_text and "line 5" in err.traceback_text
    assert_no_gradlint_frames(err.traceback_text)
    assert err.traceback_text == format_user_traceback(err.__cause__)


def test_import_file_sys_exit_is_a_load_error():
    path = FIXTURES / "exits.py"
    with pytest.raises(LoadError, match=r"sys\.exit\(3\)") as info:
        import_file(path)
    assert (info.value.path, info.value.line) == (str(path), 5)
    assert "__main__" in info.value.hint


def test_import_file_restores_state_after_failure(monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    path_before = list(sys.path)
    with pytest.raises(LoadError):
        import_file(FIXTURES / "raises_at_import.py")
    assert sys.path == path_before and sys.dont_write_bytecode is False


def test_import_file_user_path_additions_are_undone(tmp_path):
    path = write(tmp_path / "m.py", "import sys\nsys.path.insert(0, '/some/where/else')\n")
    import_file(path)
    assert "/some/where/else" not in sys.path


def test_malformed_decorator_reports_users_line(tmp_path):
    path = write(tmp_path / "m.py", """\
        from torch import nn
        from gradlint.base.targets import target


        @target(inputs=(8, -1))
        def make():
            return nn.Linear(2, 2)
        """)
    with pytest.raises(InputError, match=r"input shape \(8, -1\) must contain positive ints") as info:
        import_file(path)
    assert (info.value.path, info.value.line) == (str(path), 5)


def test_import_file_not_a_file(tmp_path):
    with pytest.raises(LoadError, match="no such file"):
        import_file(tmp_path / "absent.py")
    with pytest.raises(LoadError, match="is a directory"):
        import_file(tmp_path)


def test_no_bytecode_written_into_users_tree(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    copy = tmp_path / "tree"
    shutil.copytree(FIXTURES, copy)
    for tree in (copy, FIXTURES):
        for path in iter_python_files([tree]):
            if path.name in BROKEN:
                continue
            found = discover(import_file(path), path)
            for item in found.targets:
                if item.path.name != "build_failures.py":
                    instantiate(item)
        assert not list(tree.rglob("__pycache__")), tree


# --- discover -------------------------------------------------------------------------------------

def test_discover_class():
    found = load("tiny_mlp.py")
    assert [(t.name, t.kind, t.line, t.options) for t in found.targets] == [("TinyMLP", "class", 6, None)]
    assert found.skipped == ()
    assert found.targets[0].path == FIXTURES / "tiny_mlp.py"


def test_discover_base_class_needing_arguments_is_a_building_block():
    found = load("needs_args.py")
    assert [t.name for t in found.targets] == ["Small"]
    assert found.skipped == ()
    assert found.blocks == (Skipped("Base", 6, "the base class of Small"),)


def test_discover_class_needing_arguments_is_a_target_that_says_so(tmp_path):
    path = write(tmp_path / "m.py", """\
        from torch import nn


        class Net(nn.Module):
            def __init__(self, depth, width=8, *layers, **extra):
                super().__init__()
                self.fc = nn.Linear(width, width)
        """)
    (target,) = discover(import_file(path), path).targets
    assert (target.name, target.kind, target.needs) == ("Net", "class", ("depth",))


def test_discover_decorated():
    path = FIXTURES / "decorated.py"
    found = load("decorated.py")
    assert [(t.name, t.kind, t.line) for t in found.targets] == [
        ("make_two_input", "factory", line_of(path, "def make_two_input")),
        ("Deep", "class", line_of(path, "class Deep")),
        ("make_masked", "factory", line_of(path, "def make_masked")),
    ]
    two, deep, _ = found.targets
    assert two.options.name == "two-input" and two.display_name == "two-input"
    assert deep.options.kwargs == {"depth": 3} and deep.display_name == "Deep"
    assert deep.ref == f"{path}::Deep"
    # Classes the decorated factories build are their building blocks.
    assert found.skipped == ()
    assert [(s.name, s.reason) for s in found.blocks] == [
        ("TwoInput", "a building block of make_two_input"),
        ("Masked", "a building block of make_masked"),
    ]


def test_discover_instances():
    found = load("instances.py")
    assert [(t.name, t.kind, t.line) for t in found.targets] == [("model", "instance", 5)]
    assert found.skipped == (Skipped("act", 7, "instance has no parameters"),)


def test_discover_ignores_imported_classes_and_instances():
    found = load("imports_class.py")
    assert [t.name for t in found.targets] == ["Wrapper"]


def test_discover_decorated_assignment(tmp_path):
    path = write(tmp_path / "m.py", """\
        import functools
        from torch import nn
        from gradlint.base.targets import target


        class Net(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.fc = nn.Linear(width, 2)


        make_small = target(inputs=(2, 3))(functools.partial(Net, width=3))
        """)
    found = discover(import_file(path), path)
    assert [(t.name, t.kind, t.line) for t in found.targets] == [("make_small", "factory", 12)]
    assert found.blocks == (Skipped("Net", 6, "a building block of make_small"),)
    assert instantiate(found.targets[0]).fc.in_features == 3


def test_discover_package_module_ignores_relative_imports():
    assert [t.name for t in load("pkg/model.py").targets] == ["PkgNet"]


def test_discover_subclass_of_decorated_class_is_plain(tmp_path):
    path = write(tmp_path / "m.py", """\
        from torch import nn
        from gradlint.base.targets import target


        @target(inputs=(2, 3))
        class Base(nn.Module):
            def __init__(self, width=3):
                super().__init__()
                self.fc = nn.Linear(width, 3)


        class Child(Base):
            pass
        """)
    found = discover(import_file(path), path)
    assert [(t.name, t.options is not None) for t in found.targets] == [("Base", True), ("Child", False)]


def test_discover_select_by_name_and_display_name():
    assert [t.name for t in load("decorated.py", "Deep").targets] == ["Deep"]
    assert [t.name for t in load("decorated.py", "two-input").targets] == ["make_two_input"]


def test_discover_select_explicit_objects():
    base = load("needs_args.py", "Base").targets[0]
    assert (base.name, base.kind, base.line) == ("Base", "class", 6)
    factory = load("build_failures.py", "unmarked_factory").targets[0]
    assert factory.kind == "factory"
    assert isinstance(instantiate(factory), nn.Linear)


def test_discover_unknown_name_lists_targets():
    path = FIXTURES / "needs_args.py"
    with pytest.raises(LoadError) as info:
        load("needs_args.py", "Nope")
    err = info.value
    assert err.path == str(path)
    assert "'Nope'" in err.message and "Small" in err.message
    assert "targets: Small; building blocks: Base" in err.message


def test_discover_name_that_is_no_model():
    with pytest.raises(LoadError, match="not a model factory"):
        load("needs_args.py", "nn")


def test_target_identity_ignores_obj():
    a = Target(Path("m.py"), "Net", "class", 3, None, obj=object())
    b = Target(Path("m.py"), "Net", "class", 3, None, obj=object())
    assert a == b and hash(a) == hash(b)
    assert "obj" not in repr(a)


# --- instantiate ----------------------------------------------------------------------------------

def test_instantiate_class_factory_and_instance():
    assert type(instantiate(load("tiny_mlp.py").targets[0])).__name__ == "TinyMLP"
    two = load("decorated.py", "make_two_input").targets[0]
    assert type(instantiate(two)).__name__ == "TwoInput"
    instance = load("instances.py").targets[0]
    assert instantiate(instance) is instance.obj


def test_instantiate_uses_declared_kwargs_and_overrides():
    deep = load("decorated.py", "Deep").targets[0]
    assert len(instantiate(deep).layers) == 3
    assert len(instantiate(deep, {"depth": 1}).layers) == 1


def test_instantiate_missing_arguments_hint():
    path = FIXTURES / "needs_args.py"
    base = load("needs_args.py", "Base").targets[0]
    with pytest.raises(LoadError) as info:
        instantiate(base)
    err = info.value
    assert (err.path, err.line) == (str(path), 6)
    assert "constructor needs arguments: depth, width" in err.message
    assert '@gradlint.target(kwargs={"depth": ..., "width": ...})' in err.hint
    assert (f'[tool.gradlint] targets = [{{ path = "{path}::Base", kwargs = {{ depth = ..., width = ... }} }}]'
            in err.hint)
    assert len(instantiate(base, {"depth": 2, "width": 3}).layers) == 2


def test_instantiate_unknown_argument():
    with pytest.raises(LoadError, match="takes no argument colour"):
        instantiate(load("tiny_mlp.py").targets[0], {"colour": "red"})


def test_instantiate_instance_takes_no_kwargs():
    with pytest.raises(LoadError, match="takes no kwargs"):
        instantiate(load("instances.py").targets[0], {"width": 2})


def test_instantiate_constructor_error_points_at_user_line():
    path = FIXTURES / "build_failures.py"
    broken = load("build_failures.py", "Broken").targets[0]
    with pytest.raises(LoadError) as info:
        instantiate(broken)
    err = info.value
    assert (err.path, err.line) == (str(path), line_of(path, "raise RuntimeError"))
    assert "building Broken raised RuntimeError: forgot to set the width" in err.message
    assert "forgot to set the width" in err.traceback_text
    assert_no_gradlint_frames(err.traceback_text)


@pytest.mark.parametrize("name, fragment", [
    ("returns_tuple", "returned tuple"),
    ("returns_none", "returned NoneType None"),
])
def test_instantiate_factory_returning_no_module(name, fragment):
    path = FIXTURES / "build_failures.py"
    with pytest.raises(LoadError, match=fragment) as info:
        instantiate(load("build_failures.py", name).targets[0])
    assert info.value.line == line_of(path, f"def {name}")
    assert "not an nn.Module" in info.value.message


def test_instantiate_lazy_sibling_import():
    sys.modules.pop("lazy_ctor_helper", None)
    net = instantiate(load("lazy_ctor.py").targets[0])
    assert net.fc.in_features == 9


def test_user_code_puts_roots_back(tmp_path):
    path = write(tmp_path / "m.py", "X = 1\n")
    import_file(path)
    before = list(sys.path)
    with user_code(path):
        assert sys.path[0] == str(path.parent.resolve())
        assert sys.dont_write_bytecode is True
    assert sys.path == before


def test_errors_are_gradlint_errors():
    assert issubclass(LoadError, GradlintError)
