"""Write a generation's active overrides into its infotext: ``Override settings: key=value, key2=value2``.

Built like a third-party extension (it imports only ``modules.extensions_api``). The enter hook formats each
override's values once and keeps the text on that override (an ``OverrideState``), and ``on_infotext`` writes
the text of every override in effect for this generation — including an outer generation's when one runs nested
inside another — and never anything from a generation that already finished, or from another thread's.
"""

from __future__ import annotations

import json

from modules.extensions_api import OverrideState, hookimpl

FIELD = "Override settings"

_texts: OverrideState[dict] = OverrideState("override-infotext")  # key -> value as written, for each override


def _format(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def current() -> dict:
    """Every override in effect in this context, innermost winning: key -> value as the infotext writes it."""
    merged: dict = {}
    for texts in _texts.values():
        merged.update(texts)
    return merged


@hookimpl
def on_opts_override_enter(overrides):
    _texts.set({key: _format(value) for key, value in overrides.items()})


@hookimpl
def on_infotext(params):
    merged = current()
    if merged:
        params[FIELD] = ", ".join(f"{key}={text}" for key, text in merged.items())
