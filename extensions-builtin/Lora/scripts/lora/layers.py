"""A LoRA file's tensors matched to the loaded model's layers, and each layer's weight delta.

Key formats (the layer part, then the weight part after it):

* kohya: ``lora_unet_<module path with _>`` and, for the text encoder, ``lora_te_<path>`` (SD1.x) or
  ``lora_te1_<path>`` (SDXL's CLIP ViT-L) and ``lora_te2_<path>`` (SDXL's OpenCLIP bigG), with ``lora_down.weight``,
  ``lora_up.weight``, ``alpha`` (and LoCon's ``lora_mid.weight``);
* diffusers/PEFT: ``unet.<module path>`` / ``text_encoder.<module path>`` / ``text_encoder_2.<module path>`` (or
  ``base_model.model.<path>``, the UNet) with ``lora_A.weight``/``lora_B.weight``, the alphas from
  ``lora_adapter_metadata`` when the file has them;
* LyCORIS LoHa (``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b``, ``hada_t1``/``hada_t2``) and LoKr
  (``lokr_w1`` or ``lokr_w1_a``/``lokr_w1_b``, ``lokr_w2`` or ``lokr_w2_a``/``lokr_w2_b``, ``lokr_t2``), kohya
  layer names.

Text encoder paths are the transformers CLIP text models' (kohya's trainer uses them for both of SDXL's), with
their ``text_model.`` level (``lora_te_text_model_encoder_layers_0_…``) and without it (the layout of transformers
5's ``CLIPTextModel``, which Serena's own example files follow). A UNet layer has two kohya names: its diffusers
path (kohya's SD1.x trainer) and its path in the original LDM/SGM layout (``input_blocks.4.1.transformer_blocks.0.
attn1.to_q``, ``…in_layers.2``: kohya's SDXL trainer, older SD1.x files), taken from the checkpoint loader's own
map (``original_unet_paths``).
A delta is computed once per layer in float32 and kept in the layer weight's dtype: ``weight + multiplier * delta``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from modules.extensions_api import original_unet_paths

UNET, TEXT, TEXT_2 = "unet", "te", "te2"
#: Each component's attribute on the loaded model (SDXL's refiner has no ``text_encoder``).
ROOTS = {UNET: "unet", TEXT: "text_encoder", TEXT_2: "text_encoder_2"}
_LAYER_TYPES = (torch.nn.Linear, torch.nn.Conv2d)
_PEFT_PARTS = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}
_PEFT_UNET = "unet."  # a PEFT key with no component prefix (or ``base_model.model.``) is the UNet's
_PEFT_PREFIXES = {UNET: _PEFT_UNET, TEXT: "text_encoder.", TEXT_2: "text_encoder_2."}


def layer_names(model) -> dict[str, tuple[str, str]]:
    """``{layer name: (component, module path)}`` for every Linear and Conv2d layer of the model, under each name
    a file may give it: kohya's (diffusers and original UNet paths) and PEFT's."""
    two_encoders = getattr(model, "text_encoder_2", None) is not None
    kohya = {UNET: ("lora_unet_",), TEXT: ("lora_te1_",) if two_encoders else ("lora_te_",), TEXT_2: ("lora_te2_",)}
    names = {}
    for component, attribute in ROOTS.items():
        root = getattr(model, attribute, None)
        if root is None:
            continue
        if component == UNET:
            original = original_unet_paths(root)
        else:  # transformers 5's CLIPTextModel has no ``text_model`` level; kohya's and diffusers' names do
            original = {} if hasattr(root, "text_model") else {path: "text_model." + path
                                                               for path, _ in root.named_modules()}
        for path, module in root.named_modules():
            if not isinstance(module, _LAYER_TYPES):
                continue
            for named in (path, original[path]) if path in original else (path,):
                for prefix in kohya[component]:
                    names[prefix + named.replace(".", "_")] = (component, path)
                names[_PEFT_PREFIXES[component] + named] = (component, path)
    return names


def _split(key: str) -> tuple[str, str]:
    """A tensor's key as ``(layer name, weight part)``: a PEFT layer keeps its dotted path, with its prefix."""
    for peft_part, part in _PEFT_PARTS.items():
        if key.endswith("." + peft_part):
            layer = key[: -len(peft_part) - 1].removeprefix("base_model.model.")
            if not layer.startswith(tuple(_PEFT_PREFIXES.values())):
                layer = _PEFT_UNET + layer
            return layer, part
    layer, _, part = key.partition(".")
    return layer, part


def _peft_alphas(metadata: dict) -> dict:
    """``lora_alpha`` and ``r`` from diffusers' ``lora_adapter_metadata`` (per component), when present."""
    raw = metadata.get("lora_adapter_metadata")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    return raw if isinstance(raw, dict) else {}


