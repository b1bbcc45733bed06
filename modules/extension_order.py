"""The order extensions load in, and the per-hook order of ``[hooks/<hook>]`` sections, with ``graphlib``.

Within each host group (built-in; user + package): by name (folders before packages), adjusted by
``Before``/``After`` (and ``Requires``, which also means "after") — a topological sort in which whatever is free
to go next goes in name order. A constraint naming an extension that is not there (not installed, disabled, or
not loadable) is ignored with a note on the naming extension. Constraints that form a cycle are dropped — every
constraint between two extensions of one strongly connected component, and no other — reported on every
extension in the cycle and returned as ``plugins.DroppedCycle``. ``[hooks/<hook name>] Before/After`` order one
hook only, with the same rule for cycles, on that hook only.
"""

from __future__ import annotations

import graphlib
from typing import Iterable, Mapping

from modules import plugins
from modules.extension_discovery import BUILTIN, PACKAGE, Extension, pick, why_absent

__all__ = ["resolve", "load_order", "hook_orders"]

_GROUP_TITLE = {BUILTIN: "built-in"}  # every other group is "user" in the notes
_GROUPS = (plugins.BUILTIN_GROUP, plugins.USER_GROUP)


def _components(keys: list[str], edges: list[tuple[str, str]]) -> dict[str, str]:
    """Each key's strongly connected component, named by its first member in ``keys`` order.

    graphlib reports one cycle at a time; merging each reported cycle into one node keeps every path, so when no
    cycle is left each merged node is exactly a component, whichever cycles were reported first.
    """
    rank = {k: i for i, k in enumerate(keys)}
    leader = {k: k for k in keys}
    while True:
        graph: dict[str, set[str]] = {leader[k]: set() for k in keys}
        for a, b in edges:
            if leader[a] != leader[b]:
                graph[leader[b]].add(leader[a])
        try:
            graphlib.TopologicalSorter(graph).prepare()
            return leader
        except graphlib.CycleError as e:
            cycle = set(e.args[1])
            first = min(cycle, key=rank.__getitem__)
            leader = {k: first if lead in cycle else lead for k, lead in leader.items()}


def resolve(keys: list[str], edges: Iterable[tuple[str, str]]
            ) -> tuple[list[str], list[tuple[list[str], list[tuple[str, str]]]]]:
    """Order ``keys`` (given in base order) so that every edge ``(a, b)`` puts ``a`` first; whatever is free to go
    next goes in base order.

    The rule for cycles: every edge between two members of one strongly connected component (each can reach the
    other through edges) is dropped, and only those; the rest still hold. Returns ``(order, cycles)``, each cycle
    ``(members, dropped edges)`` in base order.
    """
    rank = {k: i for i, k in enumerate(keys)}
    ordered_edges = sorted(set(edges), key=lambda e: (rank[e[0]], rank[e[1]]))
    leader = _components(keys, ordered_edges)
    members: dict[str, list[str]] = {}
    for k in keys:
        members.setdefault(leader[k], []).append(k)
    cycles = [(group, [(a, b) for a, b in ordered_edges if leader[a] == leader[b] == lead])
              for lead, group in members.items() if len(group) > 1]
    sorter = graphlib.TopologicalSorter({k: () for k in keys})
    for a, b in ordered_edges:
        if leader[a] != leader[b]:
            sorter.add(b, a)
    sorter.prepare()
    free: set[str] = set(sorter.get_ready())
    order = []
    while free:
        k = min(free, key=rank.__getitem__)
        free.remove(k)
        order.append(k)
        sorter.done(k)
        free.update(sorter.get_ready())
    return order, cycles


def _dropped(cycles, exts: Mapping[str, Extension], hook: str | None) -> list[plugins.DroppedCycle]:
    """One ``DroppedCycle`` per cycle, noted on every extension in it."""
    reports = []
    for keys, inside in cycles:
        dropped = plugins.DroppedCycle(hook, tuple(exts[k].name for k in keys),
                                       tuple((exts[a].name, exts[b].name) for a, b in inside))
        for key in keys:
            exts[key].note(dropped.message())
        reports.append(dropped)
    return reports


