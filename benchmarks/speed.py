"""What ``gradlint.check`` costs, next to one real forward + backward of the same model.

Sections (run all, or pick with ``--only``):

* ``realistic``: BERT-base on 8 sequences of 512 tokens, GPT-2 medium on 8 of 256 (512 runs
  out of 24 GB in the forward + backward), and an HF ResNet-50 on 8 images of 224x224, built
  from transformers configs (random init). Per model, in the same process: the median of
  ``--repeat`` timed ``check`` calls after one warm-up, and the median of ``--repeat`` forward
  + backward passes (float32, CPU, train mode, loss sum(g * y)) after one warm-up; the ratio.
* ``meta7b``: the Llama-2-7B config built on the meta device; ``check`` time and the
  process's peak RSS increase (its forward + backward would not fit in this machine's memory).
* ``corpus``: every model of ``benchmarks/corpus.py``: the first ``check`` of each model and the
  steady state. The first model's first ``check`` includes graph capture's first-use imports
  when this section runs alone (``--only corpus``); after the other sections it does not.

Run: ``python benchmarks/speed.py [--only realistic meta7b corpus] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

import gradlint
from gradlint.capture.inputs import ExampleInputs, TensorSpec


def rss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def realistic(repeat: int) -> None:
    import transformers as T

    b = 8
    cases = [
        ("BERT-base, 8x512 tokens", lambda: T.BertModel(T.BertConfig()),
         ExampleInputs((TensorSpec((b, 512), "int64", 30522),), {"return_dict": False}, "decorator")),
        # 8 x 512 tokens ran out of this machine's 24 GB in the forward + backward.
        ("GPT-2 medium, 8x256 tokens", lambda: T.GPT2LMHeadModel(T.GPT2Config(n_embd=1024, n_layer=24, n_head=16)),
         ExampleInputs((TensorSpec((b, 256), "int64", 50257),), {"use_cache": False, "return_dict": False},
                       "decorator")),
        ("ResNet-50 (HF), 8x3x224x224", lambda: T.ResNetModel(T.ResNetConfig()),
         ExampleInputs((TensorSpec((b, 3, 224, 224)),), {"return_dict": False}, "decorator")),
    ]
    print("| model | check s | forward+backward s | ratio |\n|---|---|---|---|")
    for name, build, ex in cases:
        t_check, t_fb = time_case(build, ex, repeat)  # the model is freed when it returns
        print(f"| {name} | {t_check:.2f} | {t_fb:.2f} | {t_fb / t_check:.1f}x cheaper |", flush=True)
        gc.collect()


def time_case(build, ex: ExampleInputs, repeat: int) -> tuple[float, float]:
    """``check`` time and forward + backward time of one freshly built model."""
    torch.manual_seed(0)
    model = build().train()
    t_check = timed(lambda: gradlint.check(model, ex), repeat)
    gen = torch.Generator().manual_seed(0)
    args, kwargs = ex.materialize("cpu", gen)

    def fwd_bwd():
        out = model(*args, **kwargs)
        ys = [y for y in torch.utils._pytree.tree_leaves(out) if isinstance(y, torch.Tensor) and y.requires_grad]
        loss = sum((torch.randn_like(y) * y).sum() for y in ys)
        loss.backward()
        model.zero_grad(set_to_none=True)

    return t_check, timed(fwd_bwd, repeat)


def meta7b() -> None:
    import transformers as T

    cfg = T.LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
    base = current_rss_mb()
    t = time.perf_counter()
    with torch.device("meta"):
        model = T.LlamaForCausalLM(cfg)
    ex = ExampleInputs((TensorSpec((1, 512), "int64", 32000),), {"use_cache": False, "return_dict": False},
                       "decorator")
    report = gradlint.check(model, ex)
    elapsed = time.perf_counter() - t
    print(f"Llama-2-7B config on meta, 1x512 tokens: build + check {elapsed:.1f} s, peak RSS "
          f"{rss_mb():.0f} MB ({rss_mb() - base:.0f} MB above the {base:.0f} MB before), verdict "
          f"{report.summary.verdict}, {len(report.params)} parameters, analysis {report.analysis}")


def corpus() -> None:
    from corpus import CORPUS

    print("| model | first check s | steady check s |\n|---|---|---|")
    firsts, steadies = [], []
    for e in CORPUS:
        model, ex = e.build(), e.inputs()
        t = time.perf_counter()
        gradlint.check(model, ex)
        first = time.perf_counter() - t
        steady = timed(lambda model=model, ex=ex: gradlint.check(model, ex), 3)
        firsts.append(first)
        steadies.append(steady)
        print(f"| {e.name} | {first:.2f} | {steady:.2f} |", flush=True)
    print(f"\nsteady state: median {statistics.median(steadies):.2f} s, max {max(steadies):.2f} s; "
          f"first model's first check {firsts[0]:.2f} s (with first-use imports when this section runs alone)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=["realistic", "meta7b", "corpus"])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    print(f"gradlint {gradlint.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads\n")
    if "meta7b" in args.only:  # first, so its peak RSS is its own
        meta7b()
        print()
    if "realistic" in args.only:
        realistic(args.repeat)
        print()
    if "corpus" in args.only:
        corpus()
    return 0


if __name__ == "__main__":
    sys.exit(main())
