"""Inpainting masks, as A1111 reads and shapes them (its ``processing.create_binary_mask`` and ``masking``).

White (255) marks what is repainted. A mask arrives as any image: one with transparency is read from its alpha
channel (a painted layer), anything else as greyscale. Then it may be blurred (a Gaussian per axis with A1111's
kernel size), cropped to its region for "Only masked", and used to fill the masked area with the image's blurred
colours (masked content "fill").
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter, ImageOps

# (blur radius, composite repeats) of A1111's fill, composited in this order: far colours first, near ones on top.
_FILL_LAYERS = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))


def binary_mask(image: Image.Image, round_alpha: bool = True) -> Image.Image:
    """The mask as an L image: an RGBA image's alpha when it is not fully opaque (rounded to 0/255 at 128 unless
    ``round_alpha`` is false, A1111's ``mask_round``), else the image in greyscale."""
    if image.mode in ("LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        alpha = image.getchannel("A")
        return alpha.point(lambda v: 255 if v > 128 else 0) if round_alpha else alpha
    return image.convert("L")


def kernel_size(sigma: int) -> int:
    """A1111's Gaussian kernel width for a blur of ``sigma`` pixels: 2 * int(2.5 * sigma + 0.5) + 1."""
    return 2 * int(2.5 * sigma + 0.5) + 1


def _gaussian(sigma: int) -> np.ndarray:
    size = kernel_size(sigma)
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    kernel = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return kernel / kernel.sum()


def blur(mask: Image.Image, blur_x: int, blur_y: int) -> Image.Image:
    """``mask`` blurred horizontally by ``blur_x`` and then vertically by ``blur_y`` pixels (0: not on that axis).

    A1111 runs OpenCV's ``GaussianBlur`` with a (k, 1) then a (1, k) kernel, k = ``kernel_size``; this is the same
    kernel and the same border (reflected without repeating the edge), computed in floating point, so a value may
    differ from OpenCV's fixed-point result by one level."""
    from scipy import ndimage  # not at import: pasting an infotext reads this package's labels, never blurs

    arr = np.asarray(mask.convert("L"), dtype=np.float64)
    for axis, sigma in ((1, blur_x), (0, blur_y)):
        if sigma > 0:
            arr = ndimage.correlate1d(arr, _gaussian(sigma), axis=axis, mode="mirror")
            arr = np.floor(arr + 0.5)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")


def crop_region(mask: Image.Image, pad: int = 0) -> tuple[int, int, int, int] | None:
    """``(x1, y1, x2, y2)``: the box around every non-black pixel, grown by ``pad`` on each side within the mask;
    ``None`` for an all-black mask (A1111's ``get_crop_region_v2``)."""
    box = mask.getbbox()
    if not box:
        return None
    x1, y1, x2, y2 = box
    return max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, mask.width), min(y2 + pad, mask.height)


def _grow(c1: int, c2: int, wanted: int, limit: int) -> tuple[int, int]:
    """The segment ``c1..c2`` grown by ``wanted`` around its centre, shifted back inside ``0..limit``."""
    c1 -= wanted // 2
    c2 += wanted - wanted // 2
    if c2 >= limit:
        c1, c2 = c1 - (c2 - limit), limit
    if c1 < 0:
        c1, c2 = 0, c2 - c1
    return c1, min(c2, limit)


def expand_crop_region(region: tuple[int, int, int, int], processing_width: int, processing_height: int,
                       image_width: int, image_height: int) -> tuple[int, int, int, int]:
    """``region`` grown on its short side to the processing size's aspect ratio, staying inside the image (A1111's
    ``expand_crop_region``): a 128x32 mask region processed at 512x512 becomes 128x128. Where the image is too
    small for the aspect, the region is the image's whole extent on that side."""
    x1, y1, x2, y2 = region
    ratio = processing_width / processing_height
    if (x2 - x1) / (y2 - y1) > ratio:
        y1, y2 = _grow(y1, y2, int((x2 - x1) / ratio - (y2 - y1)), image_height)
    else:
        x1, x2 = _grow(x1, x2, int((y2 - y1) * ratio - (x2 - x1)), image_width)
    return x1, y1, x2, y2


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """``image`` with its masked area replaced by its own colours from around it: the unmasked pixels blurred at
    ever smaller radii and composited (A1111's masked content "fill"); unmasked pixels come back unchanged."""
    result = Image.new("RGBA", image.size)
    unmasked = Image.new("RGBa", image.size)
    unmasked.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in _FILL_LAYERS:
        blurred = unmasked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            result.alpha_composite(blurred)
    return result.convert("RGB")
