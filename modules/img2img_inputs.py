"""img2img's images and mask made ready for sampling, and the paste-back after it (A1111's
``StableDiffusionProcessingImg2Img.init`` and ``apply_overlay``).

``prepare`` runs once per generation. It reads the mask (``modules.masking``: alpha or greyscale, inverted, blurred
per axis), resizes the init images by ``resize_mode`` (``modules.image_resize``) or, for "Only masked", crops them
to the mask's region (grown by the padding and to the processing aspect ratio) and scales that crop to
width x height, and fills the masked area for masked content "fill". Latent noise and latent nothing act on the
latents (``modules.sd_pipeline``). It also keeps, per init image, the *overlay*: the original where it is kept,
transparent where it is repainted; ``paste_back`` lays it over each generated image (scaled back into its crop
first for "Only masked"), so pixels outside the mask are the original's exactly.

Where Serena differs from A1111 on purpose (``docs/api.md``): a mask of another size than the image is fitted to
the image first (just resize), and so are further init images to the first with "Only masked", so the crop lands
on the same pixels of each; with resize mode 3 the mask and the overlay are stretched as the latents are (A1111
resizes them with "fill" and fails to composite); ``latent_mask`` is fitted to the processing size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from modules import image_resize, masking

# The masked content modes (``inpainting_fill``), inpaint areas (``inpaint_full_res``) and mask modes
# (``inpainting_mask_invert``) by index, as A1111's UI labels them and its infotext writes them.
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
FILL, ORIGINAL, LATENT_NOISE, LATENT_NOTHING = range(4)
INPAINT_AREAS = ("Whole picture", "Only masked")
MASK_MODES = ("Inpaint masked", "Inpaint not masked")


@dataclass(frozen=True)
class Img2ImgInputs:
    """What ``prepare`` made of a generation's init images and mask.

    Attributes:
        images (`tuple`): RGB images to encode, one per init image: width x height (the init image's own size for
            resize mode 3, whose latents are stretched after encoding), cropped and filled as asked.
        mask (PIL ``L`` image or `None`): where the latents are repainted (255), at width x height.
        overlays (`tuple`): RGBA per init image for ``paste_back``; empty without a mask.
        paste_to (`tuple` or `None`): "Only masked": ``(x, y, w, h)`` of the crop in the init image.
        params (`dict`): the infotext fields A1111 writes for these inputs.
        warnings (`tuple`): what was not done as asked (an all-black mask with "Only masked").
    """

    images: tuple
    mask: Any = None
    overlays: tuple = ()
    paste_to: tuple | None = None
    params: dict = field(default_factory=dict)
    warnings: tuple = ()


def flatten(image: Image.Image, background: str) -> Image.Image:
    """``image`` as RGB, transparent parts over ``background`` (A1111's ``img2img_background_color``)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background)
        base.alpha_composite(rgba)
        return base.convert("RGB")
    return image.convert("RGB")


def _fitted(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image_resize.resize_image(image_resize.JUST_RESIZE, image, *size)


def _overlay(image: Image.Image, mask_for_overlay: Image.Image) -> Image.Image:
    """``image`` opaque where the mask is black, transparent where white (premultiplied, as A1111 pastes it)."""
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask_for_overlay.convert("L")))
    return kept.convert("RGBA")


def _shaped_mask(p) -> tuple[Image.Image, dict]:
    """The mask read, inverted and blurred as A1111 does before it is placed, and the infotext fields of that."""
    params = {}
    mask = masking.binary_mask(p.mask, round_alpha=bool(p.mask_round))
    mask = _fitted(mask, p.init_images[0].size)
    if p.inpainting_mask_invert:
        mask = ImageOps.invert(mask)
        params["Mask mode"] = MASK_MODES[1]
    if p.mask_blur_x > 0 or p.mask_blur_y > 0:
        mask = masking.blur(mask, p.mask_blur_x, p.mask_blur_y)
        if p.mask_blur is not None:  # not written when the two axes differ, as in A1111
            params["Mask blur"] = p.mask_blur
    return mask, params


def prepare(p, *, background: str = "#ffffff") -> Img2ImgInputs:
    """``p``'s init images and mask (its A1111 fields) ready for sampling; see the module docstring."""
    width, height, resize_mode = p.width, p.height, p.resize_mode
    latent_resize = resize_mode == image_resize.LATENT_RESIZE
    pixel_mode = image_resize.JUST_RESIZE if latent_resize else resize_mode
    flat = [flatten(image, background) for image in p.init_images]
    # Resize mode 3 encodes the images at their own size: the pipeline stretches their latents.
    whole = tuple(flat) if latent_resize else tuple(image_resize.resize_image(resize_mode, image, width, height)
                                                   for image in flat)
    if p.mask is None:
        return Img2ImgInputs(images=whole)
    mask, params = _shaped_mask(p)
    region = paste_to = None
    if p.inpaint_full_res:
        region = masking.crop_region(mask, p.inpaint_full_res_padding)
        if region is None:
            return Img2ImgInputs(images=whole, warnings=(
                'Unable to perform "Inpaint Only mask" because mask is blank, switch to img2img mode.',))
        region = masking.expand_crop_region(region, width, height, mask.width, mask.height)
        x1, y1, x2, y2 = region
        paste_to = (x1, y1, x2 - x1, y2 - y1)
        params.update({"Inpaint area": INPAINT_AREAS[1], "Masked area padding": p.inpaint_full_res_padding})
        # The overlay is the whole init image; what is sampled is the crop, scaled to width x height.
        originals = [_fitted(image, mask.size) for image in flat]
        mask_for_overlay = mask
        mask = image_resize.resize_image(image_resize.RESIZE_AND_FILL, mask.crop(region), width, height)
        images = [image_resize.resize_image(image_resize.RESIZE_AND_FILL, image.crop(region), width, height)
                  for image in originals]
    else:
        mask = image_resize.resize_image(pixel_mode, mask, width, height)
        # Doubled: half-grey and brighter is all generated image, so a blurred edge blends only on its outer half.
        doubled = np.clip(np.asarray(mask, dtype=np.float32) * 2, 0, 255).astype(np.uint8)
        mask_for_overlay = Image.fromarray(doubled, "L")
        originals = ([image_resize.resize_image(pixel_mode, image, width, height) for image in flat]
                     if latent_resize else list(whole))
        images = list(whole)
    overlays = tuple(_overlay(image, mask_for_overlay) for image in originals)
    latent_mask = mask if p.latent_mask is None else _fitted(p.latent_mask.convert("L"), (width, height))
    fill = int(p.inpainting_fill)
    if fill != ORIGINAL:
        images = [masking.fill(image, _fitted(latent_mask, image.size)) for image in images]
        params["Masked content"] = MASKED_CONTENT[fill]
    return Img2ImgInputs(images=tuple(images), mask=latent_mask, overlays=overlays, paste_to=paste_to,
                         params=params)


def paste_back(image: Image.Image, inputs: Img2ImgInputs, index: int) -> Image.Image:
    """Generated ``image`` (batch position ``index``) laid under its init image's overlay; "Only masked" first puts
    it back into its crop of the init image (A1111's ``apply_overlay``, ``uncrop``)."""
    if not inputs.overlays:
        return image
    overlay = inputs.overlays[index % len(inputs.overlays)]
    if inputs.paste_to is not None:
        x, y, w, h = inputs.paste_to
        base = Image.new("RGBA", overlay.size)
        base.paste(image_resize.resize_image(image_resize.CROP_AND_RESIZE, image, w, h), (x, y))
        image = base
    image = image.convert("RGBA")
    image.alpha_composite(overlay)
    return image.convert("RGB")
