"""Serena's web UI: gradio Blocks mounted at ``/`` by ``webui.create_app`` (unless ``--nowebui``).

``create_ui()`` builds the page: quick settings (checkpoint, VAE) on top, then the tabs txt2img, img2img,
Extras, PNG Info, the tabs extensions add through ``on_ui_tabs``, Settings and Extensions. Generations run through
``modules.dispatch.run``, the FIFO queue the API uses too, so UI and API generations never overlap (with
``--workers``, the workers' queue).

One module per responsibility: ``generation`` (the form and events txt2img and img2img share), ``txt2img``,
``img2img``, ``progress`` (queueing, progress, preview, interrupt), ``paste`` (pasted parameters and the
override settings field), ``extra_networks`` (the 🎴 panel of cards), ``extras``, ``png_info``, ``settings`` (settings page and quick settings), ``extensions_tab``.
"""

from __future__ import annotations

import logging

log = logging.getLogger("serena.ui")

TITLE = "Serena"
#: Events that may run at once per handler (generations also wait for the shared queue lock).
DEFAULT_CONCURRENCY = 4


def extension_tabs() -> list[tuple]:
    """``(component, title, elem_id)`` for every tab extensions return from ``on_ui_tabs``, in hook order.

    Called before the main Blocks opens, so an extension's own ``gr.Blocks`` is built standalone and then
    rendered into its tab (A1111's convention). A malformed entry is logged and skipped.
    """
    from modules import plugins

    tabs = []
    for result in plugins.host.call("on_ui_tabs"):
        entries = result if isinstance(result, (list, tuple)) and result and isinstance(result[0], (list, tuple)) \
            else [result]
        for item in entries:
            if not isinstance(item, (list, tuple)) or len(item) < 2 or not hasattr(item[0], "render"):
                log.error("on_ui_tabs returned %r; expected (component, title, elem_id) tuples; skipped", item)
                continue
            component, title = item[0], str(item[1])
            elem_id = str(item[2]) if len(item) > 2 and item[2] else title.lower().replace(" ", "_")
            tabs.append((component, title, elem_id))
    return tabs


def create_ui():
    """Build and return the ``gr.Blocks`` of the whole page (queue configured, not launched)."""
    import gradio as gr

    from modules import shared
    from modules.ui import extensions_tab, extras, img2img, png_info, settings, txt2img

    ext_tabs = extension_tabs()
    # Gallery images are copied to gradio's cache as they are shown; the saved copies live in outputs/, so the
    # cached ones are dropped after an hour (checked every 30 minutes).
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(1800, 3600)) as blocks:
        quick, refresh, quick_status = settings.create_quicksettings()
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                t2i = txt2img.create_tab()
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                i2i = img2img.create_tab()
            with gr.Tab("Extras", id="extras", elem_id="tab_extras") as extras_tab:
                extras.create_tab(extras_tab)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                png = png_info.create_tab()
            used = {"txt2img", "img2img", "extras", "pnginfo", "settings", "extensions"}
            for component, title, elem_id in ext_tabs:
                tab_id = elem_id if elem_id not in used else f"ext_{elem_id}"
                used.add(tab_id)
                with gr.Tab(title, id=tab_id, elem_id=f"tab_{tab_id}"):
                    try:
                        component.render()
                    except Exception as e:  # noqa: BLE001 - one broken extension tab must not take the page down
                        log.exception("extension tab %r could not be rendered", title)
                        gr.Markdown(f"This extension's tab could not be built: `{type(e).__name__}: {e}`")
            with gr.Tab("Settings", id="settings", elem_id="tab_settings") as settings_tab:
                page = settings.create_tab()
            with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions"):
                extensions_tab.create_tab()

        settings.wire_quicksettings(quick, refresh, quick_status, page)
        png_info.wire_send(png, t2i, i2i, tabs)
        quick_keys = list(quick)
        comps = list(page.components.values())

        def quick_values():
            return [settings.quick_value(k) for k in quick_keys]

        # The settings page follows the store when the page loads and whenever the tab is opened (the API or
        # another browser may have changed settings), without overwriting what the user is editing ...
        refresh_io = dict(fn=page.refresh, inputs=comps + [page.baseline], outputs=comps + [page.baseline],
                          api_visibility="undocumented", show_progress="hidden")
        settings_tab.select(**refresh_io)
        blocks.load(**refresh_io)
        # ... and the quick settings follow an Apply on the settings page, and a page (re)load.
        page.apply_event.then(quick_values, outputs=[quick[k] for k in quick_keys], api_visibility="undocumented",
                         show_progress="hidden")
        blocks.load(quick_values, outputs=[quick[k] for k in quick_keys], api_visibility="undocumented",
                    show_progress="hidden")
    blocks.queue(default_concurrency_limit=DEFAULT_CONCURRENCY)
    log.info("web UI built: %d extension tab(s), %d settings shown, settings %s", len(ext_tabs), len(comps),
             "frozen" if shared.opts.frozen else "editable")
    return blocks
