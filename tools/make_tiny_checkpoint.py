"""Build Serena's tiny deterministic SD1.x checkpoints: the embedded default, a second one, and a VAE.

The weights are random (seeded), so images are noise; what matters is that every code path of a real SD1.x
checkpoint runs in well under a second on a CPU. The components keep SD1.5's block layout and key names:
3 cross-attention levels + 1 plain level, two layers per block, channel changes at the same levels as SD1.5
(so the same skip connections exist), 4 latent channels and an 8× VAE, and the full 49,408-token CLIP
vocabulary with 77 positions. Only the widths are small: the token embedding alone is 1.6 M of the ~3.3 M
parameters.

Writes, in fp16 with the component configs in the ``serena_config`` metadata:
  models/Stable-diffusion/serena-tiny-v1.safetensors   (seed 20240510, the default checkpoint)
  models/Stable-diffusion/serena-tiny-alt.safetensors  (seed 20240520, different weights, same dims)
  models/VAE/serena-tiny-vae.safetensors               (seed 20240530, a third VAE for the same latents)

Running it twice gives byte-identical files on the same torch version.

With ``--inpainting`` it writes, instead, an SD1.x *inpainting* checkpoint of the same dims, whose UNet reads 9
channels (4 latent + 1 mask + 4 masked-image latent, ``modules.inpaint_conditioning``), in both forms the loader
reads; nothing ships it, the tests build it:
  models/Stable-diffusion/serena-tiny-inpaint.safetensors   (seed 20240540, single file, LDM layout)
  models/Stable-diffusion/serena-tiny-inpaint/               (the same weights as a diffusers folder)

Usage: ``venv/bin/python tools/make_tiny_checkpoint.py [--out-dir DIR] [--inpainting]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from modules import sd_models_loader, sd_models_writer  # noqa: E402

UNET_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=16,
    block_out_channels=(16, 32, 48, 48), cross_attention_dim=32, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
VAE_CONFIG = dict(
    sample_size=64, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=8,
    block_out_channels=(8, 16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215,
)
TEXT_CONFIG = dict(
    vocab_size=49408, max_position_embeddings=77, hidden_size=32, intermediate_size=37, num_attention_heads=4,
    num_hidden_layers=2, projection_dim=32, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2, pad_token_id=1,
)

# Seeds ten apart: each checkpoint seeds its three components with seed, seed + 1 and seed + 2.
CHECKPOINTS = {"serena-tiny-v1.safetensors": 20240510, "serena-tiny-alt.safetensors": 20240520}
VAE_FILE, VAE_SEED = "serena-tiny-vae.safetensors", 20240530
INPAINT_NAME, INPAINT_SEED, INPAINT_IN_CHANNELS = "serena-tiny-inpaint", 20240540, 9


def build_unet(seed: int, in_channels: int = 4) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**{**UNET_CONFIG, "in_channels": in_channels})


def build_vae(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(**VAE_CONFIG)


def build_text_encoder(seed: int) -> CLIPTextModel:
    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def build_components(seed: int, in_channels: int = 4) -> dict:
    """``{"unet", "vae", "text_encoder"}`` of one checkpoint. Each component is seeded on its own (seed, seed + 1,
    seed + 2), so changing one component's dims leaves the others' bytes."""
    return {"unet": build_unet(seed, in_channels), "vae": build_vae(seed + 1),
            "text_encoder": build_text_encoder(seed + 2)}


def save_diffusers_folder(folder: str, components: dict, scheduler_config: dict) -> None:
    """The components as a diffusers-format folder: each one's ``save_pretrained`` (config and fp32 safetensors
    weights), the scheduler config and a ``model_index.json`` naming them."""
    index = {"_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "PNDMScheduler"]}
    for name, module in components.items():
        module.save_pretrained(os.path.join(folder, name), safe_serialization=True)
        index[name] = ["transformers" if isinstance(module, CLIPTextModel) else "diffusers", type(module).__name__]
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    for path, data in (("scheduler/scheduler_config.json", scheduler_config), ("model_index.json", index)):
        with open(os.path.join(folder, path), "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default=ROOT, help="folder that receives models/… (default: Serena's folder)")
    parser.add_argument("--inpainting", action="store_true",
                        help=f"write the 9-channel inpainting checkpoint {INPAINT_NAME} (file and diffusers folder) "
                             f"instead of the shipped files")
    args = parser.parse_args(argv)
    scheduler_config = sd_models_loader.default_configs()["scheduler"]
    sd_dir = os.path.join(args.out_dir, "models", "Stable-diffusion")
    written = []
    if args.inpainting:
        checkpoints, in_channels = {f"{INPAINT_NAME}.safetensors": INPAINT_SEED}, INPAINT_IN_CHANNELS
    else:
        checkpoints, in_channels = CHECKPOINTS, 4
    for filename, seed in checkpoints.items():
        path = os.path.join(sd_dir, filename)
        components = build_components(seed, in_channels)
        sd_models_writer.save_ldm_checkpoint(path, **components, scheduler_config=scheduler_config,
                                             dtype=torch.float16)
        written.append(path)
    if args.inpainting:
        save_diffusers_folder(os.path.join(sd_dir, INPAINT_NAME), components, scheduler_config)
        print(f"{os.path.relpath(os.path.join(sd_dir, INPAINT_NAME), args.out_dir)}/  diffusers folder")
    else:
        path = os.path.join(args.out_dir, "models", "VAE", VAE_FILE)
        sd_models_writer.save_ldm_vae(path, build_vae(VAE_SEED), dtype=torch.float16)
        written.append(path)
    for path in written:
        print(f"{os.path.relpath(path, args.out_dir)}  {os.path.getsize(path):,} B  sha256 {sha256(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
