"""Build tiny random-weight SDXL checkpoints for tests: a base and a refiner, as single files in the original
layout and the base as a diffusers folder too.

The weights are random (seeded), so images are noise; what matters is that every SDXL code path runs on a CPU in
well under a second: both text encoders (CLIP ViT-L in transformers' layout, bigG in open_clip's with fused
attention and a projection narrower than its width, so a transposed or mis-split tensor cannot fit), the UNet's
added time/text embedding (``label_emb``), two transformer layers per attention block at the second level and the
SDXL block order (a plain level first). The full 49,408-token vocabulary and 77 positions are kept.

Writes, under ``--out-dir`` (default: Serena's folder), in fp16 with the configs in ``serena_config`` metadata:
  models/Stable-diffusion/serena-tiny-xl.safetensors          (seed 20240610)
  models/Stable-diffusion/serena-tiny-xl-refiner.safetensors  (seed 20240620)
  models/Stable-diffusion/serena-tiny-xl-diffusers/           (the base's weights, diffusers folder, fp32)

With ``--inpainting`` it writes, instead, an SDXL *inpainting* checkpoint of the base's dims, whose UNet reads 9
channels (4 latent + 1 mask + 4 masked-image latent, ``modules.inpaint_conditioning``):
  models/Stable-diffusion/serena-tiny-xl-inpaint.safetensors  (seed 20240630)

Usage: ``venv/bin/python tools/make_tiny_sdxl.py [--out-dir DIR] [--inpainting]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

from modules import sd_models_writer, sd_models_xl  # noqa: E402

TIME_DIM = 8  # addition_time_embed_dim: each micro-conditioning number's sinusoidal width
CLIP_L = dict(vocab_size=49408, max_position_embeddings=77, hidden_size=32, intermediate_size=37, num_attention_heads=4,
              num_hidden_layers=2, projection_dim=32, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2,
              pad_token_id=1)
BIGG = dict(CLIP_L, hidden_size=64, intermediate_size=72, num_attention_heads=4, num_hidden_layers=3,
            projection_dim=48, hidden_act="gelu")


def unet_config(refiner: bool = False, in_channels: int = 4) -> dict:
    """The base: a plain level then a cross-attention level (SDXL's order), context = CLIP-L + bigG widths and
    the pooled bigG plus six micro-conditioning numbers; the refiner: bigG's width, five numbers."""
    context = BIGG["hidden_size"] + (0 if refiner else CLIP_L["hidden_size"])
    return dict(
        sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=2, norm_num_groups=16,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4), cross_attention_dim=context, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=BIGG["projection_dim"] + (5 if refiner else 6) * TIME_DIM,
    )


VAE_CONFIG = dict(
    sample_size=64, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
    block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.13025,
)
BASE_FILE, BASE_SEED = "serena-tiny-xl.safetensors", 20240610
REFINER_FILE, REFINER_SEED = "serena-tiny-xl-refiner.safetensors", 20240620
FOLDER = "serena-tiny-xl-diffusers"
INPAINT_FILE, INPAINT_SEED, INPAINT_IN_CHANNELS = "serena-tiny-xl-inpaint.safetensors", 20240630, 9


def build(seed: int, refiner: bool = False, in_channels: int = 4) -> dict:
    """The components of one tiny SDXL checkpoint, each seeded on its own (seed, seed + 1, ...)."""
    torch.manual_seed(seed)
    parts = {"unet": UNet2DConditionModel(**unet_config(refiner, in_channels))}
    torch.manual_seed(seed + 1)
    parts["vae"] = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(seed + 2)
    parts["text_encoder"] = None if refiner else CLIPTextModel(CLIPTextConfig(**CLIP_L))
    torch.manual_seed(seed + 3)
    parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**BIGG))
    return parts


def write_single_file(path: str, parts: dict, refiner: bool = False) -> None:
    scheduler = sd_models_xl.default_configs(sd_models_xl.SDXL_REFINER if refiner else sd_models_xl.SDXL)["scheduler"]
    sd_models_writer.save_sdxl_checkpoint(path, scheduler_config=scheduler, **parts)


def write_diffusers_folder(folder: str, parts: dict) -> None:
    """The base as a diffusers folder (``model_index.json`` naming ``text_encoder_2``), safetensors weights."""
    for name, part in parts.items():
        part.save_pretrained(os.path.join(folder, name), safe_serialization=True)
    with open(os.path.join(sd_models_xl.XL_CONFIG_DIR, "model_index.json"), encoding="utf-8") as f:
        index = json.load(f)
    with open(os.path.join(folder, "model_index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2, sort_keys=True)
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w", encoding="utf-8") as f:
        json.dump(sd_models_xl.default_configs()["scheduler"], f, indent=2, sort_keys=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default=ROOT, help="folder that receives models/… (default: Serena's folder)")
    parser.add_argument("--inpainting", action="store_true",
                        help=f"write the 9-channel SDXL inpainting checkpoint {INPAINT_FILE} instead")
    args = parser.parse_args(argv)
    models = os.path.join(args.out_dir, "models", "Stable-diffusion")
    if args.inpainting:
        write_single_file(os.path.join(models, INPAINT_FILE), build(INPAINT_SEED, in_channels=INPAINT_IN_CHANNELS))
        print(os.path.relpath(os.path.join(models, INPAINT_FILE), args.out_dir))
        return 0
    base = build(BASE_SEED)
    write_single_file(os.path.join(models, BASE_FILE), base)
    write_single_file(os.path.join(models, REFINER_FILE), build(REFINER_SEED, refiner=True), refiner=True)
    write_diffusers_folder(os.path.join(models, FOLDER), base)
    for name in (BASE_FILE, REFINER_FILE, FOLDER):
        print(os.path.relpath(os.path.join(models, name), args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