def _constraint_edges(ext: Extension, before: list[str], after: list[str], members: Mapping[str, Extension],
                      known: Mapping[str, Extension], what: str) -> set[tuple[str, str]]:
    """Edges for one extension's Before/After lists, with a note for each one that cannot apply."""
    edges = set()
    for kind, names in (("Before", before), ("After", after)):
        for entry in names:
            target = pick(entry, members)
            if target is None:
                other = pick(entry, known, lambda e: e.loaded or e.usable)
                if other is not None and other is not ext and other.host_group != ext.host_group:
                    ext_first = ext.host_group == plugins.BUILTIN_GROUP
                    if (kind == "Before") != ext_first:  # the group order already decides, the other way round
                        ext.note(f"{what}{kind} = {entry}: ignored; {_GROUP_TITLE.get(ext.group, 'user')} extensions "
                                 f"always run {'before' if ext_first else 'after'} "
                                 f"{_GROUP_TITLE.get(other.group, 'user')} ones")
                    continue
                ext.note(f"{what}{kind} = {entry}: ignored; {why_absent(entry, known)}")
                continue
            if target is ext:
                ext.note(f"{what}{kind} = {entry}: ignored; an extension cannot be ordered against itself")
                continue
            edges.add((ext.key, target.key) if kind == "Before" else (target.key, ext.key))
    return edges


def _order(members: list[Extension], known: Mapping[str, Extension], hook: str | None
           ) -> tuple[list[Extension], list[plugins.DroppedCycle]]:
    """``members`` (one host group, in base order) ordered by their ``[Extension]`` constraints (``hook`` None)
    or their ``[hooks/<hook>]`` ones."""
    exts = {e.key: e for e in members}
    edges: set[tuple[str, str]] = set()
    for ext in members:
        if hook is None:
            edges |= _constraint_edges(ext, ext.metadata.before, ext.metadata.after, exts, known, "")
            for req in ext.metadata.requires:  # a requirement in the same group loads first
                target = pick(req, exts)
                if target is not None and target is not ext:
                    edges.add((target.key, ext.key))
        elif hook in ext.metadata.hooks:
            c = ext.metadata.hooks[hook]
            edges |= _constraint_edges(ext, c.before, c.after, exts, known, f"[hooks/{hook}] ")
    keys, cycles = resolve([e.key for e in members], edges)
    return [exts[k] for k in keys], _dropped(cycles, exts, hook)


def load_order(candidates: list[Extension], known: Mapping[str, Extension]
               ) -> tuple[list[Extension], list[plugins.DroppedCycle]]:
    """The import (and registration) order: built-in, then user and package extensions, each group by name
    (folders before packages) and ``[Extension]`` constraints. ``known`` resolves names (``discovery.by_key``)."""
    order: list[Extension] = []
    dropped: list[plugins.DroppedCycle] = []
    for group in _GROUPS:
        members = sorted((e for e in candidates if e.host_group == group), key=lambda e: (e.group == PACKAGE, e.key))
        group_order, group_dropped = _order(members, known, None)
        order += group_order
        dropped += group_dropped
    return order, dropped


def hook_orders(loaded: list[Extension], known: Mapping[str, Extension], hooks: Iterable[str]
                ) -> tuple[dict[str, list[str]], list[plugins.DroppedCycle]]:
    """``[hooks/<name>]`` constraints of the ``loaded`` extensions (in load order) → ``{hook: plugin names in
    order}`` for each hook some extension constrains (of ``hooks``, the known ones; others are noted)."""
    known_hooks = set(hooks)
    constrained: set[str] = set()
    for ext in loaded:
        for hook in ext.metadata.hooks:
            if hook in known_hooks:
                constrained.add(hook)
            else:
                ext.note(f"metadata.ini: [hooks/{hook}] ignored; there is no hook named {hook!r}")
    orders: dict[str, list[str]] = {}
    dropped: list[plugins.DroppedCycle] = []
    for hook in sorted(constrained):
        names: list[str] = []
        for group in _GROUPS:
            group_order, group_dropped = _order([e for e in loaded if e.host_group == group], known, hook)
            names += [name for ext in group_order for name in ext.plugins]
            dropped += group_dropped
        orders[hook] = names
    return orders, dropped
