"""The built-in override-inspector extension: loaded like any extension, adds a tab, shows live state."""

from __future__ import annotations

import os
import threading

from modules import extensions, paths
from modules.runtime_utils import temporary_opts

BUILTIN = os.path.join(paths.script_path, "extensions-builtin")


def test_override_inspector_tab_shows_running_stack_and_order(data_dir, plugin_host):
    host = plugin_host  # this test's own, as plugins.host: the tab shows what was loaded here
    loaded = extensions.load_all(builtin_dir=BUILTIN, user_dir=str(data_dir / "extensions"), host=host,
                                 entry_points=False)
    inspector = next(e for e in loaded if e.name == "override-inspector")
    assert inspector.loaded and not inspector.problems
    [tabs] = host.call("on_ui_tabs")
    [(component, title, elem_id)] = tabs
    assert title == "Overrides" and elem_id == "override_inspector" and hasattr(component, "render")

    describe = host.pm.get_plugin("override-inspector").describe
    inside, release = threading.Event(), threading.Event()

    def job():
        with temporary_opts({"CLIP_stop_at_last_layers": 3}, owner="api-job"):
            inside.set()
            release.wait(timeout=30)

    t = threading.Thread(target=job)
    t.start()
    assert inside.wait(timeout=30)  # the first check of clip skip may import the model loader (torch)
    try:
        running, order = describe()
    finally:
        release.set()
        t.join()
    assert '"CLIP_stop_at_last_layers": 3' in running and "api-job" in running
    assert "- `on_ui_tabs`: `override-inspector`" in order.splitlines()
    assert "- `on_opts_override_enter`: `serena.core`, `clip-skip-cache`, `override-infotext`" in order.splitlines()
    idle, _ = describe()
    assert idle.startswith("No generation")
