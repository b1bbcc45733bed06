"""The img2img tab: an init image (or an image with a painted or uploaded mask) plus the shared form.

Three input modes, as sub-tabs (A1111's img2img, inpaint and inpaint upload): *img2img* takes one image;
*Inpaint* paints the mask with the brush over the image (white strokes mark what is repainted); *Inpaint
upload* takes the image and a separate mask (white = repaint). "Masked content" chooses whether the masked or the
unmasked area is repainted.
"""

from __future__ import annotations

import gradio as gr

from modules.ui import generation

TAB = "img2img"
MODES = ("img2img", "inpaint", "inpaint_upload")


def mask_from_layers(layers) -> "object | None":
    """One L-mode mask (255 = repaint) from the brush layers of an ``ImageEditor`` value; ``None`` if unpainted."""
    from PIL import ImageChops

    mask = None
    for layer in layers or []:
        if layer is None:
            continue
        alpha = layer.convert("RGBA").getchannel("A")
        mask = alpha if mask is None else ImageChops.lighter(mask, alpha)
    if mask is None or mask.getbbox() is None:
        return None
    return mask.point(lambda v: 255 if v > 0 else 0)


def inputs_for_mode(mode: str, image, editor, upload_image, upload_mask):
    """``(init image, mask or None)`` for the selected sub-tab; ``ValueError`` when the image is missing."""
    if mode == "inpaint":
        editor = editor or {}
        init = editor.get("background") if isinstance(editor, dict) else None
        if init is None:
            raise ValueError("Inpaint: upload an image, then paint the area to repaint")
        mask = mask_from_layers(editor.get("layers"))
        if mask is None:
            raise ValueError("Inpaint: paint the area to repaint with the brush (nothing is painted yet)")
        return init.convert("RGB"), mask
    if mode == "inpaint_upload":
        if upload_image is None or upload_mask is None:
            raise ValueError("Inpaint upload: upload both the image and its mask")
        return upload_image.convert("RGB"), upload_mask.convert("L")
    if image is None:
        raise ValueError("img2img: upload an image first")
    return image.convert("RGB"), None


def make_p(extra: list, values: dict):
    from modules import processing, request_preparation

    mode, image, editor, upload_image, upload_mask, mask_invert = extra
    init, mask = inputs_for_mode(mode or "img2img", image, editor, upload_image, upload_mask)
    return request_preparation.build_processing(processing.StableDiffusionProcessingImg2Img, dict(
        generation.common_p_kwargs(values), init_images=[init], mask=mask,
        inpainting_mask_invert=1 if mask_invert == "Inpaint not masked" else 0,
        denoising_strength=float(values["denoising_strength"])))


def _constant(value):
    def fn():
        return value
    return fn


def create_tab() -> generation.GenerationForm:
    form = generation.GenerationForm(tab=TAB)
    generation.build_prompt_row(form)
    mode = gr.State("img2img")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=320, elem_id=f"{TAB}_settings"):
            with gr.Tabs(elem_id="img2img_mode_tabs") as mode_tabs:
                with gr.Tab("img2img", id="img2img_mode_img2img") as tab_img2img:
                    image = gr.Image(label="Image for img2img", type="pil", format="png", image_mode="RGBA",
                                     sources=["upload", "clipboard"], elem_id="img2img_image", height=320)
                with gr.Tab("Inpaint", id="img2img_mode_inpaint") as tab_inpaint:
                    editor = gr.ImageEditor(label="Image for inpainting; paint the area to repaint", type="pil",
                                            format="png", sources=["upload", "clipboard"], elem_id="img2img_inpaint",
                                            height=320, layers=False, eraser=gr.Eraser(),
                                            brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"))
                with gr.Tab("Inpaint upload", id="img2img_mode_inpaint_upload") as tab_upload:
                    upload_image = gr.Image(label="Image", type="pil", format="png", sources=["upload", "clipboard"],
                                            elem_id="img2img_inpaint_upload_image", height=240)
                    upload_mask = gr.Image(label="Mask (white = repaint)", type="pil", format="png",
                                           image_mode="L", sources=["upload", "clipboard"],
                                           elem_id="img2img_inpaint_upload_mask", height=240)
            for tab, name in ((tab_img2img, "img2img"), (tab_inpaint, "inpaint"), (tab_upload, "inpaint_upload")):
                tab.select(_constant(name), outputs=[mode], queue=False, api_visibility="undocumented",
                           show_progress="hidden")
            mask_invert = gr.Radio(["Inpaint masked", "Inpaint not masked"], value="Inpaint masked",
                                   label="Mask mode (inpaint tabs)", elem_id="img2img_mask_mode")
            generation.build_parameters(form, img2img=True)
        with gr.Column(scale=1, min_width=320, elem_id=f"{TAB}_results"):
            generation.build_outputs(form)
    form.extra_inputs = [mode, image, editor, upload_image, upload_mask, mask_invert]
    form.init_image = image
    form.mode_tabs_state = mode
    form.mode_tabs = mode_tabs
    generation.wire(form, make_p, run_name=TAB)
    return form
