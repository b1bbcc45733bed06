"""The img2img tab: an init image (or an image with a painted or uploaded mask) plus the shared form.

Three input modes, as sub-tabs (A1111's img2img, inpaint and inpaint upload): *img2img* takes one image;
*Inpaint* paints the mask with the brush over the image (white strokes mark what is repainted); *Inpaint
upload* takes the image and a separate mask (white = repaint). "Resize mode" applies to every tab; the inpaint
tabs show A1111's inpaint controls with its UI defaults: mask blur 4, mask mode (repaint the masked or the unmasked
area), masked content "original", inpaint area "Whole picture", only-masked padding 32. Their labels become the
processing fields here, and the request is built and checked by the preparation the API shares.
"""

from __future__ import annotations

import gradio as gr

from modules import image_resize, img2img_inputs
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


def _index(labels, value, default: int) -> int:
    return labels.index(value) if value in labels else default


def inpaint_fields(resize_mode, mask_blur, mask_invert, fill, area, padding) -> dict:
    """The processing fields of the resize and inpaint controls (radio labels to A1111's indices)."""
    return dict(
        resize_mode=_index(image_resize.RESIZE_MODES, resize_mode, 0),
        mask_blur=generation.as_int(mask_blur, 4),
        inpainting_mask_invert=_index(img2img_inputs.MASK_MODES, mask_invert, 0),
        inpainting_fill=_index(img2img_inputs.MASKED_CONTENT, fill, img2img_inputs.ORIGINAL),
        inpaint_full_res=_index(img2img_inputs.INPAINT_AREAS, area, 0) == 1,
        inpaint_full_res_padding=generation.as_int(padding, 32))


def make_p(extra: list, values: dict):
    from modules import processing, request_preparation

    mode, image, editor, upload_image, upload_mask, *controls = extra
    init, mask = inputs_for_mode(mode or "img2img", image, editor, upload_image, upload_mask)
    return request_preparation.build_processing(processing.StableDiffusionProcessingImg2Img, dict(
        generation.common_p_kwargs(values), init_images=[init], mask=mask, **inpaint_fields(*controls),
        denoising_strength=float(values["denoising_strength"])))


def _mode_selected(name: str):
    def fn():
        return name, gr.update(visible=name != "img2img")
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
            resize_mode = gr.Radio(list(image_resize.RESIZE_MODES), value=image_resize.RESIZE_MODES[0],
                                   label="Resize mode", elem_id="img2img_resize_mode")
            with gr.Group(visible=False, elem_id="img2img_inpaint_controls") as inpaint_controls:
                form.mask_blur = gr.Slider(minimum=0, maximum=64, step=1, value=4, precision=0, label="Mask blur",
                                           elem_id="img2img_mask_blur")
                form.inpainting_mask_invert = gr.Radio(list(img2img_inputs.MASK_MODES),
                                                       value=img2img_inputs.MASK_MODES[0], label="Mask mode",
                                                       elem_id="img2img_mask_mode")
                form.inpainting_fill = gr.Radio(list(img2img_inputs.MASKED_CONTENT),
                                                value=img2img_inputs.MASKED_CONTENT[img2img_inputs.ORIGINAL],
                                                label="Masked content", elem_id="img2img_inpainting_fill")
                with gr.Row():
                    form.inpaint_full_res = gr.Radio(list(img2img_inputs.INPAINT_AREAS),
                                                     value=img2img_inputs.INPAINT_AREAS[0], label="Inpaint area",
                                                     elem_id="img2img_inpaint_full_res")
                    form.inpaint_full_res_padding = gr.Slider(minimum=0, maximum=256, step=4, value=32, precision=0,
                                                              label="Only masked padding, pixels",
                                                              elem_id="img2img_inpaint_full_res_padding")
            for tab, name in ((tab_img2img, "img2img"), (tab_inpaint, "inpaint"), (tab_upload, "inpaint_upload")):
                tab.select(_mode_selected(name), outputs=[mode, inpaint_controls], queue=False,
                           api_visibility="undocumented", show_progress="hidden")
            generation.build_parameters(form, img2img=True)
        with gr.Column(scale=1, min_width=320, elem_id=f"{TAB}_results"):
            generation.build_outputs(form)
    form.extra_inputs = [mode, image, editor, upload_image, upload_mask, resize_mode, form.mask_blur,
                         form.inpainting_mask_invert, form.inpainting_fill, form.inpaint_full_res,
                         form.inpaint_full_res_padding]
    form.init_image = image
    form.mode_tabs_state = mode
    form.mode_tabs = mode_tabs
    generation.wire(form, make_p, run_name=TAB)
    return form
