"""The sizes gradlint assumes where a repository computes them from its data at run time.

A training script often builds its model with ``ntoken = len(corpus.dictionary)`` or
``num_classes = dataset.num_classes``: values no static reading can find. For three kinds of
size, whose value changes the shape of one embedding or output layer and barely the gradient
statistics the analysis predicts, gradlint assumes a conventional value instead of giving up,
and every report names the value as assumed, with the line where the repository computes it.
Any other value it cannot find stays missing, and the message says where to give it.
"""

from __future__ import annotations

import re

__all__ = ["CONVENTIONS", "Convention", "convention_for"]


class Convention:
    """One kind of size and the value assumed for it.

    Attributes:
        kind: What the size counts, in words.
        value: The value assumed.
        pattern: Parameter and attribute names of that kind.
    """

    def __init__(self, kind: str, value: int, pattern: str) -> None:
        self.kind, self.value, self.pattern = kind, value, re.compile(pattern)

    def __repr__(self) -> str:
        return f"Convention({self.kind!r}, {self.value})"


CONVENTIONS = (
    Convention("vocabulary size", 1000,
               r"^(n_?|num_|src_|tgt_|trg_|input_|output_)?(vocab|vocabulary|tokens?|ntokens?|words?)(_size|_len)?$"
               r"|^(src|tgt|trg)_?(vocab|ntokens?)(_size)?$|^vocab(ulary)?_size$|^ntokens?$|^n_?vocab$"),
    Convention("number of classes", 10,
               r"^(n_?|num_|number_of_)?(classes|class|labels|categories)$|^nclass(es)?$|^num_of_classes$"),
    Convention("sequence length", 256,
               r"^(block_size|ctx_len|context_length|context_len|max_seq_len|max_seq_length|seq_len|"
               r"sequence_length|max_len|max_length|max_position_embeddings|n_positions|n_ctx)$"),
)


def convention_for(name: str) -> Convention | None:
    """The convention for a parameter or attribute named ``name``; None when it has none."""
    lowered = name.lower()
    return next((c for c in CONVENTIONS if c.pattern.search(lowered)), None)
