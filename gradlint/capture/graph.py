"""gradlint's graph: the ops of one forward pass, with where each came from.

Every tracing path (torch.export, torch.fx with leaf modules, module call order) ends in
the same ``Graph``: nodes in topological order, each naming its op ``kind`` (a key of the
transfer registry), its tensor inputs, its parameters by qualified name, its output shape,
and the module and source line it belongs to.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Source:
    """A place in a source file."""

    path: str
    line: int
    code: str = ""


@dataclass(slots=True)
class Node:
    """One op of the forward pass.

    Attributes:
        name: Unique name (the fx node's name where there is one).
        kind: One of ``gradlint.base.kinds.KINDS``: ``linear``, ``act``, ``add``, ``attention``, ...
        op: The original op, for messages (``aten.linear.default``, ``nn.Linear``).
        inputs: Names of the nodes whose values this op consumes (``None`` for an absent
            optional tensor). Parameters are not inputs; they are in ``params``.
        params: Role (``weight``, ``bias``, ...) -> the parameter's qualified name.
        attrs: Non-tensor arguments, normalized per kind (``dim``, ``p``, ``stride``, ...).
        shape: Output shape; a tuple of shapes for ops with several outputs; None if unknown.
        dtype: ``float``, ``int`` or ``bool`` (of the first output).
        module: Qualified name of the innermost module that ran this op ('' for the root).
        module_type: That module's class name.
        call_site: Where the op is called, preferring the user's own code.
        fused: Names of the original nodes a fused unit (attention, hand-written norm) replaced.
    """

    name: str
    kind: str
    op: str = ""
    inputs: tuple[str | None, ...] = ()
    params: dict[str, str] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    shape: Any = None
    dtype: str = "float"
    module: str = ""
    module_type: str = ""
    call_site: Source | None = None
    fused: tuple[str, ...] = ()


@dataclass
class Graph:
    """Nodes in topological order plus what the engine needs to know about the run.

    Attributes:
        nodes: Topologically ordered nodes.
        outputs: Names of the nodes whose values the model returns (flattened).
        analysis: The tracing path that produced the graph: ``export``, ``fx`` or ``module-order``.
        batch_size: Size of the batch dimension of the inputs, when known.
        notes: Things the tracer could not resolve, for ``trace`` findings.
        loops: Loops over time steps written in Python that no fused unit covers
            (``capture.loops.Loop``): the engine reports their long-range gradient.
        own_backward: Custom autograd Functions and forward-registered tensor hooks on the
            gradient paths, whose backward the graph does not show (``capture.own_backward``).
        slices: Nodes the capture added that the exported program does not have, each one step
            of a node it has: (that node, dim, index), for the probe to read (``capture.function_scans``).
    """

    nodes: list[Node]
    outputs: list[str]
    analysis: str
    batch_size: int | None = None
    notes: list[tuple[str, str]] = field(default_factory=list)
    loops: list[Any] = field(default_factory=list)
    own_backward: tuple[str, ...] = ()
    slices: dict[str, tuple[str, int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reindex()

    def reindex(self) -> None:
        self.by_name = {n.name: n for n in self.nodes}
        users: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                # A node's own earlier entry can only be the last one: a membership test would
                # be quadratic in a tensor's uses (a mask or table that every layer reads).
                if i is not None and (not users[i] or users[i][-1] != n.name):
                    users[i].append(n.name)
        self.users = users

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __getitem__(self, name: str) -> Node:
        return self.by_name[name]

    def __len__(self) -> int:
        return len(self.nodes)
