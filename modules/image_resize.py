"""img2img's resize modes (A1111's ``images.resize_image``): how an image of any size becomes width x height.

0 "Just resize" stretches; 1 "Crop and resize" scales to cover and cuts the overflow, centred; 2 "Resize and
fill" scales to fit, centred, and fills the bands by stretching the image's edge rows or columns. Mode 3 "Just
resize (latent upscale)" stretches the encoded latents instead of the pixels (``modules.sd_pipeline``): here it
stands for nothing of its own and is refused, so a caller never resizes pixels for it by mistake.

Scaling is Lanczos, A1111's default (its ``upscaler_for_img2img`` option is unset out of the box).
"""

from __future__ import annotations

from PIL import Image

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL, LATENT_RESIZE = range(4)


def _scaled(image: Image.Image, width: int, height: int) -> Image.Image:
    return image.resize((width, height), resample=Image.Resampling.LANCZOS)


def resize_image(resize_mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """``image`` at ``width`` x ``height`` by ``resize_mode`` 0, 1 or 2 (see the module docstring).

    Modes 1 and 2 return an image of ``image``'s mode on a black canvas before the paste (A1111 pastes on RGB;
    keeping the mode lets a mask stay a mask)."""
    if resize_mode == JUST_RESIZE:
        return _scaled(image, width, height)
    if resize_mode not in (CROP_AND_RESIZE, RESIZE_AND_FILL):
        raise ValueError(f"resize mode {resize_mode!r} does not resize pixels")
    ratio, src_ratio = width / height, image.width / image.height
    cover = resize_mode == CROP_AND_RESIZE
    # Crop scales by the larger factor (covers), fill by the smaller (fits); the other side keeps the aspect.
    # At least one pixel: a very long image fitted into a small square would otherwise scale to nothing.
    if (ratio > src_ratio) == cover:
        src_w, src_h = width, max(1, image.height * width // image.width)
    else:
        src_w, src_h = max(1, image.width * height // image.height), height
    resized = _scaled(image, src_w, src_h)
    result = Image.new(image.mode, (width, height))
    result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if cover:
        return result
    if ratio < src_ratio:  # bands above and below: the first and last rows, stretched
        band = height // 2 - src_h // 2
        if band > 0:
            result.paste(resized.resize((width, band), box=(0, 0, width, 0)), box=(0, 0))
            result.paste(resized.resize((width, band), box=(0, resized.height, width, resized.height)),
                         box=(0, band + src_h))
    elif ratio > src_ratio:  # bands left and right: the first and last columns, stretched
        band = width // 2 - src_w // 2
        if band > 0:
            result.paste(resized.resize((band, height), box=(0, 0, 0, height)), box=(0, 0))
            result.paste(resized.resize((band, height), box=(resized.width, 0, resized.width, height)),
                         box=(band + src_w, 0))
    return result
