"""The override seam: ``temporary_opts``, ``with_overrides`` and the override stack.

``temporary_opts(overrides)`` validates every key first (one ``OverrideError`` naming each bad key; nothing
applied, no hook fired), pushes a layer over the stored options in the current context only (a ``ContextVar``:
threads and asyncio tasks never see each other's overrides), fires ``on_opts_override_enter`` in load order, runs
the block, pops the layer, and fires ``on_opts_override_exit`` in exactly the reverse order for every
implementation owed one. Stored options and ``config.json`` are never touched (unless ``restore=False``).

The contract is ``shared/design/seam.md``; each numbered rule there is pinned by ``test/quality/test_runtime_utils.py``.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import functools
import inspect
import itertools
import sys
import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Callable

from modules import hookspecs, override_state, plugins, shared
from modules.options import OptionsRejected, OverrideLayer

ENTER_HOOK = "on_opts_override_enter"  # its exit hook is hookspecs.EXIT_HOOKS[ENTER_HOOK]

__all__ = ["OverrideError", "temporary_opts", "with_overrides", "active_overrides", "running_overrides",
           "run_in_thread"]


class OverrideError(OptionsRejected):
    """Overrides that cannot be applied. ``errors`` maps every bad key to why; nothing was applied.

    A ``ValueError``; the API turns it into HTTP 422 with the same list.
    """

    def __init__(self, errors: Mapping[str, str]):
        super().__init__(errors)
        self.args = ("invalid override settings: " + "; ".join(f"{k}: {v}" for k, v in self.errors.items()),)

    def __str__(self):
        return self.args[0]


# Every layer pushed and not yet popped, with the stack it tops (outermost first), by a number given at push, so
# the API can show running jobs' stacks from another thread (reads only; each context still sees only its own).
# Keyed by layer, not by thread: two asyncio tasks on one thread each have their own entry.
_live_stacks: dict[int, tuple] = {}
_live_lock = threading.Lock()
_live_keys = itertools.count()


def _go_live(opts) -> int:
    key = next(_live_keys)
    with _live_lock:
        _live_stacks[key] = opts.layers()
    return key


def _go_dead(key: int) -> None:
    with _live_lock:
        _live_stacks.pop(key, None)


class temporary_opts:  # noqa: N801 - named as a function: it is used like contextlib helpers
    """Apply ``overrides`` for the duration of a block, a decorated call, or a coroutine.

    Args:
        overrides (`Mapping[str, Any]` or `None`): option values to put in effect. ``None`` or ``{}`` does nothing.
        p (*optional*, defaults to `None`): the processing object, passed to the hooks and given the warnings.
        restore (`bool`, *optional*, defaults to `True`): ``False`` keeps the values as stored values afterwards
            (in memory; ``config.json`` changes only when settings are next saved on purpose).
        opts (`Options`, *optional*): the store to override; defaults to ``modules.shared.opts``.
        owner (`str`, *optional*): who set these overrides, as shown by ``active_overrides``; defaults to the
            calling module.

    As a context manager it returns itself: ``applied``, ``previous`` and ``warnings`` (deprecated aliases,
    contained hook failures). As a decorator each call gets a fresh instance, so one decorated function is safe
    across threads and recursion.
    """

    def __init__(self, overrides: Mapping[str, Any] | None, *, p: Any = None, restore: bool = True, opts=None,
                 owner: str | None = None, host: plugins.Host | None = None):
        if overrides is not None and not isinstance(overrides, Mapping):
            raise TypeError(f"overrides must be a mapping of option names to values, got {type(overrides).__name__}")
        self.overrides = dict(overrides or {})
        self.p = p
        self.restore = restore
        self._opts = opts
        self._host = host
        self.owner = owner or _caller_module()
        self.applied: Mapping[str, Any] = MappingProxyType({})
        self.previous: Mapping[str, Any] = MappingProxyType({})
        self.warnings: list[str] = []
        self.failures: list[plugins.HookFailure] = []
        self._token = None
        self._live_key: int | None = None
        self._entered: list = []
        self._reported = 0
        self._active = False

    @property
    def opts(self):
        return self._opts if self._opts is not None else shared.opts

    @property
    def host(self) -> plugins.Host:
        return self._host if self._host is not None else plugins.host

    def _fresh(self) -> "temporary_opts":
        return temporary_opts(self.overrides, p=self.p, restore=self.restore, opts=self._opts, owner=self.owner,
                              host=self._host)

    # -- enable / disable ------------------------------------------------------------------------------------
    def enable(self):
        if self._active:
            raise RuntimeError("this temporary_opts is already active; use a new one (or the decorator) to nest")
        if not self.overrides:
            return self  # rule 1: empty is free
        opts = self.opts
        # 1. Check inputs: all or nothing, before anything changes (rule 2).
        result = opts.check(self.overrides, for_override=True)
        if result.errors:
            raise OverrideError(result.errors)
        self._warn(*result.warnings)
        applied = result.values
        # 2. Put the layer in effect (rule 3: hooks see the overrides).
        previous = {k: opts.get(k) for k in applied}
        self.applied, self.previous = MappingProxyType(applied), MappingProxyType(previous)
        layer = OverrideLayer(values=self.applied, owner=self.owner, depth=len(opts.layers()) + 1, p=self.p)
        self._token = opts.push_layer(layer)
        self._active = True
        self._live_key = _go_live(opts)
        # 3. Enter hooks in load order; each one called is owed an exit (rule 4), even if it raised.
        try:
            with override_state.entering(layer):
                self.host.call_each(ENTER_HOOK, self._hook_kwargs(), failures=self.failures,
                                    on_called=self._entered.append)
        except BaseException as e:
            self.disable(e)
            raise
        self._report_failures()
        return self

    def disable(self, error: BaseException | None = None):
        if not self._active:
            return
        opts = self.opts
        self._active = False
        # 1. Previous values back in effect (rule 6), or kept as stored values (rule 9).
        opts.pop_layer(self._token)
        self._token = None
        _go_dead(self._live_key)
        try:
            if not self.restore:
                opts.set_many(self.applied, run_callbacks=False)
        finally:
            self._exit_hooks(error)

    def _exit_hooks(self, error):
        """Every owed exit hook, in exactly the reverse order (rule 5), each guarded (rule 7)."""
        kwargs = dict(self._hook_kwargs(), error=error, restored=self.restore)
        owed = self.host.owed_exits(ENTER_HOOK, self._entered)
        self._entered = []
        try:
            self.host.call_each(hookspecs.EXIT_HOOKS[ENTER_HOOK], kwargs, impls=owed, failures=self.failures,
                                run_all=True)
        except plugins.HookError:
            if error is None:  # the block's own exception, if any, is the one the caller must see
                raise
        finally:
            self._report_failures()

    def _hook_kwargs(self) -> dict:
        return {"overrides": self.applied, "previous": self.previous, "p": self.p}

    def _warn(self, *messages: str):
        for m in messages:
            self.warnings.append(m)
            _p_warnings(self.p, m)

    def _report_failures(self):
        for f in self.failures[self._reported:]:
            self._warn(f.message())
        self._reported = len(self.failures)

    # -- context manager -------------------------------------------------------------------------------------
    def __enter__(self):
        return self.enable()

    def __exit__(self, exc_type, exc, tb):
        self.disable(exc)
        return False

    async def __aenter__(self):
        return self.enable()

    async def __aexit__(self, exc_type, exc, tb):
        self.disable(exc)
        return False

    # -- decorator -------------------------------------------------------------------------------------------
    def __call__(self, func: Callable) -> Callable:
        if inspect.isclass(func):
            raise TypeError("temporary_opts/with_overrides decorate functions and coroutines, not classes")
        if not callable(func):
            raise TypeError(f"cannot decorate {type(func).__name__}")
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            # The body of a generator runs after the call returns, outside any context entered here.
            raise TypeError("temporary_opts/with_overrides cannot decorate generators; use `with` inside them")
        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def async_wrapper(*args, **kwargs):
                with self._fresh():
                    return await func(*args, **kwargs)
            return async_wrapper

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with self._fresh():
                return func(*args, **kwargs)
        return wrapper


def _p_warnings(p, message: str):
    if p is None:
        return
    warnings = getattr(p, "warnings", None)
    if isinstance(warnings, list):
        warnings.append(message)


def _caller_module() -> str:
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back
    return frame.f_globals.get("__name__", "?") if frame is not None else "?"


def with_overrides(arg: Any = None, /, **kwargs):
    """Apply overrides around a function, as Django's ``override_settings``.

    * ``@with_overrides`` bare, on a function whose first argument is a processing object ``p``: applies
      ``p.override_settings`` (restoring unless ``p.override_settings_restore_afterwards`` is false), unless the
      same ``p``'s overrides are already active in this context — then it neither applies nor fires again
      (rule 10), which is the normal path through ``process_images``.
    * ``@with_overrides({"KEY": value})`` on any function or coroutine, or ``with with_overrides({...}):`` — the
      same as ``temporary_opts``.
    """
    if callable(arg) and not isinstance(arg, Mapping):
        return _decorate_for_p(arg)
    return temporary_opts(arg, **kwargs)


def _decorate_for_p(func: Callable) -> Callable:
    if inspect.iscoroutinefunction(func):
        raise TypeError("bare @with_overrides is for process_images_inner-style functions; "
                        "use @with_overrides({...}) on coroutines")

    @functools.wraps(func)
    def wrapper(p, *args, **kwargs):
        if any(layer.p is p for layer in shared.opts.layers()):
            return func(p, *args, **kwargs)
        with temporary_opts(getattr(p, "override_settings", None), p=p,
                            restore=getattr(p, "override_settings_restore_afterwards", True),
                            owner=func.__qualname__):
            return func(p, *args, **kwargs)
    return wrapper


def active_overrides(opts=None) -> list[dict]:
    """The override stack of the current context, outermost first: keys, values, owner and depth."""
    opts = opts if opts is not None else shared.opts
    return [_describe(layer) for layer in opts.layers()]


def running_overrides() -> dict[int, list[dict]]:
    """The stack of every context with overrides active right now, each as ``active_overrides`` shows it there.

    Keys are arbitrary numbers, one per stack. A stack that another one extends (an outer level, seen again
    inside a nested level or in a task started within the block) is shown only as part of the longer one.
    """
    with _live_lock:
        stacks = dict(_live_stacks)
    extended = {id(layer) for stack in stacks.values() for layer in stack[:-1]}
    return {key: [_describe(layer) for layer in stack] for key, stack in stacks.items()
            if id(stack[-1]) not in extended}


def _describe(layer: OverrideLayer) -> dict:
    return {"keys": sorted(layer.values), "values": dict(layer.values), "owner": layer.owner, "depth": layer.depth}


def run_in_thread(func: Callable, /, *args, **kwargs) -> concurrent.futures.Future:
    """Run ``func`` in a new thread that sees the caller's current overrides (a copy of its context)."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    ctx = contextvars.copy_context()

    def target():
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(ctx.run(func, *args, **kwargs))
        except BaseException as e:
            future.set_exception(e)

    threading.Thread(target=target, name=f"serena-{getattr(func, '__name__', 'task')}", daemon=True).start()
    return future

