"""Images in API requests and responses: base64 (or data URL) to PIL within this server's limits, and PIL to
base64 in ``samples_format`` with the parameters embedded."""

from __future__ import annotations

import base64
import binascii
import io
import re

from PIL import Image, UnidentifiedImageError

from modules import images, shared
from modules.request_preparation import RequestFieldError, over_limit


_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
_ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")


def _open_image(data: str, field: str) -> Image.Image:
    """A PIL image from base64 or a data URL, its header read but not its pixels; ``RequestFieldError`` naming
    ``field`` when it is not one.

    URLs are refused: the server never fetches what a request points at.
    """
    if not isinstance(data, str) or not data.strip():
        raise RequestFieldError({field: "no image given"})
    if data.startswith(("http://", "https://")):
        raise RequestFieldError({field: "URLs are not fetched; send the image as base64 or a data URL"})
    payload = _DATA_URL.sub("", data.strip(), count=1)
    try:
        raw = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestFieldError({field: "not valid base64"}) from None
    try:
        image = Image.open(io.BytesIO(raw))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise RequestFieldError({field: f"not a readable image ({e})"}) from None
    if image.format not in _ACCEPTED_FORMATS:
        raise RequestFieldError({field: f"{image.format} images are not accepted; send PNG, JPEG or WEBP"})
    return image


def check_image_count(images: list, field: str) -> None:
    """``RequestFieldError`` naming ``field`` when a request sends more images than ``api_max_input_images``."""
    problem = over_limit("api_max_input_images", len(images), f"{len(images)} images", "are")
    if problem:
        raise RequestFieldError({field: problem})


def decode_images(items: list[tuple[str, str]]) -> list[Image.Image]:
    """The images of ``(field, base64)`` pairs, decoded; ``RequestFieldError`` naming the field when one is not an
    image, or when together they hold more pixels than ``api_max_input_pixels``.

    The pixel limit is checked from the headers, before any pixel is decoded: a 13,000 x 13,000 PNG of one colour
    is 27 KB of base64 and 565 MB once decoded.
    """
    opts = shared.opts
    opened = [(field, _open_image(data, field)) for field, data in items]
    total = 0
    for field, image in opened:
        total += image.width * image.height
        if total > opts.api_max_input_pixels:
            raise RequestFieldError({field: f"the images up to this one hold {total} pixels, above this server's "
                                            f"limit of {opts.api_max_input_pixels} for one request (option "
                                            f"api_max_input_pixels)"})
    for field, image in opened:
        try:
            image.load()
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise RequestFieldError({field: f"not a readable image ({e})"}) from None
    return [image for _, image in opened]


# EXIF segments hold at most 64 KiB; longer parameters only fit in a PNG text chunk.
_EXIF_TEXT_LIMIT = 60000


def encode_image(image: Image.Image) -> str:
    """Raw base64 of ``image`` in ``samples_format`` with its ``parameters`` embedded (as saved files are).

    JPEG/WEBP is used when it keeps everything: no alpha channel and parameters short enough for EXIF;
    otherwise PNG (a text chunk holds any length and keeps transparency).
    """
    parameters = image.info.get("parameters")
    fmt = str(shared.opts.samples_format).lower()
    simple = image.mode in ("RGB", "L") and len((parameters or "").encode("utf-16-be")) < _EXIF_TEXT_LIMIT
    if fmt not in ("jpg", "jpeg", "webp") or not simple:
        fmt = "png"
    buffer = io.BytesIO()
    images.encode_image(image, fmt, parameters, buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
