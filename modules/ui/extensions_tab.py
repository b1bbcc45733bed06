"""The Extensions tab: what is installed, what is enabled, what failed to load, and the resolved hook order.

Enabling or disabling writes ``disabled_extensions`` to ``config.json`` (validated and saved like any setting).
Extensions are imported once at start-up, so the change takes effect when Serena is restarted; the page says so
instead of restarting the process itself (a restart from inside a request would cut off other users' generations
and the API clients' connections).
"""

from __future__ import annotations

import gradio as gr

from modules import plugins, settings_change, shared
from modules.option_info import OptionError
from modules.options import OptionsRejected, SettingsSaveError
from modules.ui import common

HEADERS = ["Extension", "Group", "Enabled", "Loaded", "Path", "Problems"]


def installed() -> list:
    from modules import extensions

    return list(extensions.extensions())


def _problems_of(ext) -> list[str]:
    problems = getattr(ext, "problems", None) or []
    return [str(p) for p in problems] if not isinstance(problems, str) else [problems]


def table_rows() -> list[list]:
    rows = []
    for ext in installed():
        rows.append([ext.name, getattr(ext, "group", ""), "yes" if getattr(ext, "enabled", True) else "no",
                     "yes" if getattr(ext, "loaded", False) else "no", getattr(ext, "path", ""),
                     "; ".join(_problems_of(ext))])
    return rows


def load_problems() -> list[str]:
    from modules import extensions

    return [str(p) for p in extensions.problems()]


def hook_rows() -> list[list]:
    """``[hook, call order]`` rows: the order ``--list-hooks`` prints (the exit hook in its real, reverse order)."""
    rows = []
    for hook, view in plugins.host.describe_hooks().items():
        names = []
        for r in view["order"]:
            marks = [m for m in ("tryfirst", "trylast") if r.get(m)]
            label = f"{r['name']} [{r.get('group', '?')}{', ' + ', '.join(marks) if marks else ''}]"
            names.append(label if r.get("called", True) else f"({label}: never called, no enter hook)")
        note = f"  (reverse of {view['reverse_of']})" if view["reverse_of"] else ""
        note += "".join(f"  (dropped: {cycle.message()})" for cycle in view["dropped"])
        rows.append([hook, (" \u2192 ".join(names) if names else "(none)") + note])
    return rows


def problems_html() -> str:
    problems = load_problems()
    if not problems:
        return common.status_html("No load problems", "ok")
    return common.message_list_html("Load problems", problems, "error")


def apply_enabled(enabled_names: list) -> str:
    """Store ``disabled_extensions`` = every installed extension not ticked (kept: names of uninstalled ones)."""
    opts = shared.opts
    if opts.frozen:
        return common.status_html("Settings are frozen (--freeze-settings): nothing was changed", "error")
    names = [e.name for e in installed()]
    enabled = set(enabled_names or [])
    disabled = [n for n in names if n not in enabled]
    kept = [n for n in opts.disabled_extensions if n not in names]
    new = sorted(set(disabled) | set(kept))
    if sorted(opts.disabled_extensions) == new:
        return common.status_html("Nothing changed", "info")
    try:
        settings_change.change_settings({"disabled_extensions": new})
    except OptionsRejected as e:
        return common.status_html(f"Not saved: {e}", "error")
    except (OptionError, SettingsSaveError) as e:
        return common.status_html(f"Not saved: {getattr(e, 'reason', e)}", "error")
    listed = ", ".join(new) if new else "none"
    return common.status_html(f"Saved. Disabled extensions: {listed}. Restart Serena (stop it and run launch.py "
                              "again) to load the new set.", "ok")


def create_tab():
    opts = shared.opts
    exts = installed()
    gr.Markdown("Installed extensions, built-in and user. Untick an extension and apply to disable it; "
                "the change takes effect when Serena is restarted.")
    enabled = gr.CheckboxGroup(choices=[e.name for e in exts],
                               value=[e.name for e in exts if getattr(e, "enabled", True)],
                               label="Enabled extensions", elem_id="extensions_enabled",
                               interactive=not opts.frozen)
    with gr.Row():
        apply = gr.Button("Apply (takes effect after a restart)", variant="primary", elem_id="extensions_apply",
                          interactive=not opts.frozen, scale=0, min_width=320)
        refresh = gr.Button(common.REFRESH_SYMBOL, elem_id="extensions_refresh", scale=0, min_width=48)
    status = gr.HTML(common.status_html("Settings are frozen (--freeze-settings)", "warn") if opts.frozen else "",
                     elem_id="extensions_status")
    table = gr.Dataframe(value=table_rows(), headers=HEADERS, interactive=False, wrap=True,
                         label="Installed extensions", elem_id="extensions_table")
    problems = gr.HTML(problems_html(), elem_id="extensions_problems")
    with gr.Accordion("Resolved hook order", open=False, elem_id="extensions_hook_order"):
        gr.Markdown("Each hook calls its implementations in this order: core first, then built-in, then user "
                    "extensions (load order, adjusted by metadata.ini and tryfirst/trylast); "
                    "on_opts_override_exit runs in the reverse of on_opts_override_enter.")
        hooks = gr.Dataframe(value=hook_rows(), headers=["Hook", "Order"], interactive=False, wrap=True,
                             elem_id="extensions_hooks_table")
    apply.click(apply_enabled, inputs=[enabled], outputs=[status], api_visibility="undocumented",
                show_progress="hidden")
    refresh.click(lambda: (table_rows(), problems_html(), hook_rows()), outputs=[table, problems, hooks],
                  api_visibility="undocumented", show_progress="hidden")
    return enabled
