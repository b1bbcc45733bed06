"""The txt2img tab: the shared parameter form and output panel, generating ``StableDiffusionProcessingTxt2Img``."""

from __future__ import annotations

import gradio as gr

from modules.ui import generation, hires, refiner

TAB = "txt2img"


def make_p(extra: list, values: dict):
    from modules import processing, request_preparation

    # The tab's extra inputs are the Hires fix section's values, then the Refiner section's.
    split = len(hires.FIELDS)
    return request_preparation.build_processing(processing.StableDiffusionProcessingTxt2Img,
                                                {**generation.common_p_kwargs(values), **hires.p_kwargs(extra[:split]),
                                                 **refiner.p_kwargs(extra[split:])})


def create_tab() -> generation.GenerationForm:
    """Build the tab's components inside the current ``gr.Tab`` and wire its events."""
    form = generation.GenerationForm(tab=TAB)
    generation.build_prompt_row(form)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=320, elem_id=f"{TAB}_settings"):
            generation.build_parameters(form)
            section = hires.build(TAB)
            refiner_inputs = refiner.build(TAB)
            form.extra_inputs = section.inputs + refiner_inputs
            # Every paste (the prompt box's, PNG Info's "Send to txt2img") fills the Hires fix and Refiner sections too.
            form.paste_extra = section.inputs + refiner_inputs
            form.paste_extra_values = lambda text: hires.paste_values(text) + refiner.paste_values(text)
        with gr.Column(scale=1, min_width=320, elem_id=f"{TAB}_results"):
            generation.build_outputs(form)
    generation.wire(form, make_p, run_name=TAB)
    return form
