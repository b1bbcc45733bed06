"""``OverrideState``: what an extension derives from an override, kept on the seam's own override layer.

An extension that builds something from an option (a compiled pattern, a patched module, a cache) needs it for
exactly as long as an override of that option is in effect, in the context that entered it, nested like the
overrides themselves. Rather than each extension keeping a stack of its own next to the seam's (one level per
enter, popped on exit, in a ``ContextVar``), it sets the value on the layer ``temporary_opts`` just pushed, in
``on_opts_override_enter``; ``get()`` reads the innermost active layer that has one, and the value is gone when
that layer pops. So it follows the layer stack's rules (``shared/design/seam.md`` rules 6, 8 and 11), as
``ContextVar`` values do: other threads and asyncio tasks never see it, a context copied from this one
(``run_in_thread``, a task created inside the block) sees what this one saw when it was copied.
"""

from __future__ import annotations

import contextvars
from typing import Any, Generic, TypeVar

from modules import shared
from modules.options import OverrideLayer

__all__ = ["OverrideState"]

T = TypeVar("T")
_MISSING: Any = object()

# The layer whose enter hooks are running in this context: the one ``OverrideState.set`` attaches to.
_entering: contextvars.ContextVar[OverrideLayer | None] = contextvars.ContextVar("serena_override_entering",
                                                                                default=None)


class entering:  # noqa: N801 - used like a contextlib helper; a class because it runs on every override
    """``temporary_opts`` runs the enter hooks of ``layer`` inside this block."""

    __slots__ = ("_layer", "_token")

    def __init__(self, layer: OverrideLayer):
        self._layer = layer

    def __enter__(self):
        self._token = _entering.set(self._layer)

    def __exit__(self, *exc_info):
        _entering.reset(self._token)


class OverrideState(Generic[T]):
    """A value per active override, like a ``ContextVar`` whose levels are the seam's override layers.

    Create one at import; in ``on_opts_override_enter`` call ``set(value)`` (only there: the value belongs to
    the override being entered); anywhere later in that context ``get()`` returns the value of the innermost
    active override that set one. When that override ends its value is gone: the next outer one's applies
    again, or, with none, the default (``LookupError`` without one, as ``ContextVar.get``).

    Args:
        name (`str`): shown in ``repr`` and errors.
        default (*optional*): what ``get()`` returns when no active override set a value.
        opts (`Options`, *optional*): whose layers to read; defaults to ``modules.shared.opts``.
    """

    def __init__(self, name: str, *, default: T = _MISSING, opts=None):
        self.name = name
        self._default = default
        self._opts = opts

    def __repr__(self):
        return f"<OverrideState {self.name!r}>"

    def _layers(self) -> tuple:
        return (self._opts if self._opts is not None else shared.opts).layers()

    def set(self, value: T) -> None:
        """Attach ``value`` to the override being entered; ``RuntimeError`` outside ``on_opts_override_enter``."""
        layer = _entering.get()
        if layer is None:
            raise RuntimeError(f"{self!r}.set() attaches a value to the override being entered: "
                               f"call it in on_opts_override_enter")
        layer.state[self] = value

    def get(self, default: T = _MISSING) -> T:
        """The value of the innermost active override that set one, else ``default``, else the state's default."""
        for layer in reversed(self._layers()):
            if self in layer.state:
                return layer.state[self]
        if default is not _MISSING:
            return default
        if self._default is not _MISSING:
            return self._default
        raise LookupError(f"{self!r}: no active override set a value")

    def values(self) -> list[T]:
        """The values of every active override that set one, outermost first."""
        return [layer.state[self] for layer in self._layers() if self in layer.state]
