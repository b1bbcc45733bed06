"""Extensions: find them, read their ``metadata.ini``, order them, import them and register them with the host.

Where extensions come from, in load order (``load_all``):

1. ``extensions-builtin/<folder>/`` — group ``"builtin"`` (plugin group ``plugins.BUILTIN_GROUP``);
2. ``<data-dir>/extensions/<folder>/`` — group ``"user"`` (``plugins.USER_GROUP``);
3. installed Python packages with an entry point in the group ``serena`` — group ``"package"``; they are ordered
   with the user extensions (``plugins.USER_GROUP``), after the folders, by entry-point name. The entry point
   names the module (or object) to register: ``my-ext = my_package.hooks``.

Names (the rules ``docs/extensions/writing.md`` explains):

* An extension's *name* is ``[Extension] Name`` from its ``metadata.ini``, else its folder name (an entry
  point's name for packages). Names are matched case-insensitively everywhere (``disabled_extensions``,
  ``Requires``, ``Before``, ``After``); the first extension found with a name wins, later ones are skipped and
  reported. A name in ``disabled_extensions`` matches the name or the folder name.
* Each module an extension brings is registered with the host as one plugin. An extension with exactly one
  ``scripts/*.py`` (and every package extension) registers it under the extension's name; an extension with
  several registers ``<name>/<file stem>`` for each. These plugin names are what ``--list-hooks``, the hooks
  endpoint, hook-failure reports and ``host.hook_orders`` show.
* Script files are imported under ``serena_ext.<sanitised name>.<stem>`` (``serena_ext.my_ext.main``), so two
  extensions that both have ``scripts/main.py`` never clash; ``from . import helper`` inside ``scripts/`` works.
  While an extension's scripts are imported its folder is first on ``sys.path`` (as A1111), and ``sys.path``
  is put back afterwards.

Order, within each group (built-in; user + package): by name, adjusted by ``Before``/``After`` (and ``Requires``,
which also means "after") — a topological sort that breaks ties by name. A constraint naming an extension that
is not there (not installed, disabled, or not loadable) is ignored with a note in the naming extension's
``problems``. Constraints that form a cycle are dropped — every constraint between two extensions of one
strongly connected component, and no other (``_resolve_order``) — reported on every extension in the cycle and
kept in ``host.dropped`` (``--list-hooks`` shows them). ``[hooks/<hook name>] Before/After`` constraints order
one hook only (``host.hook_orders``), with the same rule for cycles, on that hook only.

Failure containment: nothing an extension does stops the others. Import errors, implementations of unknown hooks,
bad signatures and missing ``Requires`` are each reported once with the extension's name; an extension that
fails is unregistered completely (no half-registered modules). Stored settings changed at import are put back;
after import an extension may change only the options it registered (``_option_write_guard``, on ``shared.opts``).

Not implemented here (yet): ``preload.py`` (``preload(parser)`` before flags are parsed); ``install.py`` is run by
``launch.py``.
"""

from __future__ import annotations

import contextlib
import graphlib
import heapq
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import sys
import threading
import traceback
import types
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from modules import plugins, shared
from modules.extension_metadata import HookConstraints, Metadata, read_metadata
from modules.options import OptionError

log = logging.getLogger("serena.extensions")

__all__ = [
    "Extension", "Metadata", "HookConstraints", "ENTRY_POINT_GROUP", "MODULE_PREFIX",
    "load_all", "load_configured", "load_folder", "loaded", "unload", "register_extension_options",
    "extensions", "problems", "format_hook_order", "read_metadata",
]

