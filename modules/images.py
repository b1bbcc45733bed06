"""Saving generated images: A1111-style numbered names in dated folders, parameters embedded, never overwriting."""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, PngImagePlugin

from modules import image_parameters, plugins, shared

_NUMBERED = re.compile(r"^(\d+)-")


@dataclass
class ImageSaveParams:
    """What ``on_image_saved`` receives."""

    image: Image.Image
    p: Any
    filename: str
    pnginfo: dict = field(default_factory=dict)


def output_dir(p) -> str:
    """``outdir_samples`` if set, else the txt2img/img2img folder, under the data folder, then today's date."""
    opts = shared.opts
    base = p.outpath_samples or opts.outdir_samples or (
        opts.outdir_img2img_samples if p.mode == "img2img" else opts.outdir_txt2img_samples)
    return os.path.join(shared.data_paths.resolve(base), datetime.date.today().isoformat())


def _next_number(directory: str) -> int:
    numbers = [int(m.group(1)) for name in os.listdir(directory) if (m := _NUMBERED.match(name))]
    return max(numbers, default=-1) + 1


def encode_image(image: Image.Image, fmt: str, parameters: str | None, target) -> None:
    """Write ``image`` to ``target`` (path or file object) as ``fmt`` with its parameters embedded."""
    fmt = fmt.lower()
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        if parameters:
            info.add_text("parameters", parameters)
        image.save(target, format="PNG", pnginfo=info)
        return
    exif = Image.Exif()
    if parameters:
        # A1111's place for JPEG/WEBP parameters: the Exif IFD's UserComment, "UNICODE" code + UTF-16 BE (piexif's
        # encoding="unicode"), so a prompt in any script survives; the one reader is modules.image_parameters.
        exif.get_ifd(image_parameters.EXIF_IFD)[image_parameters.EXIF_USER_COMMENT] = (
            image_parameters.UNICODE_CODE + parameters.encode("utf-16-be"))
    image.convert("RGB").save(target, format="JPEG" if fmt in ("jpg", "jpeg") else fmt.upper(), exif=exif,
                              quality=95)


def save_image(image: Image.Image, p, parameters: str, seed: int) -> str:
    """Save one generated image; returns its path. Fires ``on_image_saved``.

    An ``OSError`` (read-only or full outputs folder) names the path and leaves no partial file behind.
    """
    fmt = shared.opts.samples_format
    directory = output_dir(p)
    os.makedirs(directory, exist_ok=True)
    number = _next_number(directory)
    while True:
        filename = os.path.join(directory, f"{number:05d}-{seed}.{fmt}")
        try:
            f = open(filename, "xb")  # "x": never overwrite a file someone else just wrote
            break
        except FileExistsError:
            number += 1
        except OSError as e:
            raise OSError(e.errno, e.strerror, filename) from e
    try:
        with f:
            encode_image(image, fmt, parameters, f)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(filename)
        raise OSError(e.errno, e.strerror or str(e), filename) from e
    params = ImageSaveParams(image=image, p=p, filename=filename, pnginfo={"parameters": parameters})
    plugins.host.call_reporting("on_image_saved", p.warnings, params=params)
    return filename
