"""Writing Stable Diffusion 1.x and SDXL checkpoints and VAEs in the single-file LDM (A1111) layout that
``modules.sd_models_loader`` and ``modules.sd_models_xl`` read: diffusers keys are mapped back to LDM keys (bigG's
to open_clip's), and the component configs go into the ``serena_config`` safetensors metadata.

The same weights always give the same file bytes (sorted metadata, no writing-environment entries), and a file is
replaced atomically.
"""

from __future__ import annotations

import json
import os
import re

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from modules.model_families import SD2_TEXT
from modules.sd_models_loader import METADATA_KEY, TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX
from modules.sd_models_xl import BIGG_PREFIX, CLIP_L_PREFIX, REFINER_BIGG_PREFIX

# Config entries that describe the writing environment, not the architecture; left out of saved metadata
# so the same weights always give the same file bytes.
_VOLATILE_TEXT_CONFIG_KEYS = {"transformers_version", "_name_or_path", "dtype", "torch_dtype"}

_UNET_TOP = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
             # SDXL's added time/text embedding
             "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2."}
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_key_to_ldm(key: str, config: dict) -> str:
    # LDM numbers every layer of the UNet flat; each level takes layers_per_block (+1 for its resampler) slots.
    per_level = config["layers_per_block"] + 1
    for prefix, ldm in _UNET_TOP.items():
        if key.startswith(prefix):
            return ldm + key[len(prefix):]
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)", key)
    if m:
        side, level, kind, index, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if kind == "resnets":
            first, _, tail = rest.partition(".")
            rest = f"{_UNET_RESNET.get(first, first)}.{tail}"
        if side == "down":
            if kind == "downsamplers":
                return f"input_blocks.{(level + 1) * per_level}.0.op.{rest.removeprefix('conv.')}"
            return f"input_blocks.{1 + level * per_level + index}.{0 if kind == 'resnets' else 1}.{rest}"
        if kind == "upsamplers":
            slot = 2 if config["up_block_types"][level].startswith("CrossAttn") else 1
            return f"output_blocks.{level * per_level + per_level - 1}.{slot}.{rest}"
        return f"output_blocks.{level * per_level + index}.{0 if kind == 'resnets' else 1}.{rest}"
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        kind, index, rest = m.group(1), int(m.group(2)), m.group(3)
        if kind == "resnets":
            first, _, tail = rest.partition(".")
            return f"middle_block.{2 * index}.{_UNET_RESNET.get(first, first)}.{tail}"
        return f"middle_block.1.{rest}"
    raise ValueError(f"UNet parameter {key!r} has no place in the SD1.x LDM layout")


def unet_ldm_module_paths(unet: UNet2DConditionModel) -> dict[str, str]:
    """``{diffusers module path: LDM module path}`` of every UNet module with a weight (``down_blocks.1.attentions.0.
    proj_in`` -> ``input_blocks.4.1.proj_in``): the inverse of the loader's LDM -> diffusers map (the single-file
    round trip is bitwise), which kohya's SDXL LoRA files use for their layer names. A module the LDM layout has
    no place for is left out."""
    config, paths = dict(unet.config), {}
    for path, module in unet.named_modules():
        if isinstance(getattr(module, "weight", None), torch.Tensor):
            try:
                paths[path] = _unet_key_to_ldm(path + ".weight", config).removesuffix(".weight")
            except ValueError:
                continue
    return paths


def _vae_key_to_ldm(key: str, config: dict) -> str:
    n_levels = len(config["block_out_channels"])
    key = key.replace("conv_norm_out.", "norm_out.")
    m = re.fullmatch(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)", key)
    if m:
        part, side, level, kind, index, rest = m.groups()
        # The LDM decoder numbers its levels from the lowest resolution up, diffusers from the top down.
        level = int(level) if side == "down" else n_levels - 1 - int(level)
        if kind == "resnets":
            return f"{part}.{side}.{level}.block.{index}.{rest.replace('conv_shortcut.', 'nin_shortcut.')}"
        return f"{part}.{side}.{level}.{'downsample' if side == 'down' else 'upsample'}.{rest}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        part, kind, index, rest = m.groups()
        if kind == "resnets":
            return f"{part}.mid.block_{int(index) + 1}.{rest}"
        layer, _, param = rest.rpartition(".")
        return f"{part}.mid.attn_1.{_VAE_ATTN[layer]}.{param}"
    if re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out|norm_out)\.\w+|(post_)?quant_conv\.\w+", key):
        return key
    raise ValueError(f"VAE parameter {key!r} has no place in the SD1.x LDM layout")


