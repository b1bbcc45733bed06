"""An "Overrides" tab: the override stack of the generation running now, and the order hooks are called in.

Built like a third-party extension (it imports only ``modules.extensions_api`` and gradio) and shows how an
extension adds a tab through ``on_ui_tabs``. Everything it shows is read-only: it never changes settings.
"""

from __future__ import annotations

import json

from modules.extensions_api import hookimpl, hook_order, running_overrides


def describe() -> tuple[str, str]:
    """``(override stacks, hook order)`` as Markdown-ready text."""
    stacks = running_overrides()
    if stacks:
        running = "\n\n".join(f"```json\n{json.dumps(stack, indent=1, default=str)}\n```" for stack in stacks.values())
    else:
        running = "No generation with overrides is running."
    lines = [f"- `{hook}`: " + (", ".join(f"`{name}`" for name in names) or "*(none)*")
             for hook, names in hook_order().items()]
    return running, "\n".join(lines)


@hookimpl
def on_ui_tabs():
    import gradio as gr

    with gr.Blocks(analytics_enabled=False) as tab:
        gr.Markdown("Per-generation overrides in effect right now (they never change your stored settings).")
        running = gr.Markdown(elem_id="override_inspector_running")
        gr.Markdown("Hook implementations, in call order (exit hooks run in reverse):")
        order = gr.Markdown(elem_id="override_inspector_order")
        refresh = gr.Button("Refresh", elem_id="override_inspector_refresh")
        refresh.click(describe, outputs=[running, order])
        tab.load(describe, outputs=[running, order])
    return [(tab, "Overrides", "override_inspector")]
