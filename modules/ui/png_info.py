"""The PNG Info tab: drop an image, read the generation parameters stored in it, send them to txt2img/img2img.

Parameters are read by the reader the API's ``png-info`` uses (``modules.image_parameters``): the PNG text chunk
``parameters`` or the EXIF UserComment (JPEG/WEBP). "Send to" fills the form fields and the override settings
field of the target tab, as a paste does, and switches to it; img2img also receives the image.
"""

from __future__ import annotations

import gradio as gr

from modules import image_parameters, infotext, shared
from modules.ui import common


def open_image(path):
    from PIL import Image

    if not path:
        return None
    image = Image.open(path)
    image.load()
    return image


def describe(path) -> tuple[str, str]:
    """For the tab: ``(parameters text, HTML of the parsed parameters and other text chunks)``."""
    try:
        image = open_image(path)
    except (OSError, ValueError) as e:
        return "", common.status_html(f"Not an image Serena can read: {e}", "error")
    if image is None:
        return "", ""
    text, items = image_parameters.read_parameters(image)
    if not text:
        extra = "".join(f"<p><b>{common.esc(k)}</b>: {common.esc(v)}</p>" for k, v in items.items())
        return "", common.status_html("No generation parameters in this image", "warn") + extra
    rows = []
    try:
        params = infotext.parse_generation_parameters(text)
    except Exception as e:  # noqa: BLE001 - the raw text is still shown
        params = {}
        rows.append(f"<tr><td colspan=2>could not parse: {common.esc(e)}</td></tr>")
    for key, value in params.items():
        rows.append(f"<tr><td style='padding-right:12px'><b>{common.esc(key)}</b></td>"
                    f"<td>{common.esc(value)}</td></tr>")
    for key, value in items.items():
        rows.append(f"<tr><td style='padding-right:12px'><b>{common.esc(key)}</b></td>"
                    f"<td>{common.esc(value)}</td></tr>")
    return text, f"<table class='serena-pnginfo'>{''.join(rows)}</table>"


class PngInfoTab:
    image = None
    parameters = None
    details = None
    send_txt2img = None
    send_img2img = None
    status = None


def create_tab() -> PngInfoTab:
    tab = PngInfoTab()
    with gr.Row(equal_height=False):
        with gr.Column():
            tab.image = gr.Image(label="Source", type="filepath", format="png", sources=["upload", "clipboard"],
                                 elem_id="pnginfo_image", height=360)
        with gr.Column():
            tab.parameters = gr.Textbox(label="Parameters", lines=6, max_lines=20, interactive=False,
                                        elem_id="pnginfo_parameters", buttons=["copy"])
            with gr.Row():
                tab.send_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo_send_txt2img")
                tab.send_img2img = gr.Button("Send to img2img", elem_id="pnginfo_send_img2img")
            tab.status = gr.HTML("", elem_id="pnginfo_status")
            tab.details = gr.HTML("", elem_id="pnginfo_details")
    tab.image.change(describe, inputs=[tab.image], outputs=[tab.parameters, tab.details],
                     api_visibility="undocumented", show_progress="hidden")
    return tab


def wire_send(tab: PngInfoTab, txt2img_form, img2img_form, main_tabs):
    """"Send to" buttons: fill the target's fields and override field, switch tabs (img2img gets the image)."""
    from modules.ui import generation

    def send(form, target_id, with_image):
        def fn(text, path):
            targets = form.paste_targets()
            if not text:
                out = [gr.skip()] * len(targets) + [gr.skip(),
                                                    common.status_html("No parameters to send", "warn")]
                return out + ([gr.skip(), gr.skip(), gr.skip()] if with_image else [])
            values, status = generation.paste_updates(form, text, with_seed=bool(shared.opts.send_seed))
            out = values + [gr.Tabs(selected=target_id), status]
            if with_image:
                out += [open_image(path) if path else gr.skip(), "img2img", gr.Tabs(selected="img2img_mode_img2img")]
            return out
        return fn

    t2i_outputs = txt2img_form.paste_targets() + [main_tabs, tab.status]
    tab.send_txt2img.click(send(txt2img_form, "txt2img", False), inputs=[tab.parameters, tab.image],
                           outputs=t2i_outputs, api_visibility="undocumented", show_progress="hidden")
    i2i_outputs = img2img_form.paste_targets() + [main_tabs, tab.status, img2img_form.init_image,
                                                  img2img_form.mode_tabs_state, img2img_form.mode_tabs]
    tab.send_img2img.click(send(img2img_form, "img2img", True), inputs=[tab.parameters, tab.image],
                           outputs=i2i_outputs, api_visibility="undocumented", show_progress="hidden")