def group(tensors: dict, metadata: dict) -> dict[str, dict]:
    """``{layer name: {part: tensor}}``."""
    layers: dict[str, dict] = {}
    for key, tensor in tensors.items():
        layer, part = _split(key)
        if not part:
            continue
        layers.setdefault(layer, {})[part] = tensor
    peft = _peft_alphas(metadata)
    if peft:
        for layer, parts in layers.items():
            component = layer.partition(".")[0]
            config = peft.get(component if component in ("text_encoder", "text_encoder_2") else "unet", peft)
            if "alpha" not in parts and "lora_down.weight" in parts and config.get("lora_alpha"):
                parts["alpha"] = torch.tensor(float(config["lora_alpha"]))
    return layers


@dataclass(frozen=True)
class LayerDelta:
    """One layer's change at multiplier 1: which component and module it is for, and the delta tensor."""

    component: str
    path: str
    delta: torch.Tensor


def _f(t: torch.Tensor) -> torch.Tensor:
    return t.to(dtype=torch.float32)


def _scale(parts: dict, rank: int | None) -> float:
    alpha = parts.get("alpha")
    if alpha is None or not rank:
        return 1.0
    return float(alpha) / rank


def _cp(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """A Tucker (CP) factorised kernel rebuilt: ``t`` [r, r, kh, kw] between ``wa`` [r, out] and ``wb`` [r, in]."""
    temp = torch.einsum("i j k l, j r -> i r k l", t, wb)
    return torch.einsum("i j k l, i r -> r j k l", temp, wa)


def _lora(parts: dict, dyn: int | None) -> tuple[torch.Tensor, int]:
    up, down = _f(parts["lora_up.weight"]), _f(parts["lora_down.weight"])
    rank = down.shape[0]
    if "lora_mid.weight" in parts:  # LoCon's CP decomposition of a k×k kernel
        mid = _f(parts["lora_mid.weight"])
        return torch.einsum("n m k l, i n, m j -> i j k l", mid, up.flatten(1), down.flatten(1)), rank
    up, down = up.flatten(1), down.flatten(1)
    if dyn is not None:
        up, down = up[:, :dyn], down[:dyn]
    return up @ down, rank


def _loha(parts: dict) -> tuple[torch.Tensor, int]:
    w1a, w1b, w2a, w2b = (_f(parts[k]) for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"))
    rank = w1b.shape[0]
    first = _cp(_f(parts["hada_t1"]), w1a, w1b) if "hada_t1" in parts else w1a @ w1b.flatten(1)
    second = _cp(_f(parts["hada_t2"]), w2a, w2b) if "hada_t2" in parts else w2a @ w2b.flatten(1)
    return first * second, rank


def _lokr(parts: dict, shape: torch.Size) -> tuple[torch.Tensor, int | None]:
    rank = None
    if "lokr_w1" in parts:
        w1 = _f(parts["lokr_w1"])
    else:
        w1, rank = _f(parts["lokr_w1_a"]) @ _f(parts["lokr_w1_b"]), parts["lokr_w1_b"].shape[0]
    if "lokr_w2" in parts:
        w2 = _f(parts["lokr_w2"])
    elif "lokr_t2" in parts:
        w2 = _cp(_f(parts["lokr_t2"]), _f(parts["lokr_w2_a"]), _f(parts["lokr_w2_b"]))
        rank = parts["lokr_w2_b"].shape[0]
    else:
        w2a, w2b = _f(parts["lokr_w2_a"]), _f(parts["lokr_w2_b"])
        w2, rank = w2a @ w2b.flatten(1), w2b.shape[0]
        if len(shape) == 4:
            w2 = w2.reshape(w2.shape[0], -1, *shape[2:])
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    return torch.kron(w1, w2.contiguous()), rank


def kind(parts: dict) -> str | None:
    """Which network type a layer's parts are: ``lora``, ``loha``, ``lokr``, or ``None`` for none Serena reads."""
    if "lora_up.weight" in parts and "lora_down.weight" in parts:
        return "lora"
    if all(k in parts for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")):
        return "loha"
    has_1 = "lokr_w1" in parts or ("lokr_w1_a" in parts and "lokr_w1_b" in parts)
    has_2 = "lokr_w2" in parts or ("lokr_w2_a" in parts and "lokr_w2_b" in parts)
    return "lokr" if has_1 and has_2 else None


def delta(parts: dict, weight: torch.Tensor, dyn: int | None = None) -> torch.Tensor:
    """The layer's change at multiplier 1, shaped and typed as ``weight``; ``ValueError`` if it does not fit."""
    found = kind(parts)
    if found == "lora":
        change, rank = _lora(parts, dyn)
        if dyn is not None:
            rank = min(rank, dyn)
    elif found == "loha":
        change, rank = _loha(parts)
    elif found == "lokr":
        change, rank = _lokr(parts, weight.shape)
    else:
        raise ValueError(f"unknown weights {sorted(parts)}")
    if change.numel() != weight.numel():
        raise ValueError(f"a delta of {tuple(change.shape)} does not fit a weight of {tuple(weight.shape)}")
    change = change.reshape(weight.shape) * _scale(parts, rank)
    return change.to(device=weight.device, dtype=weight.dtype)
