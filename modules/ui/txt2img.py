"""The txt2img tab: the shared parameter form and output panel, generating ``StableDiffusionProcessingTxt2Img``."""

from __future__ import annotations

import gradio as gr

from modules.ui import generation, hires

TAB = "txt2img"


def make_p(extra: list, values: dict):
    from modules import processing, request_preparation

    # The tab's extra inputs are the Hires fix section's values.
    return request_preparation.build_processing(processing.StableDiffusionProcessingTxt2Img,
                                                {**generation.common_p_kwargs(values), **hires.p_kwargs(extra)})


def create_tab() -> generation.GenerationForm:
    """Build the tab's components inside the current ``gr.Tab`` and wire its events."""
    form = generation.GenerationForm(tab=TAB)
    generation.build_prompt_row(form)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=320, elem_id=f"{TAB}_settings"):
            generation.build_parameters(form)
            section = hires.build(TAB)
            form.extra_inputs = section.inputs
            # Every paste (the prompt box's, PNG Info's "Send to txt2img") fills the Hires fix section too.
            form.paste_extra, form.paste_extra_values = section.inputs, hires.paste_values
        with gr.Column(scale=1, min_width=320, elem_id=f"{TAB}_results"):
            generation.build_outputs(form)
    generation.wire(form, make_p, run_name=TAB)
    return form
