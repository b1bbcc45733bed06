"""The one plugin manager, the order Serena calls implementations in, and the guarded dispatch.

pluggy calls implementations last-registered-first and stops at the first exception. Serena needs the opposite
on both counts: load order (core, built-in, user) so extension authors can predict it, and every implementation
called even when one fails (exit hooks undo state). So the host resolves the order in ``resolved_order`` and
calls implementations one at a time through ``call_each``; each call still goes through pluggy's hook executor,
so argument pruning and ``pm.add_hookcall_monitoring`` tracing keep working.
"""

from __future__ import annotations

import logging
import os
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterable

import pluggy

from modules import hookspecs

log = logging.getLogger("serena.plugins")

CORE_GROUP, BUILTIN_GROUP, USER_GROUP = "core", "builtin", "user"
ENTER_HOOK, EXIT_HOOK = "on_opts_override_enter", "on_opts_override_exit"


class PluginRegistrationError(ValueError):
    """An extension module could not be registered (unknown hook, bad signature, unsupported wrapper)."""


@dataclass
class HookFailure:
    """One implementation that raised: which hook, which extension, the exception and its traceback."""

    hook: str
    plugin: str
    exception: BaseException
    traceback: str = ""

    def message(self) -> str:
        detail = f": {self.exception}" if str(self.exception) else ""  # a bare KeyboardInterrupt has no text
        return f"extension {self.plugin!r} failed in {self.hook}: {type(self.exception).__name__}{detail}"


@dataclass(frozen=True)
class DroppedCycle:
    """Before/After constraints that formed a cycle and were dropped; every other constraint still holds.

    ``hook`` is the hook of a ``[hooks/<hook>]`` section, or ``None`` for ``[Extension]`` (load order, so every
    hook). ``members`` are the extension names in the cycle (load order); ``constraints`` the dropped
    ``(first, second)`` pairs, each meaning "first before second".
    """

    hook: str | None
    members: tuple[str, ...]
    constraints: tuple[tuple[str, str], ...]

    def message(self) -> str:
        section = f"[hooks/{self.hook}] Before/After" if self.hook else "Before/After/Requires"
        dropped = "; ".join(f"{a} before {b}" for a, b in self.constraints)
        return (f"{section} form a cycle between {', '.join(repr(m) for m in self.members)} ({dropped}): "
                f"these constraints are dropped and {'load' if self.hook else 'name'} order decides between them; "
                f"every other constraint "
                f"{'on ' + self.hook + ' ' if self.hook else ''}still holds")


class HookError(RuntimeError):
    """Raised in strict mode for the first failing implementation (its exception is ``__cause__``)."""

    def __init__(self, failure: HookFailure):
        super().__init__(failure.message())
        self.failure = failure
        self.plugin = failure.plugin
        self.hook = failure.hook


@dataclass
class _Registration:
    name: str
    group: str
    index: int
    plugin: Any = field(repr=False)


