"""Write small random LoRA files that fit a loaded checkpoint, in each key format Serena reads.

The weights are seeded random numbers, large enough to change an image visibly; the point is the file formats:

* ``kohya``: ``lora_unet_…``/``lora_te_…`` with ``lora_down.weight``, ``lora_up.weight`` and ``alpha``, on linear
  layers (attention projections, text encoder ``q_proj``/``v_proj``) and conv layers (a 3×3 ``lora_down`` on
  ResNet ``conv1``, a 1×1 one on ``conv_shortcut``). For an SDXL model, kohya's SDXL names: ``lora_te1_…``,
  ``lora_te2_…`` and the UNet's original paths (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``,
  ``…_in_layers_2``, ``…_out_layers_3``, ``…_emb_layers_1``, ``…_skip_connection``, ``…_op``);
* ``peft``: diffusers/PEFT keys, ``unet.<path>.lora_A.weight``/``lora_B.weight``, ``text_encoder.<path>…`` (and
  ``text_encoder_2.<path>…`` for SDXL), with diffusers' ``lora_adapter_metadata`` (``lora_alpha``, ``r``);
* ``loha``: LyCORIS LoHa (``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b``, ``alpha``);
* ``lokr``: LyCORIS LoKr (``lokr_w1`` full, ``lokr_w2_a``/``lokr_w2_b`` low rank, ``alpha``);
* ``foreign``: kohya keys for layers no SD1.x model has (a file that fits nothing).

Usage: ``venv/bin/python tools/make_tiny_lora.py --kind kohya --out DIR/name.safetensors
[--checkpoint models/Stable-diffusion/serena-tiny-v1.safetensors] [--seed 1] [--alias NAME]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

KINDS = ("kohya", "peft", "loha", "lokr", "foreign")
UNET_LINEAR = ("attn1.to_q", "attn1.to_v", "attn2.to_k", "attn2.to_out.0")
TEXT_LINEAR = ("self_attn.q_proj", "self_attn.v_proj")
RANK, ALPHA = 4, 2.0


def _targets(model) -> list[tuple[str, str, torch.nn.Module]]:
    """``(component, module path, module)`` for the layers a file touches: linear and conv layers (ResNet ones, and
    for SDXL the down- and upsamplers' too)."""
    convs = ("conv1", "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv") \
        if _is_sdxl(model) else ("conv1", "conv_shortcut")
    found = []
    for component, attribute in (("unet", "unet"), ("te", "text_encoder"), ("te2", "text_encoder_2")):
        root = getattr(model, attribute, None)
        for path, module in root.named_modules() if root is not None else ():
            linear = isinstance(module, torch.nn.Linear) and path.endswith(UNET_LINEAR + TEXT_LINEAR)
            conv = component == "unet" and isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and \
                path.endswith(convs) and ("resnets" in path or "samplers" in path)
            if linear or conv:
                found.append((component, path, module))
    return found


def _is_sdxl(model) -> bool:
    return getattr(model, "text_encoder_2", None) is not None


def _kohya_names(model):
    """``name(component, path)``: kohya's layer name (``lora_te_text_model_encoder_…``, with the ``text_model.`` level
    transformers 5's ``CLIPTextModel`` lacks). SDXL's as kohya's SDXL trainer writes them: ``lora_te1_`` /
    ``lora_te2_`` and the UNet's original (LDM/SGM) module paths, from the loader's map; SD1.x's ``lora_te_`` and
    the diffusers paths."""
    sdxl = _is_sdxl(model)
    original = {}
    if sdxl:
        from modules.extensions_api import original_unet_paths
        original = original_unet_paths(model.unet)
    prefixes = {"unet": "lora_unet_", "te": "lora_te1_" if sdxl else "lora_te_", "te2": "lora_te2_"}
    return lambda component, path: prefixes[component] + _canonical(component, original.get(path, path))


def _canonical(component: str, path: str) -> str:
    """The module path as kohya and diffusers write it: a text encoder's under ``text_model.``."""
    return path if component == "unet" or path.startswith("text_model.") else "text_model." + path


def _pair(weight: torch.Tensor, g: torch.Generator, std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(up [out, r(,1,1)], down [r, in(,kh,kw)])`` for a weight: conv downs keep the kernel size."""
    out_features, in_features = weight.shape[0], weight.shape[1]
    if weight.dim() == 4:
        down = torch.randn(RANK, in_features, *weight.shape[2:], generator=g) * std
        up = torch.randn(out_features, RANK, 1, 1, generator=g) * std
    else:
        down = torch.randn(RANK, in_features, generator=g) * std
        up = torch.randn(out_features, RANK, generator=g) * std
    return up, down


def tensors_for(model, kind: str, seed: int = 1, std: float = 0.6) -> tuple[dict, dict]:
    """``(tensors, metadata)`` of a random file of ``kind`` for ``model``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    g = torch.Generator().manual_seed(seed)
    tensors, metadata = {}, {}
    if kind == "foreign":
        for i in range(3):
            name = f"lora_unet_no_such_block_{i}_proj"
            tensors[f"{name}.lora_down.weight"] = torch.randn(RANK, 8, generator=g)
            tensors[f"{name}.lora_up.weight"] = torch.randn(8, RANK, generator=g)
        return tensors, metadata
    kohya_name = _kohya_names(model)
    peft_prefixes = {"unet": "unet.", "te": "text_encoder.", "te2": "text_encoder_2."}
    for component, path, module in _targets(model):
        weight = module.weight
        if kind == "peft" and (weight.dim() == 4 or path.endswith("time_emb_proj")):
            continue  # diffusers' format covers the linear layers here; kohya's covers conv
        if kind in ("loha", "lokr") and (weight.dim() == 4 or path.endswith("time_emb_proj")):
            continue
        name = kohya_name(component, path).replace(".", "_")
        if kind == "kohya":
            up, down = _pair(weight, g, std)
            tensors[f"{name}.lora_up.weight"], tensors[f"{name}.lora_down.weight"] = up, down
            tensors[f"{name}.alpha"] = torch.tensor(ALPHA)
        elif kind == "peft":
            up, down = _pair(weight, g, std)
            prefix = peft_prefixes[component] + _canonical(component, path)
            tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"] = down, up
        elif kind == "loha":
            out_features, in_features = weight.shape
            for i in (1, 2):
                tensors[f"{name}.hada_w{i}_a"] = torch.randn(out_features, RANK, generator=g) * std
                tensors[f"{name}.hada_w{i}_b"] = torch.randn(RANK, in_features, generator=g) * std
            tensors[f"{name}.alpha"] = torch.tensor(ALPHA)
        else:  # lokr: a 2x2 (or 1x1) full factor and a low-rank second factor
            out_features, in_features = weight.shape
            a = 2 if out_features % 2 == 0 else 1
            b = 2 if in_features % 2 == 0 else 1
            tensors[f"{name}.lokr_w1"] = torch.randn(a, b, generator=g)
            tensors[f"{name}.lokr_w2_a"] = torch.randn(out_features // a, RANK, generator=g) * std
            tensors[f"{name}.lokr_w2_b"] = torch.randn(RANK, in_features // b, generator=g) * std
            tensors[f"{name}.alpha"] = torch.tensor(ALPHA)
    if kind == "peft":
        config = {"r": RANK, "lora_alpha": ALPHA}
        metadata["lora_adapter_metadata"] = json.dumps({"unet": config, "text_encoder": config,
                                                        "text_encoder_2": config})
    return tensors, metadata


def write(model, path: str, kind: str, seed: int = 1, alias: str | None = None, std: float = 0.6) -> str:
    """Write a file of ``kind`` for ``model`` to ``path``; ``alias`` goes in ``ss_output_name``."""
    tensors, metadata = tensors_for(model, kind, seed, std)
    if alias:
        metadata["ss_output_name"] = alias
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=metadata)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--checkpoint", default=os.path.join(ROOT, "models", "Stable-diffusion",
                                                             "serena-tiny-v1.safetensors"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--alias", default=None)
    args = parser.parse_args(argv)
    from modules import sd_models_loader
    from modules.checkpoint_info import CheckpointInfo
    model = sd_models_loader.load_checkpoint(CheckpointInfo(args.checkpoint, os.path.basename(args.checkpoint),
                                                            "0" * 64))
    print(write(model, args.out, args.kind, args.seed, args.alias))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
