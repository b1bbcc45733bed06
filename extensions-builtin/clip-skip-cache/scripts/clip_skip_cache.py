"""Keep state derived from ``CLIP_stop_at_last_layers`` (clip skip) in step with per-generation overrides.

The derived state here is small — which hidden layer of the text encoder to read, and a label — but it stands
for anything costly to build from an option (a patched module, a compiled pattern, a cache): it is built once
when an override takes effect (``on_opts_override_enter``) and kept on that override (an ``OverrideState``), so
that during an override ``current()`` is derived from the override and after it from the stored value again.
Another thread or request never sees it.

It also registers an option of its own, ``clip_skip_cache_infotext``, through ``on_ui_settings``: when on, each
image's infotext gets ``CLIP layer: <index>`` from the derived state. Like every option it is stored in
``config.json`` and may be overridden per generation.
"""

from __future__ import annotations

from dataclasses import dataclass

from modules.extensions_api import OptionInfo, OverrideState, hookimpl, opts

KEY = "CLIP_stop_at_last_layers"
OPTION = "clip_skip_cache_infotext"
FIELD = "CLIP layer"


@dataclass(frozen=True)
class Derived:
    clip_skip: int
    hidden_layer: int   # index into the text encoder's hidden states: -1 is the last layer

    @property
    def label(self) -> str:
        return "last layer" if self.clip_skip <= 1 else f"{self.clip_skip - 1} layer(s) before the last"


def derive(clip_skip) -> Derived:
    clip_skip = max(1, int(clip_skip))
    return Derived(clip_skip=clip_skip, hidden_layer=-clip_skip)


_overridden: OverrideState[Derived] = OverrideState("clip-skip-cache")  # for each active override of KEY
_stored_cache: dict = {}  # stored value -> Derived (the stored value changes rarely)


def current() -> Derived:
    """The derived state for this context: from the innermost override of clip skip, else the stored value."""
    derived = _overridden.get(None)
    if derived is not None:
        return derived
    stored = opts.get(KEY)
    if stored not in _stored_cache:
        _stored_cache.clear()
        _stored_cache[stored] = derive(stored)
    return _stored_cache[stored]


@hookimpl
def on_ui_settings():
    opts.add_option(OPTION, OptionInfo(False, "Add the text encoder layer used (from clip skip) to the infotext",
                                       section=("clip-skip-cache", "Clip skip cache")))


@hookimpl
def on_opts_override_enter(overrides):
    if KEY in overrides:
        _overridden.set(derive(overrides[KEY]))


@hookimpl
def on_infotext(params):
    if opts.get(OPTION, False):
        params[FIELD] = current().hidden_layer
