"""Helpers for an extension's own tests: load its folder into Serena, run the test, take every trace out again.

Example (``docs/extensions/writing.md``)::

    from modules.extensions_api.testing import loaded

    def test_my_extension():
        with loaded("extensions/my-ext") as ext:
            ...  # its hooks are registered and its options exist
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from modules import extensions, plugins, shared
from modules.extension_discovery import Extension
from modules.extensions import load_folder

__all__ = ["loaded", "load_folder"]


@contextlib.contextmanager
def loaded(path: str, *, host: plugins.Host | None = None, options: bool = True) -> Iterator[Extension]:
    """Register one extension folder for the duration of a block (a test), then remove every trace of it.

    Its ``Requires``/``Before``/``After`` are not applied. Fires its ``on_ui_settings`` when ``options`` is true;
    options it registers are forgotten afterwards. Raises ``RuntimeError`` with the problems when it does not load.
    """
    host = host if host is not None else plugins.host
    opts = shared.opts
    registered_before = set(opts.data_labels)
    ext = load_folder(path, host=host)
    if not ext.loaded:
        raise RuntimeError(f"extension {ext.name!r} did not load: " + "; ".join(ext.problems))
    try:
        if options:
            extensions.register_extension_options(host, only=ext.plugins)
        yield ext
    finally:
        extensions.unload([ext], host)
        for key in set(opts.data_labels) - registered_before:
            opts.remove_option(key)
