"""Input inference on the ecosystem corpus: for each main model of benchmarks/ecosystem/manifest.toml,
built by the manifest's own ``build`` expression, do the example inputs gradlint infers (no
declaration, no configuration) make the model's forward run?

For each model: ``resolve_inputs(model)`` as ``gradlint check`` calls it, then one forward of a
meta-device copy of the model on meta copies of those inputs (what graph capture runs); where that
fails for a reason only meta tensors have (``meta_only``), one real forward on CPU instead (the
``forward runs`` column says which). A model counts when inputs were inferred and the forward runs.
The table shows the inferred inputs next to the manifest's (realistic) ones, the reason when the
forward fails or nothing was inferred, and the seconds inference took.

    python benchmarks/ecosystem_inputs.py                     # every model
    python benchmarks/ecosystem_inputs.py --only nanogpt GPT  # files whose path contains, or whose main is, NAME
    python benchmarks/ecosystem_inputs.py --notes             # also print each inference note
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import tomllib

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from gradlint.capture.inputs import resolve_inputs
from gradlint.capture.meta import meta_copy, quiet
from gradlint.load import import_file, package_parts, user_code

CORPUS = Path(__file__).resolve().parent / "ecosystem"

try:
    from gradlint.capture.infer import meta_only
except ImportError:  # a gradlint from before input inference (for the "before" number)
    def meta_only(exc: BaseException) -> bool:
        return isinstance(exc, NotImplementedError) or bool(
            re.search(r"\bmeta\b|data.dependent", f"{type(exc).__name__}: {exc}", re.IGNORECASE))


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value):
        inner = ", ".join(_describe(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    return repr(value)


@contextlib.contextmanager
def _package_paths(file: Path, slug: Path) -> Any:
    parts, package_root = package_parts(file)
    saved = list(sys.path)
    sys.path[:0] = [str(package_root), str(slug)]
    try:
        yield [*parts, file.stem]
    finally:
        sys.path[:] = saved


def _import(file: Path, slug: Path) -> tuple[Any, Any]:
    """The model file's module, imported as gradlint imports it, and the context to run its code in;
    where that import fails (a file that shadows its own package's name), as the manifest's README
    says: as part of its package, with the package root and the slug folder ahead on sys.path."""
    try:
        return import_file(file, project_root=slug), lambda: user_code(file)
    except Exception:  # noqa: BLE001 - try the package import below
        pass
    with _package_paths(file, slug) as parts:
        for name in [n for n in sys.modules if n == parts[0] or n.startswith(parts[0] + ".")]:
            del sys.modules[name]
        return importlib.import_module(".".join(parts)), lambda: _package_paths(file, slug)


def build(entry: dict) -> tuple[Any, dict[str, Any], Any]:
    """The entry's main model, built as its repository does, the module's namespace and the context
    to run the model's code in."""
    file = CORPUS / entry["file"]
    # The slug folder is the project root: several files import their own package absolutely.
    module, context = _import(file, CORPUS / entry["file"].split("/")[0])
    namespace = {"torch": torch, **vars(module)}
    torch.manual_seed(0)
    with context(), contextlib.redirect_stdout(sys.stderr):
        return eval(entry["build"], namespace), namespace, context


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"


def forward_runs(model: Any, inputs: Any) -> tuple[str | None, str]:
    """(None, how) when the forward runs on the inputs, else (why not, how): one meta-device
    forward, and where that fails for a reason only meta tensors have (values read into Python,
    a closure over the original model), one real forward on CPU without gradients."""
    copy = meta_copy(model).train()
    args, kwargs = inputs.meta()
    try:
        with quiet():
            copy(*args, **kwargs)
        return None, "meta"
    except Exception as exc:  # noqa: BLE001 - the model's own forward: report any failure
        if not meta_only(exc):
            return _why(exc), "meta"
    args, kwargs = inputs.materialize("cpu", torch.Generator().manual_seed(0))
    try:
        with torch.no_grad(), quiet(), contextlib.redirect_stdout(sys.stderr):
            model.train()(*args, **kwargs)
        return None, "cpu"
    except Exception as exc:  # noqa: BLE001
        return _why(exc), "cpu"


def check(entry: dict, analyze: bool = False) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        model, namespace, context = build(entry)
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "how": "", "inferred": "-", "expected": "-", "reason": f"build failed: {exc}",
                "note": "", "infer_seconds": 0.0, "seconds": time.perf_counter() - start}
    expected = eval(entry["inputs"], namespace)
    expected_text = ", ".join(_describe(v) for v in expected)
    with context():
        started = time.perf_counter()
        inputs = resolve_inputs(model)
        infer_seconds = time.perf_counter() - started
        reason, how = forward_runs(model, inputs) if inputs.found else (inputs.note, "")
        if analyze:
            import gradlint

            try:
                report = gradlint.check(model, inputs)
                how += f"; check: {report.analysis}, {report.summary.verdict}"
            except Exception as exc:  # noqa: BLE001
                how += f"; check raised {_why(exc)}"
    return {"ok": inputs.found and reason is None, "how": how, "inferred": inputs.describe() if inputs.found else "-",
            "expected": expected_text, "reason": reason or "", "note": inputs.note, "infer_seconds": infer_seconds,
            "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="only files whose manifest path contains NAME, or whose main model is NAME")
    parser.add_argument("--notes", action="store_true", help="print each model's inference note")
    parser.add_argument("--check", action="store_true",
                        help="also run gradlint.check(model) and print the analysis path and verdict")
    args = parser.parse_args(argv)
    entries = tomllib.loads((CORPUS / "manifest.toml").read_text())["model"]
    if args.only:
        entries = [e for e in entries if any(n in e["file"] or n == e["main"] for n in args.only)]
    print("| file | main | forward runs | inferred | manifest's inputs | reason when not | inference s | total s |")
    print("|---|---|---|---|---|---|---|---|")
    done = 0
    inference = 0.0
    total = time.perf_counter()
    for entry in entries:
        row = check(entry, args.check)
        done += row["ok"]
        inference += row["infer_seconds"]
        reason = row["reason"].replace("|", "/")[:200]
        runs = f"yes ({row['how']})" if row["ok"] else "no"
        print(f"| {entry['file']} | {entry['main']} | {runs} | {row['inferred']} "
              f"| {row['expected']} | {reason} | {row['infer_seconds']:.1f} | {row['seconds']:.1f} |", flush=True)
        if args.notes:
            print(f"    {row['note']}")
    print()
    print(f"inputs inferred and the forward runs: {done}/{len(entries)} ({100 * done / max(len(entries), 1):.0f}%)"
          f"; inference {inference:.0f} s of {time.perf_counter() - total:.0f} s in all (building the models included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