ENTRY_POINT_GROUP = "serena"
MODULE_PREFIX = "serena_ext"
BUILTIN, USER, PACKAGE = "builtin", "user", "package"
_HOST_GROUP = {BUILTIN: plugins.BUILTIN_GROUP, USER: plugins.USER_GROUP, PACKAGE: plugins.USER_GROUP}
_GROUP_TITLE = {BUILTIN: "built-in", USER: "user"}
SETTINGS_AT_IMPORT = "extensions must not change settings at import; use on_ui_settings / options"


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Extension:
    """One extension found on disk or as an entry point, loaded or not."""

    name: str
    path: str                     # the folder; for a package, the loaded module's file ("" until loaded)
    group: str                    # "builtin", "user" or "package"
    folder: str = ""              # folder name, or the entry point's name
    metadata: Metadata = field(default_factory=Metadata)
    enabled: bool = True          # False when disabled by settings or flags: its modules are never imported
    loaded: bool = False
    problems: list[str] = field(default_factory=list)
    plugins: list[str] = field(default_factory=list)   # plugin names registered with the host, in order
    modules: list[str] = field(default_factory=list)   # ``sys.modules`` names imported for it
    source: str = ""              # where it came from, in words
    traceback: str | None = field(default=None, repr=False)
    _logged: set = field(default_factory=set, repr=False, compare=False)  # problems already logged
    entry_point: Any = field(default=None, repr=False, compare=False)
    #: "disabled", "skipped" (duplicate name), "requires", "failed" or None; see ``status``
    reason: str | None = None
    #: why it is disabled, in words (flags or settings); ``None`` when enabled
    disabled_reason: str | None = None

    @property
    def key(self) -> str:
        return self.name.casefold()

    @property
    def host_group(self) -> str:
        return _HOST_GROUP[self.group]

    @property
    def status(self) -> str:
        """``loaded``, ``disabled``, ``skipped`` (a duplicate name), ``requires`` (a requirement is missing) or
        ``failed`` (import or registration failed)."""
        if self.loaded:
            return "loaded"
        return self.reason or ("disabled" if not self.enabled else "failed")

    def note(self, message: str) -> None:
        if message not in self.problems:
            self.problems.append(message)

    def as_dict(self) -> dict:
        """A JSON-ready description (for the API and the UI)."""
        return {
            "name": self.name, "folder": self.folder, "path": self.path, "group": self.group, "source": self.source,
            "enabled": self.enabled, "disabled_reason": self.disabled_reason, "loaded": self.loaded,
            "status": self.status, "problems": list(self.problems),
            "plugins": list(self.plugins),
            "metadata": {"name": self.metadata.name, "requires": list(self.metadata.requires),
                         "before": list(self.metadata.before), "after": list(self.metadata.after),
                         "hooks": {h: {"before": list(c.before), "after": list(c.after)}
                                   for h, c in self.metadata.hooks.items()}},
        }


@dataclass
class _Record:
    extensions: list[Extension] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)     # not tied to one extension
    hook_orders: list[str] = field(default_factory=list)  # hooks whose host.hook_orders entry this load set


_last = _Record()


def extensions() -> list[Extension]:
    """Every extension the last ``load_all`` found, in load order (loaded ones first by group), loaded or not."""
    return list(_last.extensions)


def problems() -> list[str]:
    """Every problem of the last load, as ``"<extension>: <problem>"`` lines (plus general ones)."""
    lines = list(_last.problems)
    for ext in _last.extensions:
        lines.extend(f"{ext.name}: {problem}" for problem in ext.problems)
    return lines


# ---------------------------------------------------------------------------------------------------------------
# Discovery
# ---------------------------------------------------------------------------------------------------------------

def _folders(directory: str | None) -> list[str]:
    if not directory or not os.path.isdir(directory):
        return []
    return sorted(entry for entry in os.listdir(directory)
                  if not entry.startswith((".", "__")) and os.path.isdir(os.path.join(directory, entry)))


def _entry_points(entry_points) -> list:
    if entry_points is True:
        try:
            return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        except Exception as e:  # a broken installed distribution must not stop start-up
            log.error("could not read entry points of group %r: %s", ENTRY_POINT_GROUP, e)
            return []
    if not entry_points:
        return []
    return list(entry_points)


def discover(builtin_dir: str | None, user_dir: str | None, entry_points=True) -> list[Extension]:
    """Find every extension, in discovery order; the first of two with the same name wins (the other is kept,
    marked ``skipped``, with a problem)."""
    found: list[Extension] = []
    for group, directory in ((BUILTIN, builtin_dir), (USER, user_dir)):
        for folder in _folders(directory):
            path = os.path.abspath(os.path.join(directory, folder))
            metadata, notes = read_metadata(path)
            ext = Extension(name=metadata.name or folder, path=path, group=group, folder=folder,
                            metadata=metadata, source=path)
            ext.problems.extend(notes)
            found.append(ext)
    eps = sorted(_entry_points(entry_points), key=lambda ep: (ep.name.casefold(), ep.value))
    for ep in eps:
        dist = getattr(ep, "dist", None)
        dist_text = f" ({dist.name} {dist.version})" if dist is not None else ""
        found.append(Extension(name=ep.name, path="", group=PACKAGE, folder=ep.name, entry_point=ep,
                               source=f"entry point {ep.name} = {ep.value}{dist_text}"))
    seen: dict[str, Extension] = {}
    for ext in found:
        first = seen.get(ext.key)
        if first is None:
            seen[ext.key] = ext
            continue
        ext.reason = "skipped"
        ext.note(f"another extension named {first.name!r} was found first ({first.source}); this one is skipped")
    return found


