"""Write a small random textual inversion embedding in one of the formats A1111 reads (for tests and trials).

Formats:
  safetensors  ``{"emb_params": [vectors, width]}`` (A1111's and kohya's .safetensors)
  a1111-pt     A1111's pickled ``.pt``: ``string_to_param["*"]`` with ``step``, ``sd_checkpoint``, ``name``...
  diffusers    diffusers' learned embeddings ``{"<name>": [width]}`` (one vector; ``.bin`` pickled or
               ``.safetensors``, by the file's extension)
  sdxl         ``{"clip_l": [vectors, width], "clip_g": [vectors, width_g]}`` (.safetensors)

The vectors are drawn from a seeded generator, scaled like CLIP token embeddings (std 0.02 unless ``--scale``):
the same arguments give the same file.

Usage: ``venv/bin/python tools/make_tiny_embedding.py OUT_FILE [--format F] [--vectors N] [--width W] [--seed S]``
"""

from __future__ import annotations

import argparse
import os

import torch
from safetensors.torch import save_file

FORMATS = ("safetensors", "a1111-pt", "diffusers", "sdxl")


def random_vectors(vectors: int, width: int, seed: int, scale: float = 0.02) -> torch.Tensor:
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn((vectors, width), generator=generator) * scale


def make_embedding(path: str, *, fmt: str = "safetensors", vectors: int = 1, width: int = 32, seed: int = 0,
                   scale: float = 0.02, width_g: int = 1280, step: int | None = 100) -> str:
    """Write the embedding file ``path`` (its folder is created) and return ``path``."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    vec = random_vectors(vectors, width, seed, scale)
    name = os.path.splitext(os.path.basename(path))[0]
    if fmt == "safetensors":
        save_file({"emb_params": vec}, path)
    elif fmt == "a1111-pt":
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": name, "step": step,
                    "sd_checkpoint": "0123456789", "sd_checkpoint_name": "trained-on"}, path)
    elif fmt == "diffusers":
        data = {f"<{name}>": vec[0]}
        if path.endswith(".safetensors"):
            save_file(data, path)
        else:
            torch.save(data, path)
    else:
        save_file({"clip_l": vec, "clip_g": random_vectors(vectors, width_g, seed + 1, scale)}, path)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--format", choices=FORMATS, default="safetensors")
    parser.add_argument("--vectors", type=int, default=1)
    parser.add_argument("--width", type=int, default=32, help="32: Serena's tiny models; 768: SD1.x")
    parser.add_argument("--width-g", type=int, default=1280,
                        help="--format sdxl: clip_g's width (--width is clip_l's); 64 and 32 for the tiny SDXL model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=0.02)
    args = parser.parse_args(argv)
    print(make_embedding(args.out, fmt=args.format, vectors=args.vectors, width=args.width, seed=args.seed,
                         scale=args.scale, width_g=args.width_g))


if __name__ == "__main__":
    main()