def vae_to_ldm(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    """The VAE's weights under LDM keys without prefix, as A1111 VAE files store them.

    The LDM mid-block attention uses 1×1 convolutions where diffusers uses linear layers, so those
    weights gain two trailing unit dimensions.
    """
    config = dict(vae.config)
    out = {}
    for key, tensor in vae.state_dict().items():
        ldm = _vae_key_to_ldm(key, config)
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        out[ldm] = tensor
    return out


def ldm_state_dict(unet: UNet2DConditionModel, vae: AutoencoderKL,
                   text_encoder: CLIPTextModel | CLIPTextModelWithProjection) -> dict[str, torch.Tensor]:
    """The three components' weights under the LDM keys a single-file checkpoint uses: SD1.x's, or SD2.x's when
    ``text_encoder`` has a projection (open_clip ViT-H, written in open_clip's layout as SDXL's bigG is)."""
    unet_config = dict(unet.config)
    out = {UNET_PREFIX + _unet_key_to_ldm(k, unet_config): v for k, v in unet.state_dict().items()}
    out.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(vae).items()})
    if isinstance(text_encoder, CLIPTextModelWithProjection):
        out.update({SD2_TEXT + k: v for k, v in open_clip_state_dict(text_encoder).items()})
    else:
        out.update({TEXT_PREFIX + k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()})
    return out


# transformers' CLIP layer names -> open_clip's, inside one residual block
_OPEN_CLIP_BLOCK = {"layer_norm1.": "ln_1.", "layer_norm2.": "ln_2.", "mlp.fc1.": "mlp.c_fc.",
                    "mlp.fc2.": "mlp.c_proj.", "self_attn.out_proj.": "attn.out_proj."}
_OPEN_CLIP_TOP = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
                  "text_model.embeddings.position_embedding.weight": "positional_embedding",
                  "text_model.final_layer_norm.weight": "ln_final.weight",
                  "text_model.final_layer_norm.bias": "ln_final.bias"}
# open_clip's initial CLIP temperature, ln(1 / 0.07): A1111 files carry it, generation never reads it.
_LOGIT_SCALE = 2.6592600345611572


def open_clip_state_dict(text_encoder: CLIPTextModelWithProjection) -> dict[str, torch.Tensor]:
    """bigG's weights in open_clip's layout, as SDXL single files store them: query, key and value fused into one
    ``in_proj`` tensor per block, ``text_projection`` transposed (open_clip multiplies from the right)."""
    weights = text_encoder.state_dict()
    out = {"logit_scale": torch.tensor(_LOGIT_SCALE)}
    for key, tensor in weights.items():
        if key in _OPEN_CLIP_TOP:
            out[_OPEN_CLIP_TOP[key]] = tensor
        elif key == "text_projection.weight":
            out["text_projection"] = tensor.T.contiguous()
        else:
            m = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", key)
            if m is None:
                raise ValueError(f"bigG parameter {key!r} has no place in the open_clip layout")
            block, rest = f"transformer.resblocks.{m.group(1)}.", m.group(2)
            fused = re.fullmatch(r"self_attn\.q_proj\.(weight|bias)", rest)
            if fused:
                kind = fused.group(1)
                parts = [weights[key.replace(".q_proj.", f".{p}_proj.")] for p in "qkv"]
                out[f"{block}attn.in_proj_{kind}"] = torch.cat(parts)
            elif not re.fullmatch(r"self_attn\.[kv]_proj\.(weight|bias)", rest):
                for hf, oc in _OPEN_CLIP_BLOCK.items():
                    if rest.startswith(hf):
                        rest = oc + rest[len(hf):]
                        break
                out[block + rest] = tensor
    return out


def sdxl_state_dict(unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel | None,
                    text_encoder_2: CLIPTextModelWithProjection) -> dict[str, torch.Tensor]:
    """An SDXL checkpoint's weights under the original single-file keys; ``text_encoder`` ``None`` is the
    refiner's layout (bigG alone, as ``conditioner.embedders.0``)."""
    unet_config = dict(unet.config)
    out = {UNET_PREFIX + _unet_key_to_ldm(k, unet_config): v for k, v in unet.state_dict().items()}
    out.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(vae).items()})
    if text_encoder is not None:
        out.update({CLIP_L_PREFIX + "text_model." + k: v for k, v in text_encoder.state_dict().items()})
    prefix = BIGG_PREFIX if text_encoder is not None else REFINER_BIGG_PREFIX
    out.update({prefix + k: v for k, v in open_clip_state_dict(text_encoder_2).items()})
    return out


