"""The one plugin manager, the order Serena calls implementations in, and the guarded dispatch.

pluggy calls implementations last-registered-first and stops at the first exception. Serena needs the opposite
on both counts: load order (core, built-in, user) so extension authors can predict it, and every implementation
called even when one fails (exit hooks undo state). So the host resolves the order in ``resolved_order`` and
calls implementations one at a time through ``call_each``, with pluggy's public API only: an implementation's
``function`` gets the arguments its ``argnames`` ask for (pluggy's pruning rule). While a tracer added with
``pm.add_hookcall_monitoring`` (or ``pm.enable_tracing``) listens, each call goes through a
``pm.subset_hook_caller`` instead, so the tracer sees every call; that path is slower, so it is used only then.
"""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterable

import pluggy

from modules import hookspecs

log = logging.getLogger("serena.plugins")

CORE_GROUP, BUILTIN_GROUP, USER_GROUP = "core", "builtin", "user"


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


class _PluginManager(pluggy.PluginManager):
    """A ``PluginManager`` that counts its active hook-call monitors, so the host knows when a tracer listens."""

    monitors = 0

    def add_hookcall_monitoring(self, before, after):
        undo = super().add_hookcall_monitoring(before, after)
        self.monitors += 1

        def undo_and_count() -> None:
            undo()
            self.monitors -= 1
        return undo_and_count


def create_plugin_manager() -> pluggy.PluginManager:
    """A fresh manager with Serena's hook specs (tests build their own with this)."""
    manager = _PluginManager(hookspecs.PROJECT)
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

    def owed_exits(self, enter_hook: str, entered: Iterable) -> list:
        """The implementations of ``enter_hook``'s exit hook (``hookspecs.EXIT_HOOKS``) owed after the enter
        implementations ``entered`` were called (in call order, also those that raised): one for each of their
        modules that implements the exit hook, in exactly the reverse order."""
        exits = {id(i.plugin): i for i in self._impls_in_order(hookspecs.EXIT_HOOKS[enter_hook])}
        return [exits[id(i.plugin)] for i in reversed(list(entered)) if id(i.plugin) in exits]

    def describe_hooks(self) -> dict[str, dict]:
        """The one description of hook order: ``--list-hooks``, the API, the UI and ``hook_order`` show it.

        ``{hook: {"order": [row, ...], "reverse_of": enter hook or None, "dropped": [DroppedCycle, ...]}}`` for
        every hook spec, rows in call order: ``{"name", "group", "tryfirst", "trylast", "called"}``. An exit hook
        (``reverse_of`` names its enter hook) is called as a stack (``owed_exits``): its rows are the owed exits
        of a call of every enter implementation, then — ``called: False`` — exit implementations in modules
        without the enter one, which are never called. ``dropped`` holds the ``[hooks/<hook>]`` cycles of that
        hook (``self.dropped`` also has the load-order ones, ``hook=None``).
        """
        return {name: self._describe(name) for name in hook_names(self.pm)}

    def _describe(self, hook_name: str) -> dict:
        groups = {r.name: r.group for r in self._registrations.values()}

        def row(impl, called=True) -> dict:
            name = self.plugin_name(impl.plugin)
            return {"name": name, "group": groups.get(name, "?"), "tryfirst": bool(impl.tryfirst),
                    "trylast": bool(impl.trylast), "called": called}

        impls = self._impls_in_order(hook_name)
        enter_hook = next((enter for enter, exit_ in hookspecs.EXIT_HOOKS.items() if exit_ == hook_name), None)
        if enter_hook is None:
            rows = [row(i) for i in impls]
        else:
            owed = self.owed_exits(enter_hook, self._impls_in_order(enter_hook))
            called = {id(i) for i in owed}
            rows = [row(i) for i in owed] + [row(i, called=False) for i in impls if id(i) not in called]
        return {"order": rows, "reverse_of": enter_hook, "dropped": [d for d in self.dropped if d.hook == hook_name]}

    def resolved_order(self, hook_name: str) -> list[str]:
        """The extension names whose implementations of ``hook_name`` run, in call order (``describe_hooks``)."""
        return [r["name"] for r in self._describe(hook_name)["order"] if r["called"]]

    def hook_order(self) -> dict[str, list[str]]:
        """``{hook: [extension, ...]}`` for every hook spec, in call order (``describe_hooks``, names only)."""
        return {hook: [r["name"] for r in view["order"] if r["called"]] for hook, view in self.describe_hooks().items()}

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
                res = self._call_one(hook_name, impl, kwargs)
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

    def _call_one(self, hook_name: str, impl, kwargs: dict) -> list:
        if getattr(self.pm, "monitors", 1):  # a tracer listens (or a foreign manager): through pluggy's executor
            others = [i.plugin for i in getattr(self.pm.hook, hook_name).get_hookimpls() if i is not impl]
            return self.pm.subset_hook_caller(hook_name, others)(**kwargs)
        try:
            args = [kwargs[name] for name in impl.argnames]
        except KeyError as e:  # pluggy's own message
            raise pluggy.HookCallError(f"hook call must provide argument {e.args[0]!r}") from None
        return [impl.function(*args)]

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


@contextlib.contextmanager
def use_host(new_host: Host):
    """Make ``new_host`` (and its manager) ``host`` and ``pm`` for a block, e.g. a fresh one per test.

    Runtime code reads ``plugins.host`` when it dispatches, so everything in the block uses ``new_host``.
    """
    global host, pm
    saved = host, pm
    host, pm = new_host, new_host.pm
    try:
        yield new_host
    finally:
        host, pm = saved


def resolved_order(hook_name: str) -> list[str]:
    return host.resolved_order(hook_name)
