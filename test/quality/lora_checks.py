"""What the SD1.x and SDXL LoRA tests share: a weights checksum, and the images of one prompt at several weights."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from modules import processing


def weights_digest(model) -> str:
    """sha256 over every weight of the UNet, the text encoder(s) and the VAE: equal means bitwise restored."""
    digest = hashlib.sha256()
    for component in (model.unet, model.text_encoder, getattr(model, "text_encoder_2", None), model.vae):
        for name, tensor in component.state_dict().items() if component is not None else ():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=torch.uint8).numpy())
    return digest.hexdigest()


def generate(prompt: str, **kw) -> tuple[np.ndarray, processing.Processed]:
    """A 64x64, 2-step Euler txt2img of ``prompt`` (seed 11), as int16 pixels, and its ``Processed``."""
    fields = {"sampler_name": "Euler", "steps": 2, "width": 64, "height": 64, "seed": 11, **kw}
    p = processing.StableDiffusionProcessingTxt2Img(prompt=prompt, do_not_save_samples=True, **fields)
    processed = processing.process_images(p)
    return np.asarray(processed.images[0], dtype=np.int16), processed


def images_by_weight(model, prompt: str, name: str, weights=("1", "0", "0.5"), **kw) -> dict:
    """``prompt`` plain before (``"before"``) and after (``"after"``), and with ``<lora:name:w>`` for each of
    ``weights`` (keyed by ``w``); checks that weight 1 gave no warning and every weight is bitwise restored."""
    images = {"before": generate(prompt, **kw)[0]}
    digest = weights_digest(model)
    for weight in weights:
        images[weight], processed = generate(f"{prompt} <lora:{name}:{weight}>", **kw)
        if weight == "1":
            assert processed.warnings == []
        assert weights_digest(model) == digest
    images["after"] = generate(prompt, **kw)[0]
    return images
