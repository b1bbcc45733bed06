"""The txt2img tab's Refiner section (A1111's): a checkbox, the refiner checkpoint and the switch point.

Its values follow the Hires fix section's among the tab's extra inputs (``txt2img.make_p``) and become the
``refiner_checkpoint``/``refiner_switch_at`` processing fields, checked by the same preparation as the API's.
Pasting an infotext with ``Refiner`` fills it, and one without turns it off (A1111's paste).
"""

from __future__ import annotations

import gradio as gr

from modules import refiner as refiner_module

# (processing field or "enable", label, default)
FIELDS = (("enable", "Refiner", False), ("refiner_checkpoint", "Checkpoint", None),
          ("refiner_switch_at", "Switch at", refiner_module.DEFAULT_SWITCH_AT))


def build(tab: str) -> list:
    """The section's input components, in ``FIELDS`` order, inside the current layout (a closed accordion)."""
    from modules import sd_models
    from modules.ui.settings import checkpoint_choices

    with gr.Accordion("Refiner", open=False, elem_id=f"{tab}_refiner"):
        enable = gr.Checkbox(label="Refiner", value=False, elem_id=f"{tab}_enable_refiner")
        with gr.Row():
            checkpoint = gr.Dropdown(label="Checkpoint", value=None, elem_id=f"{tab}_refiner_checkpoint",
                                     choices=checkpoint_choices([c.title for c in sd_models.list_checkpoints()]))
            switch_at = gr.Slider(minimum=0.01, maximum=1.0, step=0.01, label="Switch at",
                                  value=refiner_module.DEFAULT_SWITCH_AT, elem_id=f"{tab}_refiner_switch_at")
    return [enable, checkpoint, switch_at]


def p_kwargs(values: list) -> dict:
    """The processing fields from the section's values; none while the checkbox is off (or from a caller that
    passes no section values)."""
    if not values:
        return {}
    enable, checkpoint, switch_at = values
    if not enable or not checkpoint:
        return {}
    return {"refiner_checkpoint": str(checkpoint), "refiner_switch_at": float(switch_at)}


def paste_values(text: str) -> list:
    """The section's values from a pasted infotext (off, with the defaults, when it names no refiner that this
    server has)."""
    from modules import request_preparation, sd_models

    fields = request_preparation.paste_infotext(text).fields
    try:
        title = sd_models.resolve_checkpoint(fields["refiner_checkpoint"]).title
    except (KeyError, ValueError):
        return [default for _, _, default in FIELDS]
    switch_at = fields.get("refiner_switch_at")
    return [True, title, float(switch_at) if switch_at is not None else refiner_module.DEFAULT_SWITCH_AT]
