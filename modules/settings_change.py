"""Changing stored settings: the one way every front door that saves does it (``POST /sdapi/v1/options``, the
settings page's Apply, the quick settings row, the Extensions tab)."""

from __future__ import annotations

from collections.abc import Mapping

from modules import jobs, shared
from modules.options import OptionsRejected, SettingsFrozenError


def change_settings(values: Mapping, *, is_api: bool = False) -> dict:
    """Validate every value, then store and save all of them or none; returns ``{key: changed}``.

    Raises ``SettingsFrozenError`` (``--freeze-settings``), ``OptionsRejected`` (every bad key with its reason),
    or what ``Options.set_many`` raises (``OptionError`` from a callback, ``SettingsSaveError``), each time with
    nothing changed. Checked before the queue lock, so a bad change never waits behind a generation; stored under
    it, so a running generation never sees stored options (or its model) change half-way.
    """
    opts = shared.opts
    if opts.frozen:
        raise SettingsFrozenError()
    check = opts.check(values, is_api=is_api)
    if check.errors:
        raise OptionsRejected(check.errors)
    if not values:
        return {}
    with jobs.queue_lock:
        return opts.set_many(values, is_api=is_api, save=True)
