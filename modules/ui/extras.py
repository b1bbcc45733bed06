"""The Extras tab: upscale one image with one or two upscalers, as ``POST /sdapi/v1/extra-single-image`` does.

The Upscale button checks the request with ``request_preparation.prepare_extras`` and runs it with ``run_extras``
(one queued job): the functions the extras endpoints use, so the tab and the API accept, refuse and limit exactly
the same requests. The upscaler lists are read again (``on_list_upscalers``) whenever the tab is
opened, so an upscaler an extension lists later appears without a restart.
"""

from __future__ import annotations

import gradio as gr

from modules import request_preparation, upscalers
from modules.ui import common

#: A1111's Extras tab names for ``resize_mode`` 0 and 1, in that order.
RESIZE_MODES = ["Scale by", "Scale to"]
#: The tab's labels for the API field names ``prepare_extras`` and ``run_extras`` report errors under.
FIELD_LABELS = {"upscaler_1": "Upscaler 1", "upscaler_2": "Upscaler 2", "upscaling_resize": "Resize",
                "upscaling_resize_w": "Width"}


def upscaler_names() -> list[str]:
    return [u.name for u in upscalers.all_upscalers()]


def upscale(image, resize_mode: int, scale: float, width: int, height: int, crop: bool, upscaler_1: str,
            upscaler_2: str, visibility: float):
    """For the Upscale button: ``(result image or None, info HTML)``; the arguments are the API's fields."""
    if image is None:
        return None, common.status_html("Drop an image to upscale first", "warn")
    try:
        plan = request_preparation.prepare_extras(
            [image], upscaler_1=upscaler_1, upscaler_2=upscaler_2, visibility=visibility, resize_mode=resize_mode or 0,
            scale=scale, width=int(width), height=int(height), crop=crop)
        [result] = request_preparation.run_extras(plan, [image])
    except request_preparation.RequestFieldError as e:
        return None, common.status_html(
            "; ".join(f"{FIELD_LABELS.get(k, k)}: {v}" for k, v in e.errors.items()), "error")
    lines = plan.describe().splitlines() or ["Upscaler 1 is None: the image is unchanged"]
    return result, "<br>".join(common.esc(line) for line in lines)


class ExtrasTab:
    image = result = info = button = None
    upscaler_1 = upscaler_2 = None


def create_tab(parent) -> ExtrasTab:
    """Build the tab's components and events inside ``parent``, the current ``gr.Tab``."""
    tab = ExtrasTab()
    names = upscaler_names()
    with gr.Row(equal_height=False):
        with gr.Column():
            tab.image = gr.Image(label="Source", type="pil", image_mode=None, sources=["upload", "clipboard"],
                                 elem_id="extras_image", height=360)
            resize_mode = gr.Radio(RESIZE_MODES, value=RESIZE_MODES[0], type="index", label="Resize mode",
                                   elem_id="extras_resize_mode")
            scale = gr.Slider(1, 8, value=4, step=0.05, label="Resize", elem_id="extras_upscaling_resize")
            with gr.Row():
                width = gr.Number(512, precision=0, minimum=1, label="Width", elem_id="extras_upscaling_resize_w")
                height = gr.Number(512, precision=0, minimum=1, label="Height", elem_id="extras_upscaling_resize_h")
                crop = gr.Checkbox(True, label="Crop to fit", elem_id="extras_upscaling_crop")
            with gr.Row():
                tab.upscaler_1 = gr.Dropdown(names, value="None", label="Upscaler 1", elem_id="extras_upscaler_1")
                tab.upscaler_2 = gr.Dropdown(names, value="None", label="Upscaler 2", elem_id="extras_upscaler_2")
            visibility = gr.Slider(0, 1, value=0, step=0.001, label="Upscaler 2 visibility",
                                   elem_id="extras_upscaler_2_visibility")
            tab.button = gr.Button("Upscale", variant="primary", elem_id="extras_generate")
        with gr.Column():
            tab.result = gr.Image(label="Result", type="pil", format="png", interactive=False,
                                  elem_id="extras_result", height=360)
            tab.info = gr.HTML("", elem_id="extras_info")
    tab.button.click(upscale, inputs=[tab.image, resize_mode, scale, width, height, crop, tab.upscaler_1,
                                      tab.upscaler_2, visibility],
                     outputs=[tab.result, tab.info], api_visibility="undocumented")
    parent.select(refresh_choices, inputs=[tab.upscaler_1, tab.upscaler_2], outputs=[tab.upscaler_1, tab.upscaler_2],
                  api_visibility="undocumented", show_progress="hidden")
    return tab


def refresh_choices(first: str, second: str):
    """Both dropdowns with the current list, keeping each choice that is still listed."""
    names = upscaler_names()
    return [gr.Dropdown(choices=names, value=value if value in names else "None") for value in (first, second)]
