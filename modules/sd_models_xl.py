"""Loading Stable Diffusion XL checkpoints (base and refiner), and inspecting them unloaded.

The same two on-disk forms as SD1.x (``modules.sd_models_loader``), with SDXL's parts:

* a single ``.safetensors`` file in the original (Stability/A1111) layout: ``model.diffusion_model.*`` with
  ``label_emb`` (the added time/text embedding), ``first_stage_model.*``, and the text encoders under
  ``conditioner.embedders``: the base has CLIP ViT-L (``0.transformer.text_model.*``, transformers layout) and
  OpenCLIP ViT-bigG (``1.model.*``, open_clip layout: fused ``in_proj`` attention, ``ln_final``,
  ``text_projection``); the refiner has bigG alone (``0.model.*``);
* a diffusers folder whose ``model_index.json`` names a ``text_encoder_2`` (the refiner's has no ``text_encoder``).

SDXL inpainting (``sdxl-inpaint``) is the base with a 9-channel conv_in; its UNet reads the same mask conditioning
as SD1.x inpainting (``modules.inpaint_conditioning``), the channel count taken from the tensor's shape.

Configs come from the file's ``serena_config`` metadata when present, else from SDXL's own configs shipped in
``modules/sd_configs/xl`` and ``xl_refiner``; both tokenizers are the CLIP BPE of ``modules/sd_configs/tokenizer``
(bigG's pads with ``!``, ``xl/tokenizer_2``). Nothing is fetched from a hub.

Keys are mapped by diffusers' own converters, then loaded strictly, with the SD1.x loader's checks: every tensor
of the file finds exactly one place (counted), and every parameter gets one. A1111's files also hold bigG's
``logit_scale`` (for image-text similarity, unused by generation) and sometimes ``position_ids`` buffers: those
are the only tensors left out. ``modules.sd_models_writer.save_sdxl_checkpoint`` writes the inverse mapping, and
the round trip is bitwise.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from modules import model_families, sd_models_loader as loader
from modules.checkpoint_info import CheckpointInfo
from modules.inpaint_conditioning import check_in_channels
from modules.model_facts import ModelFacts

XL_CONFIG_DIR = os.path.join(loader.CONFIGS_DIR, "xl")
XL_REFINER_CONFIG_DIR = os.path.join(loader.CONFIGS_DIR, "xl_refiner")
TOKENIZER_2_DIR = os.path.join(XL_CONFIG_DIR, "tokenizer_2")

CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
BIGG_PREFIX = model_families.SDXL_BIGG
REFINER_BIGG_PREFIX = model_families.SDXL_OPENCLIP_0
# Tensors of A1111 files that generation does not use (see the module docstring).
_UNUSED_SUFFIXES = ("logit_scale", "embeddings.position_ids")

_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")
_COMPONENT_FILES = {"unet": "unet/config.json", "vae": "vae/config.json", "text_encoder": "text_encoder/config.json",
                    "text_encoder_2": "text_encoder_2/config.json", "scheduler": "scheduler/scheduler_config.json"}

SDXL, SDXL_INPAINT, SDXL_REFINER = "sdxl", "sdxl-inpaint", "sdxl-refiner"
FAMILIES = (SDXL, SDXL_INPAINT, SDXL_REFINER)  # the ``model_families`` names this module loads


class SDXLModel(loader.SDModel):
    """One loaded SDXL checkpoint: ``SDModel``'s parts plus bigG (``tokenizer_2``, ``text_encoder_2``).

    The refiner (``is_refiner``) has no CLIP ViT-L: its ``text_encoder`` is ``None``, its UNet takes bigG's
    hidden states alone and an aesthetic score in its micro-conditioning instead of the target size. Its
    ``facts`` name both text encoders' widths (768 and 1280 for SDXL base).
    """

    def __init__(self, *, tokenizer_2: CLIPTokenizer, text_encoder_2: CLIPTextModelWithProjection, **kwargs):
        super().__init__(**kwargs)
        self.tokenizer_2 = tokenizer_2
        self.text_encoder_2 = text_encoder_2

    @property
    def is_refiner(self) -> bool:
        return self.text_encoder is None

    @property
    def facts(self) -> ModelFacts:
        return _facts(self.unet, self._own_vae, self.text_encoder, self.text_encoder_2, {"cfg_scale": self.cfg_scale},
                      self.family)

    def apply_vae(self, vae: AutoencoderKL | None, name: str | None = None) -> None:
        """As ``SDModel.apply_vae``, keeping SDXL's latent scale (0.13025): a VAE file has no scale of its own (it
        loads with SD1.x's), and the latents are the UNet's, as in A1111. The VAE is a shallow copy, so the
        cached VAE an SD1.x model may share keeps its own scale."""
        scale = self._own_vae.config.scaling_factor
        if vae is not None and vae.config.scaling_factor != scale:
            vae = copy.copy(vae)
            vae.register_to_config(scaling_factor=scale)
        super().apply_vae(vae, name)


def _facts(unet, vae, text_encoder, text_encoder_2, sampling, family) -> ModelFacts:
    """``sd_models_loader.model_facts``, with clip skip bounded by CLIP-L (bigG for the refiner) and the widths of
    both text encoders."""
    facts = loader.model_facts(unet, vae, text_encoder or text_encoder_2, sampling, family)
    widths = tuple(int(t.config.hidden_size) for t in (text_encoder, text_encoder_2) if t is not None)
    return dataclasses.replace(facts, text_encoder_widths=widths)


def load_tokenizer_2() -> CLIPTokenizer:
    """bigG's tokenizer: the shipped CLIP BPE, padding with ``!`` (id 0) as open_clip does."""
    with open(os.path.join(TOKENIZER_2_DIR, "special_tokens_map.json"), encoding="utf-8") as f:
        special = json.load(f)
    return CLIPTokenizer.from_pretrained(loader.TOKENIZER_DIR, local_files_only=True, **special)


