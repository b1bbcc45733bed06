"""The txt2img tab's Hires fix section: A1111's controls, their processing fields, and their paste.

The values reach ``txt2img.make_p`` as the tab's extra inputs (``HiresSection.inputs``), in ``FIELDS`` order, and
become processing fields there, checked by the same preparation as the API's (``request_preparation``). Every paste
of the tab (its prompt box's button, PNG Info's "Send to txt2img": ``generation.paste_updates``) fills them with
``paste_values``, from the same ``request_preparation.paste_infotext`` the API's ``infotext`` field uses; a text
without Hires fields turns the section off and puts its controls back to their defaults, as A1111's paste does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from modules.ui import common

# (processing field, label, default). The denoising default is A1111's UI slider's (0.7; its API's is 0.75).
FIELDS = (
    ("enable_hr", "Hires. fix", False),
    ("hr_upscaler", "Upscaler", "Latent"),
    ("hr_second_pass_steps", "Hires steps", 0),
    ("denoising_strength", "Denoising strength", 0.7),
    ("hr_scale", "Upscale by", 2.0),
    ("hr_resize_x", "Resize width to", 0),
    ("hr_resize_y", "Resize height to", 0),
    ("hr_checkpoint_name", "Hires checkpoint", "Use same checkpoint"),
    ("hr_sampler_name", "Hires sampling method", "Use same sampler"),
    ("hr_scheduler", "Hires schedule type", "Use same scheduler"),
    ("hr_prompt", "Hires prompt", ""),
    ("hr_negative_prompt", "Hires negative prompt", ""),
)
_INT = {"hr_second_pass_steps", "hr_resize_x", "hr_resize_y"}
_FLOAT = {"denoising_strength", "hr_scale"}


@dataclass
class HiresSection:
    components: dict = field(default_factory=dict)

    @property
    def inputs(self) -> list:
        return [self.components[name] for name, _, _ in FIELDS]


def upscaler_names() -> list[str]:
    from modules import hires, upscalers

    return list(hires.LATENT_UPSCALE_MODES) + [u.name for u in upscalers.all_upscalers()]


def checkpoint_titles() -> list:
    from modules import hires, sd_models
    from modules.ui.settings import checkpoint_choices

    return [(hires.SAME_CHECKPOINT, hires.SAME_CHECKPOINT)] + checkpoint_choices([c.title for c in sd_models.list_checkpoints()])


def build(tab: str) -> HiresSection:
    """The section's components, inside the current layout (an accordion, closed until used)."""
    from modules import hires

    section, c, t = HiresSection(), {}, tab
    defaults = {name: default for name, _, default in FIELDS}
    with gr.Accordion("Hires. fix", open=False, elem_id=f"{t}_hr"):
        c["enable_hr"] = gr.Checkbox(label="Hires. fix", value=False, elem_id=f"{t}_enable_hr")
        with gr.Row():
            c["hr_upscaler"] = gr.Dropdown(label="Upscaler", choices=upscaler_names(), value=hires.DEFAULT_UPSCALER,
                                           elem_id=f"{t}_hr_upscaler")
            c["hr_second_pass_steps"] = gr.Slider(minimum=0, maximum=150, step=1, value=0, precision=0,
                                                  label="Hires steps", elem_id=f"{t}_hires_steps")
            c["denoising_strength"] = gr.Slider(minimum=0.0, maximum=1.0, step=0.01,
                                                value=defaults["denoising_strength"], label="Denoising strength",
                                                elem_id=f"{t}_hr_denoising_strength")
        with gr.Row():
            c["hr_scale"] = gr.Slider(minimum=1.0, maximum=4.0, step=0.05, value=2.0, label="Upscale by",
                                      elem_id=f"{t}_hr_scale")
            c["hr_resize_x"] = gr.Slider(minimum=0, maximum=2048, step=8, value=0, precision=0,
                                         label="Resize width to", elem_id=f"{t}_hr_resize_x")
            c["hr_resize_y"] = gr.Slider(minimum=0, maximum=2048, step=8, value=0, precision=0,
                                         label="Resize height to", elem_id=f"{t}_hr_resize_y")
        with gr.Row():
            c["hr_checkpoint_name"] = gr.Dropdown(label="Hires checkpoint", choices=checkpoint_titles(),
                                                  value=hires.SAME_CHECKPOINT, elem_id=f"{t}_hr_checkpoint")
            c["hr_sampler_name"] = gr.Dropdown(label="Hires sampling method",
                                               choices=[hires.SAME_SAMPLER] + common.sampler_names(),
                                               value=hires.SAME_SAMPLER, elem_id=f"{t}_hr_sampler")
            c["hr_scheduler"] = gr.Dropdown(label="Hires schedule type",
                                            choices=[hires.SAME_SCHEDULER] + common.scheduler_labels(),
                                            value=hires.SAME_SCHEDULER, elem_id=f"{t}_hr_scheduler")
        c["hr_prompt"] = gr.Textbox(label="Hires prompt", lines=2, elem_id=f"{t}_hr_prompt",
                                    placeholder="Prompt for hires fix pass.\nLeave empty to use the same prompt.")
        c["hr_negative_prompt"] = gr.Textbox(label="Hires negative prompt", lines=2, elem_id=f"{t}_hr_neg_prompt",
                                             placeholder="Negative prompt for hires fix pass.\nLeave empty to use "
                                                         "the same negative prompt.")
    section.components = c
    return section


def _typed(name: str, value: Any, default: Any) -> Any:
    if value is None or value == "":
        return default
    if name in _INT:
        return int(float(value))
    if name in _FLOAT:
        return float(value)
    if name == "enable_hr":
        return bool(value)
    return str(value)


def p_kwargs(values: list) -> dict:
    """Processing fields from the section's values (in ``FIELDS`` order); none when Hires fix is off, so a
    generation without it reads nothing from the section."""
    named = {name: _typed(name, value, default) for (name, _, default), value in zip(FIELDS, values)}
    return named if named.get("enable_hr") else {}


def paste_values(text: str) -> list:
    """The section's values from a pasted infotext, in ``FIELDS`` order (defaults where it has no Hires field)."""
    from modules import request_preparation

    from modules import sd_models

    fields = request_preparation.paste_infotext(text).fields
    if not fields.get("enable_hr"):
        return [default for _, _, default in FIELDS]
    if fields.get("hr_checkpoint_name"):
        # The infotext's "name [hash]" as the dropdown's title; a checkpoint this server lacks is not chosen.
        try:
            fields["hr_checkpoint_name"] = sd_models.resolve_checkpoint(fields["hr_checkpoint_name"]).title
        except ValueError:
            fields.pop("hr_checkpoint_name")
    return [_typed(name, fields.get(name), default) for name, _, default in FIELDS]
