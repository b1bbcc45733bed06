"""Write a generation's active overrides into its infotext: ``Override settings: key=value, key2=value2``.

Built like a third-party extension (it imports only ``modules.extensions_api``). The enter hook pushes each
level's overrides on a per-context stack, the exit hook pops it, and ``on_infotext`` writes what is on the stack:
every override in effect for this generation — including an outer generation's when one runs nested inside
another — and never anything from a generation that already finished, or from another thread's.
"""

from __future__ import annotations

import contextvars
import json

from modules.extensions_api import hookimpl

FIELD = "Override settings"

# One tuple per context (thread / asyncio task): the overrides of each active level, outermost first.
_levels: contextvars.ContextVar[tuple] = contextvars.ContextVar("override_infotext_levels", default=())


def _format(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def current() -> dict:
    """Every override in effect in this context, innermost winning."""
    merged: dict = {}
    for overrides in _levels.get():
        merged.update(overrides)
    return merged


@hookimpl
def on_opts_override_enter(overrides):
    _levels.set(_levels.get() + (dict(overrides),))


@hookimpl
def on_opts_override_exit(overrides):
    levels = _levels.get()
    # Exits come in exactly the reverse order of enters, so the level to drop is the last one.
    _levels.set(levels[:-1])


@hookimpl
def on_infotext(params):
    merged = current()
    if merged:
        params[FIELD] = ", ".join(f"{key}={_format(value)}" for key, value in merged.items())