def default_configs(family: str = SDXL) -> dict[str, dict]:
    """SDXL's component configs (``modules/sd_configs/xl`` or ``xl_refiner``); the refiner has no ``text_encoder``."""
    folder = XL_REFINER_CONFIG_DIR if family == SDXL_REFINER else XL_CONFIG_DIR
    configs = {}
    for component, rel in _COMPONENT_FILES.items():
        path = os.path.join(folder, rel)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                configs[component] = json.load(f)
    return configs


def load_checkpoint(info: CheckpointInfo, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    allow_pickle: bool = False, state: tuple | None = None) -> SDXLModel:
    """Load an SDXL (base or refiner) file or diffusers folder into an ``SDXLModel``.

    Raises:
        ValueError: as ``sd_models_loader.load_checkpoint`` does, naming the file and what is wrong.
    """
    device = torch.device(device)
    sampling = loader._sampling_from({}, "")
    if os.path.isdir(info.filename):
        family = _folder_family(info.filename)
        parts = _load_diffusers_folder(info.filename, family, device, dtype)
    else:
        parts, sampling, family = _file_components(info.filename, device, dtype, allow_pickle, state)
    unet, vae, text_encoder, text_encoder_2, scheduler_config = parts
    return SDXLModel(info=info, tokenizer=loader.load_tokenizer(), tokenizer_2=load_tokenizer_2(),
                     text_encoder=text_encoder.eval() if text_encoder is not None else None,
                     text_encoder_2=text_encoder_2.eval(), unet=unet.eval(), vae=vae.eval(),
                     scheduler_config=scheduler_config, device=device, dtype=dtype,
                     guidance_rescale=sampling["guidance_rescale"], cfg_scale=sampling["cfg_scale"], family=family)


def inspect_checkpoint(path: str, *, allow_pickle: bool = False, state: tuple | None = None) -> ModelFacts:
    """Check that ``load_checkpoint`` would succeed without reading a weight (the loading steps on the ``meta``
    device; a folder's configs and headers only); return what the model can do."""
    if os.path.isdir(path):
        return _inspect_diffusers_folder(path)
    (unet, vae, text_encoder, text_encoder_2, _), sampling, family = _file_components(path, loader.META,
                                                                                      torch.float32, allow_pickle,
                                                                                      state)
    return _facts(unet, vae, text_encoder, text_encoder_2, sampling, family)


def _folder_family(folder: str) -> model_families.Family:
    family = model_families.detect_folder(folder)
    if family.name not in FAMILIES:
        raise ValueError(model_families.refusal(folder, family) or f"{folder}: not an SDXL folder ({family.label})")
    return family


def _configs(metadata: dict[str, str], path: str, family: str) -> dict[str, dict]:
    configs = default_configs(family)
    stored = loader.stored_configs(metadata, path)
    configs.update({k: v for k, v in stored.items() if k in _COMPONENTS})
    configs["sampling"] = loader._sampling_from(stored.get("sampling", {}), os.path.basename(path))
    return configs


