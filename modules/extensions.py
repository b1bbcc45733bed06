"""Extensions: import them and register them with the plugin host (and take them out again).

Finding extensions, ``metadata.ini`` and the rule for which are enabled live in ``modules.extension_discovery``
(standard library only, shared with ``launch.py``); their order in ``modules.extension_order``. ``load_all`` puts
the three together, in load order:

1. ``extensions-builtin/<folder>/`` — group ``"builtin"`` (plugin group ``plugins.BUILTIN_GROUP``);
2. ``<data-dir>/extensions/<folder>/`` — group ``"user"`` (``plugins.USER_GROUP``);
3. installed Python packages with an entry point in the group ``serena`` — group ``"package"``; they are ordered
   with the user extensions (``plugins.USER_GROUP``), after the folders, by entry-point name. The entry point
   names the module (or object) to register: ``my-ext = my_package.hooks``.

Names (the rules ``docs/extensions/writing.md`` explains):

* Each module an extension brings is registered with the host as one plugin. An extension with exactly one
  ``scripts/*.py`` (and every package extension) registers it under the extension's name; an extension with
  several registers ``<name>/<file stem>`` for each. These plugin names are what ``--list-hooks``, the hooks
  endpoint, hook-failure reports and ``host.hook_orders`` show.
* Script files are imported under ``serena_ext.<sanitised name>.<stem>`` (``serena_ext.my_ext.main``), so two
  extensions that both have ``scripts/main.py`` never clash; ``from . import helper`` inside ``scripts/`` works.
  While an extension's scripts are imported its folder is first on ``sys.path`` (as A1111), and ``sys.path``
  is put back afterwards.

Failure containment: nothing an extension does stops the others. Import errors, implementations of unknown hooks,
bad signatures and missing ``Requires`` are each reported once with the extension's name; an extension that
fails is unregistered completely (no half-registered modules), and the extensions that require it are blocked
(or unloaded) by the same ``Requires`` rule that ran before the import (``extension_discovery.check_requires``).
Stored settings changed at import are put back; after import an extension may change only the options it
registered (``_option_write_guard``, on ``shared.opts``).

Not implemented here (yet): ``preload.py`` (``preload(parser)`` before flags are parsed); ``install.py`` is run by
``launch.py``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
import threading
import traceback
import types
from dataclasses import dataclass, field
from typing import Any, Iterable

from modules import extension_order, plugins, shared
from modules.extension_discovery import PACKAGE, USER, Enablement, Extension, by_key, check_requires, find, \
    read_metadata
from modules.option_info import OptionError

log = logging.getLogger("serena.extensions")

__all__ = ["MODULE_PREFIX", "load_all", "load_configured", "load_folder", "unload", "register_extension_options",
           "extensions", "problems", "format_hook_order"]

MODULE_PREFIX = "serena_ext"
SETTINGS_AT_IMPORT = "extensions must not change settings at import; use on_ui_settings / options"


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


def _never_called(host: plugins.Host, name: str) -> list[tuple[str, str]]:
    """``(exit hook, enter hook)`` for each exit hook the plugin ``name`` implements but is never owed, since the
    module lacks the enter hook (``Host.describe_hooks``)."""
    return [(hook, view["reverse_of"]) for hook, view in host.describe_hooks().items()
            for row in view["order"] if row["name"] == name and not row["called"]]


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
            for exit_hook, enter_hook in _never_called(host, name):
                where = f"scripts/{stem}.py" if ext.group != PACKAGE else "its module"
                ext.note(f"{where} implements {exit_hook} without {enter_hook}: exit hooks run only for modules "
                         f"whose enter hook ran, so it is never called")
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
    found = find(builtin_dir, user_dir, Enablement.of(disabled, disable_all, disable_extra), entry_points)
    return _load_found(found, host if host is not None else plugins.host)


def _load_found(found: list[Extension], host: plugins.Host) -> list[Extension]:
    global _last
    known = by_key(found)
    order, dropped = extension_order.load_order([e for e in found if e.usable], known)

    # 1. Import and register, one extension at a time; one that fails blocks (or unloads) those requiring it.
    used_packages: set[str] = set()
    for ext in order:
        if not ext.usable:  # a requirement failed earlier in this loop
            continue
        package = f"{MODULE_PREFIX}.{_identifier(ext.name)}"
        n = 2
        while package in used_packages:
            package = f"{MODULE_PREFIX}.{_identifier(ext.name)}_{n}"
            n += 1
        used_packages.add(package)
        _load_one(ext, host, package)
        if not ext.loaded:
            for blocked in check_requires(found):
                if blocked.loaded:  # loaded before the requirement it needs (a built-in requiring a user one)
                    _unregister(host, blocked.plugins)
                    _forget_modules(blocked)
                    blocked.loaded = False

    # 2. Per-hook order from [hooks/<name>] sections.
    for hook in _last.hook_orders:
        host.hook_orders.pop(hook, None)
    loaded_exts = [e for e in order if e.loaded]
    orders, hook_dropped = extension_order.hook_orders(loaded_exts, known, plugins.hook_names(host.pm))
    host.hook_orders.update(orders)
    loaded_names = {e.name for e in loaded_exts}
    host.dropped = [d for d in dropped + hook_dropped if loaded_names.issuperset(d.members)]

    # 3. Report: loaded in load order, then the rest as discovered.
    for ext in found:
        if ext.disabled_reason:
            log.info("extension %r is disabled: %s", ext.name, ext.disabled_reason)
    result = loaded_exts + [e for e in found if not e.loaded]
    _last = _Record(extensions=result, problems=[], hook_orders=list(orders))
    for ext in result:  # each problem is logged once (failures were logged with their traceback already)
        for problem in ext.problems:
            if problem not in ext._logged:
                ext._logged.add(problem)
                log.warning("extension %r: %s", ext.name, problem)
    return result


def load_configured(*, host: plugins.Host | None = None, entry_points=True, cmd_opts=None, opts=None,
                    data_paths=None) -> list[Extension]:
    """Start-up's call: ``load_all`` with the folders, flags and settings Serena was started with
    (``Enablement.configured``, the rule ``launch.py`` uses too).

    Call it after ``opts.load()`` (``disabled_extensions`` and ``disable_all_extensions`` are stored settings),
    then ``register_extension_options()``.
    """
    cmd_opts = cmd_opts if cmd_opts is not None else shared.cmd_opts
    opts = opts if opts is not None else shared.opts
    data_paths = data_paths if data_paths is not None else shared.data_paths
    found = find(data_paths.extensions_builtin_dir, data_paths.extensions_dir,
                 Enablement.configured(cmd_opts, opts), entry_points)
    return _load_found(found, host if host is not None else plugins.host)


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


# ---------------------------------------------------------------------------------------------------------------
# The resolved order, for --list-hooks (rendered from ``Host.describe_hooks``, as the API and the UI are)
# ---------------------------------------------------------------------------------------------------------------

def format_hook_order(host: plugins.Host | None = None) -> str:
    """The text ``launch.py --list-hooks`` prints: ``host.describe_hooks()`` — every hook, its implementations
    in call order and the constraints dropped because they formed a cycle."""
    host = host if host is not None else plugins.host
    views = host.describe_hooks()
    stacks = "".join(f" {hook} runs in reverse of the enter order." for hook, view in views.items()
                     if view["reverse_of"])
    lines = ["Hook order: core first, then built-in, then user extensions (each in load order); tryfirst/trylast",
             f"move an implementation to the front/back.{stacks}", ""]
    for cycle in host.dropped:
        if cycle.hook is None:
            lines.append(f"Load order: dropped: {cycle.message()}")
    if lines[-1]:
        lines.append("")
    for hook, view in views.items():
        suffix = f"  (reverse of {view['reverse_of']})" if view["reverse_of"] else ""
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
                lines.append(f"   -  {r['name']}  [{', '.join(marks)}]  never called: no {view['reverse_of']} "
                             f"in that module")
        for cycle in view["dropped"]:
            lines.append(f"    dropped: {cycle.message()}")
    return "\n".join(lines) + "\n"
