"""Chains of layers or activations that follow one another with nothing but weights and
data movement between them, for the rules that judge such chains (GL201, GL301): which
member follows which, whether a skip connection goes around one, and the heaviest chains
that cover them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from gradlint.lint.toolkit import const_like


class Reach:
    """Descendant questions about one graph, each answered by a sweep in topological order
    that stops as soon as the answer is known. A full descendant set per node made the stack
    rules quadratic in the model's depth.
    """

    def __init__(self, graph):
        self.g = graph
        self.order = {n.name: i for i, n in enumerate(graph.nodes)}
        self.last_use = {n.name: max((self.order[u] for u in graph.users.get(n.name, ())), default=i)
                         for i, n in enumerate(graph.nodes)}
        self._from: dict[str, tuple[set[str], int]] = {}

    def descends(self, start: str, name: str) -> bool:
        """Whether ``name`` is ``start`` or computed from it."""
        end, first = self.order.get(name), self.order[start]
        if end is None or end < first:
            return False
        out, done = self._from.get(start) or ({start}, first)
        nodes = self.g.nodes
        for k in range(done + 1, end + 1):
            if any(i in out for i in nodes[k].inputs if i is not None):
                out.add(nodes[k].name)
        self._from[start] = (out, max(done, end))
        return name in out

    def bypassed(self, result, start: str, node: str, flows) -> bool:
        """Whether a sum after ``node`` adds back a path from ``start`` that avoids it: a skip
        connection around ``node`` (x = x + tanh(W x)), so the gradient reaching ``start``
        need not pass through it. ``flows(name, node)`` says which ops the path from ``node``
        to that sum may pass (besides sums, and products with constants)."""
        apart, limit = self.apart(start, node)
        stack, seen = [node], set()
        while stack:
            cur = stack.pop()
            for u in self.g.users.get(cur, []):
                if u in seen or self.order[u] > limit:
                    continue  # past the last use of what avoids node, no sum can add it back
                seen.add(u)
                n = self.g.by_name[u]
                others = [i for i in n.inputs if i is not None and i != cur and not const_like(result, i)]
                if n.kind == "add":
                    if any(i in apart for i in others):
                        return True
                    stack.append(u)
                elif flows(u, n) or (n.kind == "mul" and not others):
                    stack.append(u)
        return False

    def apart(self, start: str, avoid: str) -> tuple[set[str], int]:
        """The nodes computed from ``start`` but not from ``avoid``, and the last position at
        which any of them is read: no node past it takes one as an input."""
        nodes = self.g.nodes
        first = self.order[start]
        mine: set[str] = set()
        theirs = {avoid}
        limit = first
        # Each such node reads another one (or is start), so it comes at or before the last
        # use of those found so far: the sweep ends there.
        k = min(first, self.order[avoid])
        while k <= limit:
            n = nodes[k]
            if n.name == avoid or any(i in theirs for i in n.inputs if i is not None):
                theirs.add(n.name)
            elif n.name == start or any(i in mine for i in n.inputs if i is not None):
                mine.add(n.name)
                limit = max(limit, self.last_use[n.name])
            k += 1
        return mine, limit


class ChainWalker:
    """Which members of a chain follow which.

    From a member's output the walk passes ops of the kinds in ``through``, products with
    constants or parameters (LayerScale), and sums that are not skip connections (a bias
    added separately), to the next members. Normalization, attention, gates and any other
    op end the chain.

    Args:
        result: The result whose graph is walked.
        members: The chain's nodes, in graph order.
        through: Node kinds the walk passes.
        enter: For a node the walk reaches, the member it leads into (the node itself for a
            member; the activation a layer feeds, for chains of layer+activation pairs), or
            None. Default: the node when it is a member.
        around: Node kinds a skip connection around a member may pass besides members,
            sums and products with constants (default ``through``).
    """

    def __init__(self, result, members: Iterable[str], through: set[str],
                 enter: Callable[[str], str | None] | None = None, around: set[str] | None = None):
        self.result = result
        self.g = result.graph
        self.members = dict.fromkeys(members)  # in the caller's order, which ``predecessors`` keeps
        self.through = through
        self.around = through if around is None else around
        self.enter = enter or (lambda name: name if name in self.members else None)
        self.reach = Reach(self.g)

    def successors(self, start: str) -> set[str]:
        """The members whose input the output of member ``start`` reaches along the chain."""
        found: set[str] = set()
        stack, seen = [start], set()
        while stack:
            cur = stack.pop()
            for u in self.g.users.get(cur, []):
                if u in seen:
                    continue
                seen.add(u)
                member = self.enter(u)
                if member is not None:
                    if not self.bypassed(start, member):
                        found.add(member)
                    continue
                n = self.g.by_name[u]
                others = [i for i in n.inputs if i is not None and i != cur]
                if n.kind in self.through:
                    stack.append(u)
                elif n.kind == "mul" and all(const_like(self.result, i) for i in others):
                    stack.append(u)  # a scale by a constant or a parameter (LayerScale)
                elif n.kind == "add":
                    # A sum whose other operand also depends on the chain is a skip connection:
                    # the gradient has a way around the members and the chain ends.
                    if any(self.reach.descends(start, i) for i in others if not const_like(self.result, i)):
                        continue
                    stack.append(u)
        return found

    def bypassed(self, start: str, member: str) -> bool:
        """Whether a skip connection around ``member`` (x = x + tanh(W x)) adds back a path from
        ``start`` that avoids it: the gradient reaching ``start`` need not pass through
        ``member``, which is then no part of the chain."""
        return self.reach.bypassed(self.result, start, member,
                                   lambda u, n: u in self.members or n.kind in self.around)

    def predecessors(self) -> dict[str, list[str]]:
        """Per member, the members it follows, in the order of ``members``."""
        preds: dict[str, list[str]] = {m: [] for m in self.members}
        for m in self.members:
            for nxt in self.successors(m):
                preds[nxt].append(m)
        return preds


class PathCover:
    """Chains that cover a set of members, heaviest first.

    Each member's heaviest chain ending there is found in one sweep: ``order`` lists the
    members in topological order, and weights add along a chain. Iterating offers, from the
    heaviest end down, the heaviest chain to each end not yet covered, cut where it meets a
    covered member; ``take`` covers a chain's members, so later chains avoid them.
    """

    def __init__(self, order: Iterable[str], weight: Mapping[str, float], preds: Mapping[str, list[str]]):
        self.best: dict[str, float] = {}
        self.back: dict[str, str | None] = {}
        for m in order:
            prev = max((p for p in preds[m] if p in self.best), key=self.best.__getitem__, default=None)
            self.best[m] = weight[m] + (self.best[prev] if prev is not None else 0.0)
            self.back[m] = prev
        self.covered: set[str] = set()

    def __iter__(self) -> Iterator[list[str]]:
        for end in sorted(self.best, key=lambda m: -self.best[m]):
            if end in self.covered:
                continue
            path = []
            cur: str | None = end
            while cur is not None and cur not in self.covered:
                path.append(cur)
                cur = self.back[cur]
            path.reverse()
            yield path

    def take(self, path: list[str]) -> None:
        self.covered.update(path)