def _file_components(path: str, device: torch.device, dtype: torch.dtype, allow_pickle: bool,
                     state: tuple | None = None):
    """``((unet, vae, text_encoder or None, text_encoder_2, scheduler_config), sampling, family)`` of a single
    file; ``state``: as for ``sd_models_loader``."""
    name = os.path.basename(path)
    state_dict, metadata = loader.file_state(path, device, allow_pickle, state)
    family = model_families.detect({k: tuple(v.shape) for k, v in state_dict.items()})
    if family.name not in FAMILIES:
        raise ValueError(f"{name}: not an SDXL checkpoint: {model_families.refusal(name, family) or family.label}")
    configs = _configs(metadata, path, family.name)
    if family.in_channels is not None:
        # conv_in's shape decides, as for SD1.x: a foreign inpainting file has no metadata, so the base's config (4)
        configs["unet"] = dict(configs["unet"], in_channels=check_in_channels(family.in_channels, name))
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith(_UNUSED_SUFFIXES)}

    unet_config, vae_config = configs["unet"], configs["vae"]
    n_unet = sum(k.startswith(loader.UNET_PREFIX) for k in state_dict)
    if not n_unet:
        raise ValueError(f"{name}: an SDXL checkpoint without UNet tensors (model.diffusion_model.*)")
    unet_sd = loader._convert(name, "UNet", convert_ldm_unet_checkpoint, state_dict, unet_config)
    loader._check_conversion(name, "UNet", n_unet, unet_sd)
    vae_source = {k: v for k, v in state_dict.items()
                  if k.startswith(loader.VAE_PREFIX) and k[len(loader.VAE_PREFIX):].startswith(loader._VAE_PARTS)}
    vae_sd = loader._convert(name, "VAE", convert_ldm_vae_checkpoint, vae_source, vae_config)
    loader._check_conversion(name, "VAE", len(vae_source), vae_sd)

    unet = loader._instantiate(lambda: UNet2DConditionModel.from_config(unet_config), unet_sd, name, "UNet",
                               device, dtype)
    vae = loader._instantiate(lambda: AutoencoderKL.from_config(vae_config), vae_sd, name, "VAE", device, dtype)
    text_encoder = None
    if family.name != SDXL_REFINER:
        clip_source = {k: v for k, v in state_dict.items() if k.startswith(CLIP_L_PREFIX)}
        clip_sd = {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(clip_source).items()}
        loader._check_conversion(name, "text encoder", len(clip_source), clip_sd)
        config = CLIPTextConfig(**configs["text_encoder"])
        text_encoder = loader._instantiate(lambda: CLIPTextModel(config), clip_sd, name, "text encoder", device,
                                           dtype)
    bigg_prefix = REFINER_BIGG_PREFIX if family.name == SDXL_REFINER else BIGG_PREFIX
    text_encoder_2 = _open_clip_encoder(state_dict, configs["text_encoder_2"], bigg_prefix, name, device, dtype)
    return (unet, vae, text_encoder, text_encoder_2, dict(configs["scheduler"])), configs["sampling"], family


def _open_clip_encoder(state_dict, config: dict, prefix: str, name: str, device, dtype):
    """bigG from its open_clip-layout tensors: each maps to one transformers tensor, except the fused ``in_proj``
    attention weight and bias, which split into query, key and value (three each)."""
    source = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
    text_config = CLIPTextConfig(**config)
    if "text_projection" not in {k[len(prefix):] for k in source}:
        raise ValueError(f"{name}: the bigG text encoder has no {prefix}text_projection")
    with torch.device(loader.META):
        shape_model = CLIPTextModelWithProjection(text_config)
    converted = loader._convert(name, "bigG text encoder", convert_open_clip_checkpoint, shape_model, source,
                                prefix)
    fused = sum(k.endswith((".in_proj_weight", ".in_proj_bias")) for k in source)
    loader._check_conversion(name, "bigG text encoder", len(source) + 2 * fused, converted)
    return loader._instantiate(lambda: CLIPTextModelWithProjection(text_config), converted, name,
                               "bigG text encoder", device, dtype)


_FOLDER_PARTS = ((UNet2DConditionModel, "unet"), (AutoencoderKL, "vae"), (CLIPTextModel, "text_encoder"),
                 (CLIPTextModelWithProjection, "text_encoder_2"))


def _load_diffusers_folder(folder: str, family: model_families.Family, device: torch.device, dtype: torch.dtype):
    """``(unet, vae, text_encoder or None, text_encoder_2, scheduler_config)``, strictly, safetensors only."""
    loaded = [None if sub == "text_encoder" and family.name == SDXL_REFINER
              else loader.load_folder_part(folder, cls, sub, device, dtype) for cls, sub in _FOLDER_PARTS]
    return (*loaded, loader.folder_scheduler_config(folder, default_configs(family.name)["scheduler"]))


def _inspect_diffusers_folder(folder: str) -> ModelFacts:
    name = os.path.basename(folder.rstrip("/\\"))
    family = _folder_family(folder)
    configs = loader.folder_part_configs(folder, [sub for _, sub in _FOLDER_PARTS
                                                  if not (sub == "text_encoder" and family.name == SDXL_REFINER)])
    texts = [configs[sub] for sub in ("text_encoder", "text_encoder_2") if sub in configs]
    try:
        return ModelFacts(text_encoder_layers=int(texts[0]["num_hidden_layers"]),
                          latent_channels=int(configs["unet"].get("out_channels", 4)),
                          native_size=loader._native_size(configs["unet"], configs["vae"]) or family.native_size,
                          text_encoder_widths=tuple(int(t["hidden_size"]) for t in texts), family=family.name)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{name}: a text encoder config lacks a valid num_hidden_layers or hidden_size: {e}") \
            from None
