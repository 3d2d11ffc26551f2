"""The tensors a forward returns, however it packs them.

torch's pytree flattens tuples, lists, dicts and the containers libraries register (Hugging
Face's ``ModelOutput``); a plain ``@dataclass`` of tensors is a leaf to it. Capture and the
probe both read outputs through ``output_tensors``, in the same order pytree gives, with
dataclass fields (in declaration order) opened where pytree stops.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch.utils._pytree import tree_leaves


def output_tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor in ``out``, in pytree order, dataclass fields included."""
    found: list[torch.Tensor] = []
    stack = [out]
    while stack:
        x = stack.pop()
        for leaf in tree_leaves(x):
            if isinstance(leaf, torch.Tensor):
                found.append(leaf)
            elif dataclasses.is_dataclass(leaf) and not isinstance(leaf, type):
                inner = [getattr(leaf, f.name) for f in dataclasses.fields(leaf)]
                found.extend(output_tensors(tuple(inner)))
    return found