def _apply_enabled(found: list[Extension], disabled: Iterable[str] | None, disable_all: bool,
                   disable_extra: bool) -> None:
    names = {str(n).casefold() for n in (disabled or ())}
    for ext in found:
        why = None
        if disable_all:
            why = "all extensions are disabled (--disable-all-extensions, or disable_all_extensions = all)"
        elif disable_extra and ext.group != BUILTIN:
            why = "only built-in extensions are enabled (--disable-extra-extensions, or disable_all_extensions = extra)"
        elif ext.key in names or ext.folder.casefold() in names:
            why = "disabled in settings (disabled_extensions)"
        if why is not None:
            ext.enabled = False
            ext.reason = ext.reason or "disabled"
            ext.disabled_reason = why


# ---------------------------------------------------------------------------------------------------------------
# Requires and order
# ---------------------------------------------------------------------------------------------------------------

def _candidate(ext: Extension) -> bool:
    return ext.enabled and ext.reason is None


def _pick(alternatives: str, by_key: dict[str, Extension], usable) -> Extension | None:
    """``a|b``: the first alternative that exists and is usable."""
    for alt in alternatives.split("|"):
        ext = by_key.get(alt.casefold())
        if ext is not None and usable(ext):
            return ext
    return None


def _why_absent(alternatives: str, by_key: dict[str, Extension]) -> str:
    names = alternatives.split("|")
    reasons = []
    for alt in names:
        ext = by_key.get(alt.casefold())
        if ext is None:
            reasons.append(f"{alt!r} is not installed")
        elif not ext.enabled:
            reasons.append(f"{ext.name!r} is disabled")
        elif ext.reason == "requires":
            reasons.append(f"{ext.name!r} cannot load (its own requirements are missing)")
        elif ext.loaded is False and ext.reason == "failed":
            reasons.append(f"{ext.name!r} failed to load")
        else:
            reasons.append(f"{ext.name!r} is not loaded")
    return "; ".join(reasons)


def _check_requires(found: list[Extension], by_key: dict[str, Extension]) -> None:
    """Mark every extension whose ``Requires`` cannot be met (missing, disabled, or itself blocked)."""
    changed = True
    while changed:
        changed = False
        for ext in found:
            if not _candidate(ext):
                continue
            for req in ext.metadata.requires:
                if _pick(req, by_key, _candidate) is None:
                    ext.reason = "requires"
                    ext.note(f"not loaded: requires {req!r} ({_why_absent(req, by_key)})")
                    changed = True
                    break


