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
        with gr.Column(scale=1, min_width=320, elem_id=f"{TAB}_results"):
            generation.build_outputs(form)
    # Before the form's own paste, which replaces the prompt box's infotext with its prompt: this one must read
    # the infotext first (gradio runs one trigger's listeners in the order they were added).
    hires.wire_paste(section, form.paste, form.prompt)
    generation.wire(form, make_p, run_name=TAB)
    return form