def save_sdxl_checkpoint(path: str, *, unet: UNet2DConditionModel, vae: AutoencoderKL,
                         text_encoder: CLIPTextModel | None, text_encoder_2: CLIPTextModelWithProjection,
                         scheduler_config: dict, dtype: torch.dtype = torch.float16) -> None:
    """Write an SDXL base (or, with ``text_encoder`` ``None``, refiner) single file in the original layout, with
    every component's config in the ``serena_config`` metadata; same weights, same bytes."""
    configs = component_configs(unet, vae, text_encoder, scheduler_config)
    configs["text_encoder_2"] = _text_config(text_encoder_2)
    metadata = {METADATA_KEY: json.dumps(configs, sort_keys=True)}
    _write_safetensors(path, sdxl_state_dict(unet, vae, text_encoder, text_encoder_2), metadata, dtype)


def _text_config(text_encoder) -> dict:
    return {k: v for k, v in text_encoder.config.to_dict().items()
            if k not in _VOLATILE_TEXT_CONFIG_KEYS and k not in ("id2label", "label2id")}


def component_configs(unet: UNet2DConditionModel | None = None, vae: AutoencoderKL | None = None,
                      text_encoder: CLIPTextModel | None = None, scheduler_config: dict | None = None,
                      sampling: dict | None = None) -> dict:
    """The ``serena_config`` metadata object for the given components (only the ones passed).

    ``sampling`` holds how the model is meant to be sampled beyond its scheduler (``sd_models_loader.SAMPLING_KEYS``):
    ``{"guidance_rescale": φ, "cfg_scale": s}``.
    """
    configs = {}
    if unet is not None:
        configs["unet"] = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    if vae is not None:
        configs["vae"] = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    if text_encoder is not None:
        configs["text_encoder"] = _text_config(text_encoder)
    if scheduler_config is not None:
        configs["scheduler"] = dict(scheduler_config)
    if sampling:
        configs["sampling"] = dict(sampling)
    return configs


def save_ldm_checkpoint(path: str, *, unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel,
                        scheduler_config: dict | None, dtype: torch.dtype = torch.float16,
                        extra_metadata: dict[str, str] | None = None, sampling: dict | None = None) -> None:
    """Write an SD1.x single-file checkpoint in the LDM key layout (A1111's), which ``load_checkpoint`` reads; an
    SD2.x one (``modules.sd_models_sd2``) when ``text_encoder`` is a ``CLIPTextModelWithProjection``.

    Args:
        path: the ``.safetensors`` file to write (replaced atomically).
        unet, vae, text_encoder: the components whose weights are written.
        scheduler_config: the model's own scheduler config, stored in the metadata (``None``: none stored).
        dtype: the floating-point dtype on disk.
        extra_metadata: more safetensors metadata entries (string values).
        sampling: how the model is meant to be sampled, e.g. ``{"guidance_rescale": 0.7, "cfg_scale": 4.0}``
            (see ``SDModel``).

    The same weights always give the same bytes: metadata keys are written in sorted order.
    """
    metadata = {METADATA_KEY: json.dumps(component_configs(unet, vae, text_encoder, scheduler_config, sampling),
                                         sort_keys=True)}
    metadata.update(extra_metadata or {})
    _write_safetensors(path, ldm_state_dict(unet, vae, text_encoder), metadata, dtype)


def save_ldm_vae(path: str, vae: AutoencoderKL, *, dtype: torch.dtype = torch.float16) -> None:
    """Write a standalone VAE file in the A1111 layout (un-prefixed LDM keys) with its config as metadata."""
    metadata = {METADATA_KEY: json.dumps(component_configs(vae=vae), sort_keys=True)}
    _write_safetensors(path, vae_to_ldm(vae), metadata, dtype)


def _write_safetensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                       dtype: torch.dtype) -> None:
    tensors = {k: (v.detach().to(device="cpu", dtype=dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
               for k, v in tensors.items()}
    # Serialised in memory and written by Python: safetensors' own save_file creates files with mode 0600.
    data = _sort_header_metadata(save(tensors, metadata=metadata))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _sort_header_metadata(data: bytes) -> bytes:
    """The serialised file with its header's ``__metadata__`` in sorted key order.

    safetensors writes metadata in hash-map order, which changes from one process to the next; reordering keeps
    the header's byte length, so the tensor data and its offsets are untouched.
    """
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    if len(header.get("__metadata__") or {}) < 2:
        return data
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > size:
        raise ValueError(f"re-serialised safetensors header grew from {size} to {len(text)} bytes")
    return data[:8] + text.ljust(size, b" ") + data[8 + size:]