def _cycles(keys: list[str], edges: list[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one member, each in ``keys`` order.

    graphlib reports one cycle at a time; contracting each reported cycle into one node keeps every path, so
    when no cycle is left each contracted node is exactly a component — whichever cycles were reported first.
    """
    leader = {k: k for k in keys}  # union-find; a component's leader is its first member in ``keys`` order
    rank = {k: i for i, k in enumerate(keys)}

    def find(k: str) -> str:
        while leader[k] != k:
            k = leader[k]
        return k

    while True:
        graph: dict[str, dict[str, None]] = {find(k): {} for k in keys}
        for a, b in edges:
            if find(a) != find(b):
                graph[find(b)][find(a)] = None
        try:
            graphlib.TopologicalSorter(graph).prepare()
            break
        except graphlib.CycleError as e:
            cycle = {find(k) for k in e.args[1]}
            first = min(cycle, key=rank.__getitem__)
            for k in cycle:
                leader[k] = first
    components: dict[str, list[str]] = {}
    for k in keys:
        components.setdefault(find(k), []).append(k)
    return [c for c in components.values() if len(c) > 1]


def _resolve_order(nodes: list[Extension], edges: set[tuple[str, str]]
                   ) -> tuple[list[Extension], list[tuple[list[str], list[tuple[str, str]]]]]:
    """Order ``nodes`` (already in base order) so every edge ``(a, b)`` has ``a`` first; ties keep base order.

    The rule for cycles: every edge between two members of one cycle (a strongly connected component: each can
    reach the other through edges) is dropped, and only those; the rest still hold. Returns ``(order,
    cycles)``, each cycle ``(members, dropped edges)`` in base order. Edge ends are ``Extension.key``s.
    """
    rank = {n.key: i for i, n in enumerate(nodes)}
    by_key = {n.key: n for n in nodes}
    ordered_edges = sorted(edges, key=lambda e: (rank[e[0]], rank[e[1]]))
    cycles = []
    component: dict[str, int] = {}
    for i, members in enumerate(_cycles(list(rank), ordered_edges)):
        component.update(dict.fromkeys(members, i))
        inside = [(a, b) for a, b in ordered_edges if component.get(a, -1) == component.get(b, -2) == i]
        cycles.append((members, inside))
    sorter = graphlib.TopologicalSorter({k: () for k in rank})
    for a, b in ordered_edges:
        if not (a in component and component[a] == component.get(b)):
            sorter.add(b, a)
    sorter.prepare()
    ready = [(rank[k], k) for k in sorter.get_ready()]
    heapq.heapify(ready)
    order = []
    while ready:
        _, k = heapq.heappop(ready)
        order.append(by_key[k])
        sorter.done(k)
        for nxt in sorter.get_ready():
            heapq.heappush(ready, (rank[nxt], nxt))
    return order, cycles


def _report_cycles(cycles, by_key: dict[str, Extension], hook: str | None) -> list[plugins.DroppedCycle]:
    """One ``DroppedCycle`` per cycle, noted on every extension in it."""
    reports = []
    for members, inside in cycles:
        dropped = plugins.DroppedCycle(hook, tuple(by_key[k].name for k in members),
                                       tuple((by_key[a].name, by_key[b].name) for a, b in inside))
        for key in members:
            by_key[key].note(dropped.message())
        reports.append(dropped)
    return reports


def _group_of(ext: Extension) -> str:
    return ext.host_group


def _constraint_edges(ext: Extension, before: list[str], after: list[str], members: dict[str, Extension],
                      by_key: dict[str, Extension], what: str) -> set[tuple[str, str]]:
    """Edges for one extension's Before/After lists, with a note for each one that cannot apply."""
    edges = set()
    for kind, names in (("Before", before), ("After", after)):
        for entry in names:
            target = _pick(entry, members, lambda e: True)
            if target is None:
                other = _pick(entry, by_key, lambda e: e.loaded or _candidate(e))
                if other is not None and other is not ext and _group_of(other) != _group_of(ext):
                    ext_first = _group_of(ext) == plugins.BUILTIN_GROUP
                    if (kind == "Before") != ext_first:  # the group order already decides, the other way round
                        ext.note(f"{what}{kind} = {entry}: ignored; {_GROUP_TITLE.get(ext.group, 'user')} extensions "
                                 f"always run {'before' if ext_first else 'after'} "
                                 f"{_GROUP_TITLE.get(other.group, 'user')} ones")
                    continue
                ext.note(f"{what}{kind} = {entry}: ignored; {_why_absent(entry, by_key)}")
                continue
            if target is ext:
                ext.note(f"{what}{kind} = {entry}: ignored; an extension cannot be ordered against itself")
                continue
            edges.add((ext.key, target.key) if kind == "Before" else (target.key, ext.key))
    return edges


def _order_group(members: list[Extension], by_key: dict[str, Extension], dropped: list) -> list[Extension]:
    """Name order (folders before packages), adjusted by Before/After/Requires; cycles go to ``dropped``."""
    base = sorted(members, key=lambda e: (e.group == PACKAGE, e.key))
    member_keys = {e.key: e for e in base}
    edges: set[tuple[str, str]] = set()
    for ext in base:
        edges |= _constraint_edges(ext, ext.metadata.before, ext.metadata.after, member_keys, by_key, "")
        for req in ext.metadata.requires:  # a requirement in the same group loads first
            target = _pick(req, member_keys, lambda e: True)
            if target is not None and target is not ext:
                edges.add((target.key, ext.key))
    order, cycles = _resolve_order(base, edges)
    dropped.extend(_report_cycles(cycles, member_keys, None))
    return order


# ---------------------------------------------------------------------------------------------------------------
# Import and registration
# ---------------------------------------------------------------------------------------------------------------

def _identifier(text: str) -> str:
    ident = re.sub(r"\W", "_", text.casefold()) or "_"
    return f"_{ident}" if ident[0].isdigit() else ident


def _package_module(name: str, path: list[str]) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = path  # type: ignore[attr-defined]
    module.__package__ = name
    return module


def _purge_modules(prefix: str) -> None:
    for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
        del sys.modules[name]


def _script_files(ext: Extension) -> list[str]:
    scripts = os.path.join(ext.path, "scripts")
    if not os.path.isdir(scripts):
        return []
    return sorted(os.path.join(scripts, f) for f in os.listdir(scripts)
                  if f.endswith(".py") and not f.startswith(".") and os.path.isfile(os.path.join(scripts, f)))


def _import_folder(ext: Extension, package: str) -> list[tuple[str, Any]]:
    """Import ``scripts/*.py`` in name order under ``<package>.<stem>``; returns ``[(stem, module)]``."""
    files = _script_files(ext)
    if not files:
        return []
    _purge_modules(package)
    if MODULE_PREFIX not in sys.modules:
        sys.modules[MODULE_PREFIX] = _package_module(MODULE_PREFIX, [])
    sys.modules[package] = _package_module(package, [os.path.join(ext.path, "scripts")])
    ext.modules.append(package)
    result = []
    for filename in files:
        stem = os.path.splitext(os.path.basename(filename))[0]
        module_name = f"{package}.{_identifier(stem)}"
        module = sys.modules.get(module_name)  # already imported by a sibling (``from . import helper``)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, filename)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot import {filename}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            ext.modules.append(module_name)
            try:
                spec.loader.exec_module(module)
            except (Exception, SystemExit) as e:
                e.add_note(f"while importing scripts/{os.path.basename(filename)} of extension {ext.name!r}")
                raise _ScriptFailed(f"scripts/{os.path.basename(filename)}") from e
        elif module_name not in ext.modules:
            ext.modules.append(module_name)
        result.append((stem, module))
    return result


class _ScriptFailed(Exception):
    """Wraps the exception of one script file, to say which file failed."""


def _plugin_names(ext: Extension, modules: list[tuple[str, Any]]) -> list[str]:
    if len(modules) == 1:
        return [ext.name]
    return [f"{ext.name}/{stem}" for stem, _ in modules]


def _exit_without_enter(plugin: Any) -> bool:
    impl = lambda name: getattr(getattr(plugin, name, None), f"{plugins.hookspecs.PROJECT}_impl", None)  # noqa: E731
    return impl("on_opts_override_exit") is not None and impl("on_opts_override_enter") is None


def _fail(ext: Extension, message: str, exc: BaseException | None = None) -> None:
    ext.loaded = False
    ext.reason = "failed"
    ext.note(message)
    ext._logged.add(message)
    if exc is not None:
        ext.traceback = "".join(traceback.format_exception(exc))
        log.error("extension %r: %s\n%s", ext.name, message, ext.traceback)
    else:
        log.error("extension %r: %s", ext.name, message)


def _load_one(ext: Extension, host: plugins.Host, package: str) -> None:
    opts = shared.opts
    opts.write_guard = _option_write_guard
    stored_before = opts.stored()
    saved_path = list(sys.path)
    registered: list[str] = []
    root = (getattr(ext.entry_point, "module", "") or "").split(".")[0] if ext.group == PACKAGE else package
    if root and root != "modules":  # a package rooted in Serena's own modules cannot be told apart from Serena
        _module_roots[root] = ext
    _importing[ext.key] = threading.get_ident()
    try:
        if ext.group == PACKAGE:
            obj = ext.entry_point.load()
            module = obj if isinstance(obj, types.ModuleType) else sys.modules.get(getattr(obj, "__module__", ""))
            module_file = getattr(module, "__file__", None)
            ext.path = os.path.abspath(module_file) if module_file else ""
            modules = [(ext.name, obj)]
        else:
            sys.path.insert(0, ext.path)
            modules = _import_folder(ext, package)
        names = _plugin_names(ext, modules)
        for name, (stem, module) in zip(names, modules):
            host.register(module, name, ext.host_group)
            registered.append(name)
            if _exit_without_enter(module):
                where = f"scripts/{stem}.py" if ext.group != PACKAGE else "its module"
                ext.note(f"{where} implements on_opts_override_exit without on_opts_override_enter: exit hooks "
                         f"run only for modules whose enter hook ran, so it is never called")
        ext.plugins = registered
        ext.loaded = True
    except plugins.PluginRegistrationError as e:
        _unregister(host, registered)
        _forget_modules(ext)
        _fail(ext, f"not loaded: {e}")
    except _ScriptFailed as e:
        _unregister(host, registered)
        _forget_modules(ext)
        cause = e.__cause__
        _fail(ext, f"not loaded: importing {e} raised {type(cause).__name__}: {cause}", cause)
    except (Exception, SystemExit) as e:
        _unregister(host, registered)
        _forget_modules(ext)
        _fail(ext, f"not loaded: {type(e).__name__}: {e}", e)
    finally:
        _importing.pop(ext.key, None)
        sys.path[:] = saved_path
        if opts.stored() != stored_before:
            opts.restore_stored(stored_before)
            ext.note(SETTINGS_AT_IMPORT)
            ext._logged.add(SETTINGS_AT_IMPORT)
            log.error("extension %r changed settings at import; they were put back (%s)", ext.name,
                      SETTINGS_AT_IMPORT)


# ---------------------------------------------------------------------------------------------------------------
# Options: an extension changes only the options it registered
# ---------------------------------------------------------------------------------------------------------------

_module_roots: dict[str, Extension] = {}  # "serena_ext.<pkg>" (folders) or a package's top module -> extension
_option_owners: dict[str, str] = {}       # option key -> ``Extension.key`` of the extension that registered it
# Extensions being imported -> the importing thread. Only that thread's writes are let through (and put back
# afterwards): a thread the extension starts could finish a write after the put-back, and it would stay.
_importing: dict[str, int] = {}


def _writing_extension() -> Extension | None:
    """The extension whose code called the options store: the first caller outside ``modules.options``.

    Only the direct caller counts: Serena code an extension calls (which may store a setting on purpose, e.g.
    a checkpoint switch) writes as Serena.
    """
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") in ("modules.options", __name__):
        frame = frame.f_back
    parts = (frame.f_globals.get("__name__") or "").split(".") if frame is not None else [""]
    return _module_roots.get(".".join(parts[:2])) or _module_roots.get(parts[0])


def _option_write_guard(opts, key: str, action: str) -> None:
    """``Options.write_guard``: an extension registers new options and changes those; anything else is refused
    (``OptionError``) and noted on the extension. Writes at import are let through and put back after it."""
    ext = _writing_extension()
    if ext is None:
        return
    mine = _option_owners.get(key) == ext.key
    if action == "register":
        if mine or key not in opts.data_labels:
            _option_owners[key] = ext.key
            return
        message = (f"extension {ext.name!r} may not register option {key!r}: Serena or another extension "
                   f"registered it; refused")
    elif (mine and key in opts.data_labels) or _importing.get(ext.key) == threading.get_ident():
        return
    else:
        message = (f"extension {ext.name!r} may not change option {key!r}: extensions change only the options "
                   f"they registered; refused")
    ext.note(message)
    log.error("%s", message)
    raise OptionError(key, message)


def _unregister(host: plugins.Host, names: Iterable[str]) -> None:
    for name in names:
        host.unregister(name)


def _forget_modules(ext: Extension) -> None:
    for root in [r for r, owner in _module_roots.items() if owner is ext]:
        del _module_roots[root]
    for name in ext.modules:
        if name.startswith(MODULE_PREFIX + "."):
            sys.modules.pop(name, None)
    ext.modules = []
    ext.plugins = []


# ---------------------------------------------------------------------------------------------------------------
# Per-hook order
# ---------------------------------------------------------------------------------------------------------------

def _apply_hook_orders(loaded: list[Extension], by_key: dict[str, Extension], host: plugins.Host,
                       dropped: list) -> list[str]:
    """``[hooks/<name>]`` constraints → ``host.hook_orders[name]`` (every plugin of this load, in order);
    the cycles go to ``dropped``."""
    known = set(plugins.hook_names(host.pm))
    hooks: dict[str, list[Extension]] = {}
    for ext in loaded:
        for hook in ext.metadata.hooks:
            if hook not in known:
                ext.note(f"metadata.ini: [hooks/{hook}] ignored; there is no hook named {hook!r}")
                continue
            hooks.setdefault(hook, []).append(ext)
    set_hooks = []
    for hook in sorted(hooks):
        order: list[Extension] = []
        for group in (plugins.BUILTIN_GROUP, plugins.USER_GROUP):
            members = [e for e in loaded if e.host_group == group]
            member_keys = {e.key: e for e in members}
            edges: set[tuple[str, str]] = set()
            for ext in members:
                c = ext.metadata.hooks.get(hook)
                if c is not None:
                    edges |= _constraint_edges(ext, c.before, c.after, member_keys, by_key, f"[hooks/{hook}] ")
            group_order, cycles = _resolve_order(members, edges)
            dropped.extend(_report_cycles(cycles, member_keys, hook))
            order.extend(group_order)
        host.hook_orders[hook] = [name for ext in order for name in ext.plugins]
        set_hooks.append(hook)
    return set_hooks


# ---------------------------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------------------------

def load_all(*, builtin_dir: str | None, user_dir: str | None, disabled: Iterable[str] | None = (),
             disable_all: bool = False, disable_extra: bool = False, host: plugins.Host | None = None,
             entry_points=True) -> list[Extension]:
    """Discover, order, import and register every enabled extension; never raises for a bad extension.

    Args:
        builtin_dir (`str`): ``extensions-builtin/``.
        user_dir (`str`): ``<data-dir>/extensions/``; may be missing.
        disabled (`Iterable[str]`, *optional*): names (or folder names) not to load — ``opts.disabled_extensions``.
        disable_all (`bool`): load nothing (``--disable-all-extensions``, or the option set to ``"all"``).
        disable_extra (`bool`): load only built-in extensions (``--disable-extra-extensions`` / ``"extra"``).
        host (`plugins.Host`, *optional*, defaults to `plugins.host`): where modules are registered.
        entry_points (*optional*, defaults to `True`): ``True`` reads installed distributions' ``serena`` entry
            points, ``False`` none, or an iterable of ``importlib.metadata.EntryPoint`` to use instead.

    Returns every extension found, loaded or not, in the order: loaded built-in (load order), loaded user and
    package (load order), then the rest in discovery order. The same record backs ``extensions()`` and
    ``problems()``.
    """
    global _last
    host = host if host is not None else plugins.host
    found = discover(builtin_dir, user_dir, entry_points)
    _apply_enabled(found, disabled, disable_all, disable_extra)
    by_key = {e.key: e for e in found if e.reason != "skipped"}
    _check_requires(found, by_key)
    candidates = [e for e in found if _candidate(e)]
    dropped: list[plugins.DroppedCycle] = []
    order = (_order_group([e for e in candidates if e.host_group == plugins.BUILTIN_GROUP], by_key, dropped)
             + _order_group([e for e in candidates if e.host_group == plugins.USER_GROUP], by_key, dropped))

    # 1. Import and register, one extension at a time; a requirement that failed blocks its dependants.
    used_packages: set[str] = set()
    attempted: set[str] = set()
    in_order = {e.key for e in order}
    for ext in order:
        # settled: every alternative that exists was already attempted and none loaded (others wait for step 2)
        blocked = [req for req in ext.metadata.requires
                   if _pick(req, by_key, lambda e: e.loaded) is None
                   and all(alt.casefold() in attempted for alt in req.split("|") if alt.casefold() in in_order)]
        attempted.add(ext.key)
        if blocked:
            ext.reason = "requires"
            ext.note(f"not loaded: requires {blocked[0]!r} ({_why_absent(blocked[0], by_key)})")
            continue
        package = f"{MODULE_PREFIX}.{_identifier(ext.name)}"
        n = 2
        while package in used_packages:
            package = f"{MODULE_PREFIX}.{_identifier(ext.name)}_{n}"
            n += 1
        used_packages.add(package)
        _load_one(ext, host, package)

    # 2. Requirements that failed after their dependant loaded (a built-in requiring a user extension).
    changed = True
    while changed:
        changed = False
        for ext in order:
            if not ext.loaded:
                continue
            for req in ext.metadata.requires:
                if _pick(req, by_key, lambda e: e.loaded) is None:
                    _unregister(host, ext.plugins)
                    _forget_modules(ext)
                    ext.loaded, ext.reason = False, "requires"
                    ext.note(f"not loaded: requires {req!r} ({_why_absent(req, by_key)})")
                    changed = True
                    break

    # 3. Per-hook order from [hooks/<name>] sections.
    for hook in _last.hook_orders:
        host.hook_orders.pop(hook, None)
    loaded_exts = [e for e in order if e.loaded]
    set_hooks = _apply_hook_orders(loaded_exts, by_key, host, dropped)
    loaded_names = {e.name for e in loaded_exts}
    host.dropped = [d for d in dropped if loaded_names.issuperset(d.members)]

    # 4. Report: loaded in load order, then the rest as discovered.
    for ext in found:
        if ext.disabled_reason:
            log.info("extension %r is disabled: %s", ext.name, ext.disabled_reason)
    result = loaded_exts + [e for e in found if not e.loaded]
    _last = _Record(extensions=result, problems=[], hook_orders=set_hooks)
    for ext in result:  # each problem is logged once (failures were logged with their traceback already)
        for problem in ext.problems:
            if problem not in ext._logged:
                ext._logged.add(problem)
                log.warning("extension %r: %s", ext.name, problem)
    return result


def load_configured(*, host: plugins.Host | None = None, entry_points=True, cmd_opts=None, opts=None,
                    data_paths=None) -> list[Extension]:
    """Start-up's call: ``load_all`` with the folders, flags and settings Serena was started with.

    Call it after ``opts.load()`` (``disabled_extensions`` and ``disable_all_extensions`` are stored settings),
    then ``register_extension_options()``.
    """
    cmd_opts = cmd_opts if cmd_opts is not None else shared.cmd_opts
    opts = opts if opts is not None else shared.opts
    data_paths = data_paths if data_paths is not None else shared.data_paths
    mode = opts.get("disable_all_extensions", "none")
    return load_all(builtin_dir=data_paths.extensions_builtin_dir, user_dir=data_paths.extensions_dir,
                    disabled=list(opts.get("disabled_extensions", []) or []),
                    disable_all=bool(getattr(cmd_opts, "disable_all_extensions", False)) or mode == "all",
                    disable_extra=bool(getattr(cmd_opts, "disable_extra_extensions", False)) or mode == "extra",
                    host=host, entry_points=entry_points)


def _extension_of_plugin(name: str) -> Extension | None:
    for ext in _last.extensions:
        if name in ext.plugins:
            return ext
    return None


def register_extension_options(host: plugins.Host | None = None, *, only: Iterable[str] | None = None) -> list[str]:
    """Fire ``on_ui_settings`` (extensions register their options). Call once at start-up, after ``load_all``.

    ``only`` limits it to these plugin names. A failing implementation is reported on its extension (and in
    ``problems()``); in strict mode the first failure raises ``plugins.HookError``. Returns the failure messages.
    """
    host = host if host is not None else plugins.host
    impls = host.impls("on_ui_settings")
    if only is not None:
        wanted = set(only)
        impls = [i for i in impls if host.plugin_name(i.plugin) in wanted]
    failures: list[plugins.HookFailure] = []
    try:
        host.call_each("on_ui_settings", {}, impls=impls, failures=failures)
    finally:
        for failure in failures:
            ext = _extension_of_plugin(failure.plugin)
            if ext is not None:
                ext.note(f"on_ui_settings failed: {type(failure.exception).__name__}: {failure.exception}")
            else:
                _last.problems.append(failure.message())
    return [f.message() for f in failures]


def unload(exts: Iterable[Extension], host: plugins.Host | None = None) -> None:
    """Unregister these extensions' plugins and forget their modules (tests; a future reload)."""
    host = host if host is not None else plugins.host
    exts = list(exts)
    for ext in exts:
        _unregister(host, ext.plugins)
        _forget_modules(ext)
        ext.loaded = False
    for hook, names in list(host.hook_orders.items()):
        remaining = [n for n in names if host.is_registered(n)]
        if remaining:
            host.hook_orders[hook] = remaining
        else:
            del host.hook_orders[hook]
    gone = {ext.name for ext in exts}
    host.dropped = [d for d in host.dropped if gone.isdisjoint(d.members)]


def load_folder(path: str, *, host: plugins.Host | None = None, group: str = USER) -> Extension:
    """Load one extension folder by itself (its ``Requires``/``Before``/``After`` are not applied).

    The global record (``extensions()``/``problems()``) is not changed. Check ``.loaded`` and ``.problems``.
    """
    host = host if host is not None else plugins.host
    path = os.path.abspath(path)
    metadata, notes = read_metadata(path)
    ext = Extension(name=metadata.name or os.path.basename(path), path=path, group=group,
                    folder=os.path.basename(path), metadata=metadata, source=path, problems=list(notes))
    _load_one(ext, host, f"{MODULE_PREFIX}.{_identifier(ext.name)}")
    return ext


@contextlib.contextmanager
def loaded(path: str, *, host: plugins.Host | None = None, options: bool = True) -> Iterator[Extension]:
    """Register one extension folder for the duration of a block (a test), then remove every trace of it.

    Fires its ``on_ui_settings`` when ``options`` is true; options it registers are forgotten afterwards.
    Raises ``RuntimeError`` with the problems when it does not load.
    """
    host = host if host is not None else plugins.host
    opts = shared.opts
    labels, aliases = dict(opts.data_labels), dict(opts._aliases)
    ext = load_folder(path, host=host)
    if not ext.loaded:
        raise RuntimeError(f"extension {ext.name!r} did not load: " + "; ".join(ext.problems))
    try:
        if options:
            register_extension_options(host, only=ext.plugins)
        yield ext
    finally:
        unload([ext], host)
        opts.data_labels = labels
        opts._aliases = aliases


# ---------------------------------------------------------------------------------------------------------------
# The resolved order, for --list-hooks and the API
# ---------------------------------------------------------------------------------------------------------------

def format_hook_order(host: plugins.Host | None = None) -> str:
    """The text ``launch.py --list-hooks`` prints: ``host.describe_hooks()`` — every hook, its implementations
    in call order and the constraints dropped because they formed a cycle."""
    host = host if host is not None else plugins.host
    lines = ["Hook order: core first, then built-in, then user extensions (each in load order); tryfirst/trylast",
             "move an implementation to the front/back. on_opts_override_exit runs in reverse of the enter order.",
             ""]
    for cycle in host.dropped:
        if cycle.hook is None:
            lines.append(f"Load order: dropped: {cycle.message()}")
    if lines[-1]:
        lines.append("")
    for hook, view in host.describe_hooks().items():
        suffix = "  (reverse of on_opts_override_enter)" if hook == "on_opts_override_exit" else ""
        if hook in host.hook_orders:
            suffix += "  (ordered by metadata.ini [hooks/%s])" % hook
        lines.append(f"{hook}{suffix}")
        if not view["order"]:
            lines.append("    (no implementations)")
        number = 0
        for r in view["order"]:
            marks = [r["group"]] + [m for m in ("tryfirst", "trylast") if r[m]]
            if r["called"]:
                number += 1
                lines.append(f"  {number:>2}. {r['name']}  [{', '.join(marks)}]")
            else:
                lines.append(f"   -  {r['name']}  [{', '.join(marks)}]  never called: no on_opts_override_enter "
                             f"in that module")
        for cycle in view["dropped"]:
            lines.append(f"    dropped: {cycle.message()}")
    return "\n".join(lines) + "\n"
