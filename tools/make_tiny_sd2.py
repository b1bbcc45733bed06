"""Build tiny random-weight SD2.x checkpoints in the original single-file layout (OpenCLIP text encoder keys).

SD2.x's structure at tiny widths: SD1.x's block layout (as ``make_tiny_checkpoint``) with linear transformer
projections and per-level head counts, 1024-context's role played by a 32-wide OpenCLIP-layout text encoder of
3 GELU layers (so its penultimate layer, last layer and clip skip 3 all differ) with the full 49,408-token
vocabulary. Each UNet's output bias is shifted so that A1111's v-prediction test forward answers what the file
is (mean of ``output - input`` -2 for v, 0 for epsilon), as a real SD2.x model's does; the weights stay random.

Writes, in fp16 with the component configs in the ``serena_config`` metadata but no scheduler (so the prediction
type comes from where a real file's does), under ``models/Stable-diffusion/``:
  serena-tiny-sd2.safetensors         epsilon: nothing declares it, the test forward decides
  serena-tiny-sd2-v.safetensors       v-prediction, declared by serena-tiny-sd2-v.yaml beside it
  serena-tiny-sd2-v-meta.safetensors  the same weights, declared by ``modelspec.prediction_type`` metadata

Running it twice gives byte-identical files on the same torch version.

Usage: ``venv/bin/python tools/make_tiny_sd2.py --out-dir DIR``
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModelWithProjection  # noqa: E402

from modules import sd_models_sd2, sd_models_writer  # noqa: E402
from tools import make_tiny_checkpoint as tiny_sd1  # noqa: E402

UNET_CONFIG = {**tiny_sd1.UNET_CONFIG, "attention_head_dim": (2, 4, 6, 6), "use_linear_projection": True}
TEXT_CONFIG = {**tiny_sd1.TEXT_CONFIG, "num_hidden_layers": 3, "hidden_act": "gelu"}
EPS_FILE, V_FILE, V_META_FILE = "serena-tiny-sd2.safetensors", "serena-tiny-sd2-v.safetensors", \
    "serena-tiny-sd2-v-meta.safetensors"
V_YAML = 'model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n    parameterization: "v"\n'
SEEDS = {"epsilon": 20260410, "v": 20260420}
V_TEST_TARGET = {"epsilon": 0.0, "v": -2.0}


def build(prediction: str) -> dict:
    """``{"unet", "vae", "text_encoder"}`` of the tiny SD2.x model for ``prediction``."""
    seed = SEEDS[prediction]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG).eval()
    with torch.no_grad():
        unet.conv_out.bias += V_TEST_TARGET[prediction] - sd_models_sd2.v_test(unet)
    torch.manual_seed(seed + 2)
    # with its projection, so the writer puts it in open_clip's layout (the projection is written, never used)
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_CONFIG))
    return {"unet": unet, "vae": tiny_sd1.build_vae(seed + 1), "text_encoder": text_encoder}


def write(path: str, built: dict, extra_metadata: dict[str, str] | None = None) -> None:
    sd_models_writer.save_ldm_checkpoint(path, **built, scheduler_config=None, dtype=torch.float16,
                                         extra_metadata=extra_metadata)


def write_all(out_dir: str) -> dict[str, dict]:
    """Write the three files under ``out_dir/models/Stable-diffusion``; returns the models built, by prediction."""
    folder = os.path.join(out_dir, "models", "Stable-diffusion")
    built = {prediction: build(prediction) for prediction in SEEDS}
    write(os.path.join(folder, EPS_FILE), built["epsilon"])
    write(os.path.join(folder, V_FILE), built["v"])
    with open(os.path.join(folder, os.path.splitext(V_FILE)[0] + ".yaml"), "w", encoding="utf-8") as f:
        f.write(V_YAML)
    write(os.path.join(folder, V_META_FILE), built["v"], {"modelspec.prediction_type": "v"})
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", required=True, help="folder that receives models/Stable-diffusion/…")
    args = parser.parse_args(argv)
    write_all(args.out_dir)
    for name in (EPS_FILE, V_FILE, V_META_FILE):
        path = os.path.join(args.out_dir, "models", "Stable-diffusion", name)
        print(f"{os.path.relpath(path, args.out_dir)}  {os.path.getsize(path):,} B  sha256 {tiny_sd1.sha256(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
