"""Inpainting checkpoints: which UNets take mask conditioning, and the extra input channels they take.

SDXL inpainting checkpoints (``sdxl-inpaint``) take the same 5 channels by the same rules; only the VAE differs.

An SD1.x inpainting UNet (RunwayML's ``sd-v1-5-inpainting`` and its merges) reads 9 channels where an ordinary one
reads 4: the noisy latent, then 1 channel of repaint mask and 4 of the masked image's latents, concatenated at every
UNet call (A1111's ``c_concat``, diffusers' ``StableDiffusionInpaintPipeline``). Its output stays 4 channels.

A1111's rules (``StableDiffusionProcessing.inpainting_image_conditioning``), kept here as tensor arithmetic; the
pipeline runs the VAE:

* the mask is the processed mask (1 = repaint: inverted, blurred, cropped as img2img prepared it) at image size,
  rounded to 0/1 (unless ``mask_round`` is off), then taken to latent size by nearest-neighbour sampling;
* the masked image is ``lerp(image, image * (1 - mask), inpainting_mask_weight)`` in the VAE's [-1, 1] range, so a
  weight of 1 hides the repainted area completely (0 is mid-gray) and 0 shows the model the whole image;
* without a mask (txt2img, plain img2img, Hires fix's second pass) the mask is all ones: txt2img's masked image is
  all gray (A1111's ``txt2img_image_conditioning``), and img2img's is the image faded by the weight.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

LATENT_CHANNELS = 4
EXTRA_CHANNELS = 5  # 1 mask + 4 masked-image latents
#: UNet input channels Serena runs, and what they are.
KNOWN_IN_CHANNELS = {LATENT_CHANNELS: "SD1.x, SDXL", LATENT_CHANNELS + EXTRA_CHANNELS: "SD1.x, SDXL inpainting"}


def check_in_channels(channels: int, name: str) -> int:
    """``channels`` if Serena runs a UNet with that many inputs: 4 (an ordinary checkpoint) or 9 (inpainting).

    The count is the ``in_channels`` ``modules.model_families`` read from the shape of ``conv_in``
    (``model.diffusion_model.input_blocks.0.0.weight``) or a folder's ``unet/config.json``. Families Serena cannot
    run (InstructPix2Pix's 8) are refused there by name; this refuses the counts no family explains.

    Raises:
        ValueError: another count, naming the file.
    """
    channels = int(channels)
    if channels not in KNOWN_IN_CHANNELS:
        known = ", ".join(f"{n} ({what})" for n, what in KNOWN_IN_CHANNELS.items())
        raise ValueError(f"{name}: its UNet takes {channels} input channels; Serena runs {known}")
    return channels


def takes_image_conditioning(model) -> bool:
    """Whether ``model``'s UNet reads the mask and masked-image channels (a model without a UNet does not)."""
    unet = getattr(model, "unet", None)
    return unet is not None and int(unet.config.in_channels) == LATENT_CHANNELS + EXTRA_CHANNELS


def pixel_mask(mask: Image.Image | None, width: int, height: int, invert: bool,
               round_mask: bool = True) -> torch.Tensor:
    """``[1, 1, height, width]``: 1 where the image is repainted, rounded to 0/1 unless ``round_mask`` is off
    (A1111's ``mask_round``); all ones without a mask."""
    if mask is None:
        return torch.ones(1, 1, height, width)
    mask = mask.convert("L")
    if mask.size != (width, height):
        mask = mask.resize((width, height), Image.BILINEAR)
    t = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)
    if round_mask:
        t = t.round()
    return (1.0 - t if invert else t)[None, None]


def masked_pixels(pixels: torch.Tensor, mask: torch.Tensor, weight: float) -> torch.Tensor:
    """The image the model is shown: the repainted area faded to gray (0) by ``weight`` (0 to 1)."""
    mask = mask.to(device=pixels.device, dtype=pixels.dtype)
    return torch.lerp(pixels, pixels * (1.0 - mask), float(weight))


def hides_everything(mask: torch.Tensor, weight: float) -> bool:
    """Whether the masked image is all gray whatever the image (a full mask at weight 1): no need to read it."""
    return float(weight) == 1.0 and bool((mask == 1).all())


def concat_channels(mask: torch.Tensor, masked_latents: torch.Tensor) -> torch.Tensor:
    """``[batch, 5, h, w]``: the mask at the latents' size, then the masked image's latents (A1111's order)."""
    small = torch.nn.functional.interpolate(mask.to(masked_latents), size=masked_latents.shape[-2:])
    return torch.cat([small.expand(len(masked_latents), -1, -1, -1), masked_latents], dim=1)
