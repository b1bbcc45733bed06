"""What extension authors import. Everything listed in ``__all__`` is public and stable; nothing else is.

Example::

    from modules.extensions_api import hookimpl

    @hookimpl
    def on_opts_override_enter(overrides, previous):
        if "CLIP_stop_at_last_layers" in overrides:
            ...

See ``docs/extensions/writing.md`` for a tutorial and ``docs/extensions/hooks.md`` for every hook.
"""

from modules.hookspecs import hookimpl
from modules.options import OptionInfo, options_section
from modules.plugins import HookError, resolved_order
from modules.runtime_utils import OverrideError, active_overrides, run_in_thread, temporary_opts, with_overrides
from modules.shared import opts

__all__ = [
    "hookimpl",
    "temporary_opts",
    "with_overrides",
    "OverrideError",
    "active_overrides",
    "run_in_thread",
    "resolved_order",
    "HookError",
    "OptionInfo",
    "options_section",
    "opts",
]