def create_plugin_manager() -> pluggy.PluginManager:
    """A fresh manager with Serena's hook specs (tests build their own with this)."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


class Host:
    """Registration bookkeeping and dispatch over one ``PluginManager``."""

    def __init__(self, manager: pluggy.PluginManager | None = None, *, strict: bool = False):
        self.pm = manager or create_plugin_manager()
        self.strict = strict
        self._registrations: dict[str, _Registration] = {}
        self._counter = 0
        # hook name -> explicit plugin order from metadata.ini [hooks/<name>] constraints
        self.hook_orders: dict[str, list[str]] = {}
        # constraints the last extension load dropped because they formed a cycle (shown by ``describe_hooks``)
        self.dropped: list[DroppedCycle] = []
        # Resolved order per hook, recomputed after any registration change (the hot path reads it per call).
        self._order_cache: dict[str, tuple] = {}
        self._generation = 0

    # -- registration ----------------------------------------------------------------------------------------
    def register(self, plugin: Any, name: str, group: str = USER_GROUP) -> None:
        """Register ``plugin`` (a module or object with ``@hookimpl`` functions) under a stable ``name``.

        Registration order is load order. Raises ``PluginRegistrationError`` (and registers nothing) for an
        implementation of an unknown hook, one whose arguments the hook does not have, or a wrapper.
        """
        if name in self._registrations:
            raise PluginRegistrationError(f"an extension named {name!r} is already registered")
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as e:
            raise PluginRegistrationError(f"{name}: {e}") from e
        except ValueError as e:
            raise PluginRegistrationError(f"{name}: {e}") from e
        problems = []
        for caller in self.pm.get_hookcallers(plugin) or []:
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                if not caller.has_spec():
                    problems.append(f"{impl.function.__name__}: no hook named {caller.name!r}")
                elif impl.wrapper or impl.hookwrapper:
                    problems.append(f"{caller.name}: wrappers are not supported; use tryfirst/trylast")
        if problems:
            self.pm.unregister(plugin)
            raise PluginRegistrationError(f"{name}: " + "; ".join(problems))
        self._registrations[name] = _Registration(name, group, self._counter, plugin)
        self._counter += 1
        self._generation += 1

    def unregister(self, name: str) -> None:
        reg = self._registrations.pop(name, None)
        if reg is not None:
            self.pm.unregister(reg.plugin)
            self._generation += 1

    def is_registered(self, name: str) -> bool:
        return name in self._registrations

    def registered(self) -> list[tuple[str, str]]:
        """``(name, group)`` in load order."""
        return [(r.name, r.group) for r in sorted(self._registrations.values(), key=lambda r: r.index)]

    # -- order -----------------------------------------------------------------------------------------------
    def _impls_in_order(self, hook_name: str) -> list:
        caller = getattr(self.pm.hook, hook_name)
        explicit_names = tuple(self.hook_orders.get(hook_name, ()))
        # The implementation count catches plugins registered on ``pm`` directly, bypassing the host.
        cache_key = (self._generation, explicit_names, len(caller.get_hookimpls()))
        cached = self._order_cache.get(hook_name)
        if cached is not None and cached[0] == cache_key:
            return cached[1]
        by_plugin = {id(r.plugin): r for r in self._registrations.values()}
        explicit = {n: i for i, n in enumerate(explicit_names)}
        group_ranks = {CORE_GROUP: 0, BUILTIN_GROUP: 1, USER_GROUP: 2}

        def key(impl):
            reg = by_plugin.get(id(impl.plugin))
            band = 0 if impl.tryfirst else 2 if impl.trylast else 1
            if reg is None:  # registered on pm directly, bypassing the host: after everything else
                return band, 3, (10**9, 10**9)
            return band, group_ranks.get(reg.group, 2), (explicit.get(reg.name, 10**9), reg.index)

        ordered = sorted((i for i in caller.get_hookimpls() if not (i.wrapper or i.hookwrapper)), key=key)
        self._order_cache[hook_name] = (cache_key, ordered)
        return ordered

    def describe_hooks(self) -> dict[str, dict]:
        """The one description of hook order that ``--list-hooks``, the API and the UI show.

        ``{hook: {"order": [row, ...], "dropped": [DroppedCycle, ...]}}`` for every hook spec, rows in call
        order: ``{"name", "group", "tryfirst", "trylast", "called"}``. ``on_opts_override_exit`` is called as a
        stack, in exactly the reverse of the enter order and only for modules whose enter hook ran; an exit
        implementation in a module without an enter implementation is listed last with ``called: False``.
        ``dropped`` holds the ``[hooks/<hook>]`` cycles of that hook (``self.dropped`` also has the load-order
        ones, ``hook=None``).
        """
        return {name: {"order": self._rows(name), "dropped": [d for d in self.dropped if d.hook == name]}
                for name in hook_names(self.pm)}

    def _rows(self, hook_name: str) -> list[dict]:
        groups = {r.name: r.group for r in self._registrations.values()}

        def row(impl, called=True) -> dict:
            name = self.plugin_name(impl.plugin)
            return {"name": name, "group": groups.get(name, "?"), "tryfirst": bool(impl.tryfirst),
                    "trylast": bool(impl.trylast), "called": called}

        impls = self._impls_in_order(hook_name)
        if hook_name != EXIT_HOOK:
            return [row(i) for i in impls]
        with_exit = {id(i.plugin): i for i in impls}
        entered = [with_exit[id(i.plugin)] for i in reversed(self._impls_in_order(ENTER_HOOK))
                   if id(i.plugin) in with_exit]
        called = {id(i) for i in entered}
        never = [i for i in impls if id(i) not in called]
        return [row(i) for i in entered] + [row(i, called=False) for i in never]

    def resolved_order(self, hook_name: str) -> list[str]:
        """The extension names whose implementations of ``hook_name`` run, in call order (``describe_hooks``)."""
        return [r["name"] for r in self._rows(hook_name) if r["called"]]

    def hook_order(self) -> dict[str, list[str]]:
        """``{hook: [extension, ...]}`` for every hook spec, in call order (``describe_hooks``, names only)."""
        return {name: self.resolved_order(name) for name in hook_names(self.pm)}

    def plugin_name(self, plugin) -> str:
        return self.pm.get_name(plugin) or repr(plugin)

    # -- dispatch --------------------------------------------------------------------------------------------
    def impls(self, hook_name: str) -> list:
        """The implementations of ``hook_name`` in call order; pass a slice of them back to ``call_each``."""
        return self._impls_in_order(hook_name)

    def call_each(self, hook_name: str, kwargs: dict, *, impls: Iterable | None = None,
                  failures: list | None = None, on_called=None, run_all: bool = False) -> list:
        """Call each implementation of ``hook_name`` once, in order, each guarded.

        ``impls`` narrows (and orders) what is called, e.g. the reverse of those entered. A failing
        implementation is logged with its extension's name and appended to ``failures``; the rest still run.
        In strict mode the first failure raises ``HookError`` — at once, or with ``run_all`` (owed exit hooks)
        only after every implementation ran. ``on_called(impl)`` runs before each call, so the caller knows
        what was entered even if it raised. ``KeyboardInterrupt`` and ``SystemExit`` raised by an implementation
        are failures like any other (an extension's ``sys.exit()`` must not take down a request or skip exit
        hooks). Returns the non-``None`` results.
        """
        results = []
        first_error: HookError | None = None
        for impl in (self._impls_in_order(hook_name) if impls is None else impls):
            if on_called is not None:
                on_called(impl)
            try:
                res = self.pm._hookexec(hook_name, [impl], kwargs, False)
            except (Exception, KeyboardInterrupt, SystemExit) as e:
                failure = HookFailure(hook_name, self.plugin_name(impl.plugin), e, traceback.format_exc())
                log.error("%s\n%s", failure.message(), failure.traceback)
                if failures is not None:
                    failures.append(failure)
                if self.strict:
                    error = HookError(failure)
                    error.__cause__ = e
                    if not run_all:
                        raise error
                    first_error = first_error or error
                continue
            results.extend(r for r in res if r is not None)
        if first_error is not None:
            raise first_error
        return results

    def call_reporting(self, hook_name: str, warnings: list, /, **kwargs) -> list:
        """``call``, with each contained failure also added to ``warnings`` (a generation's) as a message."""
        failures: list = []
        try:
            return self.call_each(hook_name, kwargs, failures=failures)
        finally:
            warnings.extend(f.message() for f in failures)

    def call(self, hook_name: str, **kwargs) -> list:
        """Fire a hook with per-implementation guarding (see ``call_each``); returns non-``None`` results."""
        return self.call_each(hook_name, kwargs)


def hook_names(manager: pluggy.PluginManager) -> list[str]:
    """Every hook spec name, in the order ``hookspecs.py`` declares them."""
    declared = [n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, f"{hookspecs.PROJECT}_spec")]
    return [n for n in declared if hasattr(manager.hook, n)]


host = Host(strict=os.environ.get("SERENA_STRICT_HOOKS") == "1")
pm = host.pm


def register_core_plugins() -> None:
    """Register the core's own implementations first (seam rule 12), once."""
    from modules import core_hooks
    if not host.is_registered("serena.core"):
        host.register(core_hooks, "serena.core", CORE_GROUP)


def resolved_order(hook_name: str) -> list[str]:
    return host.resolved_order(hook_name)
