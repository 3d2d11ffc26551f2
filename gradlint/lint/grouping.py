"""One finding per problem: the findings that the rules report about one problem become one
finding, with the others attached as notes, the way a compiler attaches notes to an error.

The rules stay independent: each reports what it sees, in its own numbers, and knows nothing of
the others. This pass runs after them. In a 20-layer sigmoid MLP, GL101 sees the gradient
vanish, GL201 the saturating activations that cause it, GL401 and GL501 the normalization and
the skip connection that would also mend it: one problem, one finding.

- **Roles.** A built-in rule is a *symptom* (the gradient vanishes or explodes: GL101, GL102),
  a *cause* of one (saturating activations, init scale, dead ReLUs, ...) or names a *fix* (the
  missing normalization or skip path). Other rules, rule packs' included, report problems of
  their own and are never grouped.
- **Direction.** A cause of vanishing never joins an exploding gradient, nor the reverse; a
  finding whose evidence says which way it goes is read that way (GL301's decades).
- **Span.** A symptom concerns the whole model. Two causes or fixes join only when the layers
  they concern overlap in forward order, so two problems in different parts of a model stay two
  findings.
- **The finding.** The most severe member of a group is the finding (so the exit code and
  ``fail-on`` see exactly the severities they saw before grouping); among equals, the symptom,
  then a cause, then a fix. Its notes are the others, causes first, the cause the symptom's
  attribution weighs most leading.
- **Where.** A symptom's finding points at the line of its leading cause that has a location
  (the activation, the init, the layer), not at where the symptom shows.

The pass is idempotent (``group`` flattens notes first), so the configuration's severities and
``per-file-ignores`` can drop or re-rank a member and group again: ignoring the symptom's rule
leaves its causes as a finding of their own. This module imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields, replace
from typing import Any

from gradlint.base.findings import Finding, Note, Severity

SYMPTOM, CAUSE, FIX = "symptom", "cause", "fix"
VANISHING, EXPLODING = "vanishing", "exploding"

# Per built-in rule: its role, the direction it belongs to (None: either, read from its evidence
# where it can be), and the name of the attribution entry of the verdict it explains.
ROLES: dict[str, tuple[str, str | None, str | None]] = {
    "GL101": (SYMPTOM, VANISHING, None),                    # vanishing-gradient
    "GL102": (SYMPTOM, EXPLODING, None),                    # exploding-gradient
    "GL201": (CAUSE, VANISHING, "saturating activations"),  # saturating-activation-chain
    "GL202": (CAUSE, VANISHING, "attention"),               # unscaled-attention-scores
    "GL203": (CAUSE, VANISHING, "init scale"),              # dead-relu-risk
    "GL301": (CAUSE, None, "init scale"),                   # init-scale-mismatch
    "GL402": (CAUSE, VANISHING, "normalization"),           # deep-post-ln-transformer
    "GL502": (CAUSE, EXPLODING, "residual summation"),      # unscaled-residual-branches
    "GL601": (CAUSE, VANISHING, "recurrence"),              # vanilla-rnn-long-sequence
    "GL602": (CAUSE, VANISHING, "recurrence"),              # lstm-forget-bias-zero
    "GL603": (CAUSE, EXPLODING, "recurrence"),              # exploding-recurrence
    "GL401": (FIX, None, None),                             # missing-normalization
    "GL501": (FIX, None, None),                             # missing-skip-path
}
_RANK = {SYMPTOM: 0, CAUSE: 1, FIX: 2}
_NOTE_FIELDS = tuple(f.name for f in fields(Note) if f.name != "role")


def flatten(findings: Iterable[Finding]) -> list[Finding]:
    """Every finding and every note as a finding of its own, at its own location."""
    out = []
    for f in findings:
        out.append(replace(f, notes=()) if f.notes else f)
        out += [Finding(**{k: getattr(n, k) for k in _NOTE_FIELDS}) for n in f.notes]
    return out


def group(findings: Iterable[Finding], layers: Sequence[Any] = ()) -> tuple[Finding, ...]:
    """One finding per problem, with the others of its problem as its notes.

    Args:
        findings: One target's findings (notes already attached are taken apart first).
        layers: The target's layers in forward order (``Report.layers``: ``module`` and
            ``node``), for the spans of causes and fixes; without them, causes and fixes join
            only a symptom.

    Returns:
        The findings, most severe first, as ``Config.adjust`` orders them.
    """
    flat = flatten(findings)
    order = _positions(layers)
    members = [(i, f, ROLES[f.code][0], _direction(f), _span(f, order)) for i, f in enumerate(flat)
               if f.code in ROLES]
    parent = list(range(len(flat)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, (i, _, ri, di, si) in enumerate(members):
        for j, _, rj, dj, sj in members[a + 1:]:
            if di and dj and di != dj:
                continue
            if ri == SYMPTOM and rj == SYMPTOM:
                continue
            if SYMPTOM in (ri, rj) or _overlap(si, sj):
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(flat)):
        groups.setdefault(root(i), []).append(i)
    out = [flat[g[0]] if len(g) == 1 else _merge([flat[i] for i in g]) for g in groups.values()]
    out.sort(key=lambda f: (-Severity(f.severity).rank, f.path or "", f.line or 0, f.code))
    return tuple(out)


def settle(findings: Iterable[Finding], layers: Sequence[Any],
           silenced: Callable[[Finding], bool]) -> tuple[tuple[Finding, ...], list[Finding]]:
    """``group``, then drop each finding a comment silences on the line it now points at, and
    group what is left again, until no comment silences one.

    Returns:
        The findings, and those silenced here (at the line that silenced them).
    """
    kept, dropped = list(flatten(findings)), []
    while True:
        grouped = group(kept, layers)
        hit = [f for f in grouped if silenced(f)]
        if not hit:
            return grouped, dropped
        for f in hit:
            dropped.append(replace(f, notes=()))
            kept = [g for g in kept if not _same(g, f)]


def _same(a: Finding, b: Finding) -> bool:
    return a.code == b.code and a.module == b.module and a.message == b.message


def _merge(members: list[Finding]) -> Finding:
    members.sort(key=lambda f: (-Severity(f.severity).rank, _RANK[ROLES[f.code][0]]))
    head, rest = members[0], members[1:]
    weights = head.evidence.get("attribution") if ROLES[head.code][0] == SYMPTOM else None
    weights = weights if isinstance(weights, dict) else {}

    def weight(f: Finding) -> float:
        value = weights.get(ROLES[f.code][2])
        return -abs(value) if isinstance(value, (int, float)) else 0.0

    rest.sort(key=lambda f: (_RANK[ROLES[f.code][0]], weight(f), -Severity(f.severity).rank))
    notes = tuple(Note(role=ROLES[f.code][0], **{k: getattr(f, k) for k in _NOTE_FIELDS}) for f in rest)
    lead = next((n for n in notes if n.role == CAUSE and n.path and n.line), None)
    if ROLES[head.code][0] == SYMPTOM and lead is not None:
        head = replace(head, path=lead.path, line=lead.line, column=lead.column, via=lead.via)
    return replace(head, notes=notes)


def _direction(f: Finding) -> str | None:
    fixed = ROLES[f.code][1]
    if fixed is not None:
        return fixed
    ev = f.evidence
    if f.code == "GL301" and isinstance(ev.get("decades"), (int, float)) and ev["decades"]:
        return VANISHING if ev["decades"] < 0 else EXPLODING
    lost, gained = ev.get("lost_decades"), ev.get("gained_decades")
    if isinstance(lost, (int, float)) and isinstance(gained, (int, float)) and bool(lost) != bool(gained):
        return VANISHING if lost else EXPLODING
    return None


def _positions(layers: Sequence[Any]) -> tuple[dict[str, list[int]], dict[str, int]]:
    by_module: dict[str, list[int]] = {}
    by_node: dict[str, int] = {}
    for i, lr in enumerate(layers):
        by_node[lr.node] = i
        mod = lr.module or ""
        while mod:
            by_module.setdefault(mod, []).append(i)
            mod = mod.rsplit(".", 1)[0] if "." in mod else ""
    return by_module, by_node


def _span(f: Finding, order: tuple[dict[str, list[int]], dict[str, int]]) -> tuple[int, int] | None:
    """The first and last layer, in forward order, that the finding concerns; None when unknown."""
    by_module, by_node = order
    ev = f.evidence
    names = [f.module, ev.get("first"), ev.get("last"), *(ev.get("modules") or ())]
    at = [i for name in names if isinstance(name, str) and name for i in by_module.get(name, ())]
    at += [by_node[n] for n in (ev.get("nodes") or ()) if isinstance(n, str) and n in by_node]
    return (min(at), max(at)) if at else None


def _overlap(a: tuple[int, int] | None, b: tuple[int, int] | None) -> bool:
    return a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]
