"""Loading Stable Diffusion 2.x checkpoints (``model_families`` "sd2"): single files, the UNet and VAE as SD1.x's
(``sd_models_loader.ldm_unet_and_vae``), the OpenCLIP ViT-H text encoder (``cond_stage_model.model.*``) converted
to a transformers ``CLIPTextModel`` with every layer, and the prediction type decided per file; diffusers folders
through ``sd_models_loader``'s folder loading (their scheduler config holds the prediction type).

Configs come from the file's ``serena_config`` metadata when present, else from ``modules/sd_configs/v2`` (UNet,
text encoder) and ``v1`` (VAE, and the scheduler with its prediction type set). Nothing is fetched from a hub.

Prediction type (``prediction_for``), first that answers:

1. a ``.yaml`` beside the file (A1111 reads it as the model's config): ``parameterization: "v"`` is v-prediction,
   a config without it epsilon (the LDM default);
2. the file's metadata: ``modelspec.prediction_type`` ("v" / "epsilon"), or ``serena_config``'s scheduler;
3. A1111's test forward (``is_using_v_parameterization_for_sd2``): the UNet at t=999 on a constant 0.5 latent and
   context; a mean of ``output - input`` below -1 is v-prediction. An inspection reads no weights, so it leaves
   the prediction undecided when the first two are silent.

The decided family fixes the native size (768 v, 512 epsilon) through the UNet's ``sample_size``.

Conditioning is A1111's ``FrozenOpenCLIPEmbedder(layer="penultimate")``: the output of the last layer but one,
through ``ln_final``, whatever clip skip says (A1111 ignores ``CLIP_stop_at_last_layers`` for SD2.x); prompts are
padded with ``!`` (id 0) as open_clip pads.
"""

from __future__ import annotations

import dataclasses
import json
import os
from types import SimpleNamespace

import torch
import yaml
from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from modules import model_families, sd_models_loader as loader
from modules.checkpoint_info import CheckpointInfo, config_beside
from modules.model_facts import ModelFacts

FAMILIES = ("sd2",)
V2_CONFIG_DIR = os.path.join(loader.CONFIGS_DIR, "v2")
TEXT_PREFIX = model_families.SD2_TEXT
PENULTIMATE = 2
OPEN_CLIP_PAD = "!"  # open_clip pads with token 0, which is "!"
# open_clip's pooled-output parts: SD2.x conditions on hidden states, so A1111 never applies them.
_UNUSED_TEXT = ("text_projection", "logit_scale")
_PREDICTIONS = {"v": "v", "v_prediction": "v", "epsilon": "epsilon", "eps": "epsilon"}
_SCHEDULER_PREDICTION = {"v": "v_prediction", "epsilon": "epsilon"}


class SD2Model(loader.SDModel):
    """A loaded SD2.x checkpoint: an ``SDModel`` that conditions on open_clip's penultimate text layer, whatever
    clip skip says (``conditioning_layer``: 2 for a single file, 1 for a diffusers folder's cut encoder)."""

    conditioning_layer = PENULTIMATE


def load_tokenizer() -> CLIPTokenizer:
    """The shipped CLIP BPE (open_clip's vocabulary too), padding with ``!`` (id 0) as open_clip does."""
    return CLIPTokenizer.from_pretrained(loader.TOKENIZER_DIR, local_files_only=True, pad_token=OPEN_CLIP_PAD)


def default_configs(prediction: str | None) -> dict[str, dict]:
    """SD2.x's component configs; the UNet's ``sample_size`` and the scheduler's ``prediction_type`` follow
    ``prediction`` ("v": 768 px, v_prediction; otherwise 512 px, epsilon)."""
    configs = loader.default_configs()
    for component in ("unet", "text_encoder"):
        with open(os.path.join(V2_CONFIG_DIR, component, "config.json"), encoding="utf-8") as f:
            configs[component] = json.load(f)
    size = model_families.FAMILIES["sd2"].decided(prediction or "epsilon").native_size
    configs["unet"]["sample_size"] = size // 8
    configs["scheduler"]["prediction_type"] = _SCHEDULER_PREDICTION[prediction or "epsilon"]
    return configs


def open_clip_text_state(source: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """open_clip text-tower tensors (keys without their prefix: ``transformer.resblocks.N.*``,
    ``token_embedding.weight``, ``positional_embedding``, ``ln_final.*``, ``text_projection``) under transformers'
    ``CLIPTextModelWithProjection`` keys, every layer kept; ``width`` is the model's hidden size.

    diffusers' converter does the mapping: given un-prefixed keys, its SD2 list of tensors to drop (the last layer,
    which the penultimate conditioning never reads) does not apply, so the model is the file's, layer for layer.
    """
    shape_model = SimpleNamespace(config=SimpleNamespace(hidden_size=width))
    converted = convert_open_clip_checkpoint(shape_model, source, prefix="")
    return {k.removeprefix("text_model."): v for k, v in converted.items()}


def _yaml_prediction(path: str) -> str | None:
    config_path = config_beside(path)
    if not os.path.isfile(config_path):
        return None
    try:
        with open(config_path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
        params = config["model"].get("params") or {}
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{os.path.basename(config_path)}: not an LDM model config: {e}") from None
    found = params.get("parameterization", "eps")
    if found not in _PREDICTIONS:
        raise ValueError(f"{os.path.basename(config_path)}: unknown parameterization {found!r}; expected \"v\" "
                         f"or \"eps\"")
    return _PREDICTIONS[found]


def _metadata_prediction(metadata: dict[str, str], configs: dict[str, dict]) -> str | None:
    spec = metadata.get("modelspec.prediction_type")
    if spec in _PREDICTIONS:
        return _PREDICTIONS[spec]
    return _PREDICTIONS.get(configs.get("scheduler", {}).get("prediction_type"))


def prediction_for(path: str, metadata: dict[str, str], stored: dict[str, dict]) -> str | None:
    """"v" or "epsilon" from the ``.yaml`` beside ``path`` or the file's metadata (``stored``: its
    ``serena_config`` components); ``None`` when both are silent (``v_test`` then decides)."""
    return _yaml_prediction(path) or _metadata_prediction(metadata, stored)


@torch.no_grad()
def v_test(unet) -> float:
    """A1111's v-prediction test: the mean of ``unet(x) - x`` for a constant 0.5 latent (8×8) and context at
    t=999; below -1 means v-prediction. Run where the UNet is, in its dtype."""
    param = next(unet.parameters())
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, device=param.device, dtype=param.dtype)
    context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, device=param.device, dtype=param.dtype)
    t = torch.tensor([999], device=param.device)
    return (unet(x, t, encoder_hidden_states=context).sample - x).float().mean().item()


def _file_components(path: str, device: torch.device, dtype: torch.dtype, allow_pickle: bool,
                     state: tuple | None = None):
    """``((unet, vae, text_encoder, scheduler_config), sampling, family)`` of an SD2.x single file; the family
    decided unless an inspection found no declared prediction. ``state``: as for ``sd_models_loader``."""
    name = os.path.basename(path)
    state_dict, metadata = loader.file_state(path, device, allow_pickle, state)
    family = model_families.detect({k: tuple(v.shape) for k, v in state_dict.items()})
    if family.name not in FAMILIES:
        raise ValueError(model_families.refusal(name, family) or f"{name}: not an SD2.x checkpoint ({family.label})")
    parts = ((loader.UNET_PREFIX, "UNet"), (loader.VAE_PREFIX, "VAE"), (TEXT_PREFIX, "text encoder"))
    missing = [what for prefix, what in parts if not any(k.startswith(prefix) for k in state_dict)]
    if missing:
        raise ValueError(f"{name}: an SD2.x checkpoint without {', '.join(missing)} tensors")
    stored = loader.stored_configs(metadata, path)
    prediction = prediction_for(path, metadata, stored)
    configs = default_configs(prediction)
    configs.update({k: v for k, v in stored.items() if k in configs})
    sampling = loader._sampling_from(stored.get("sampling", {}), name)

    unet, vae = loader.ldm_unet_and_vae(state_dict, configs, name, device, dtype)
    text_encoder = _text_encoder(state_dict, configs["text_encoder"], name, device, dtype)
    if prediction is None and device.type != "meta":
        prediction = "v" if v_test(unet) < -1 else "epsilon"
    scheduler_config = dict(configs["scheduler"])
    if prediction is not None:
        family = family.decided(prediction)
        scheduler_config["prediction_type"] = _SCHEDULER_PREDICTION[prediction]
    return (unet, vae, text_encoder, scheduler_config), sampling, family


def _text_encoder(state_dict, config: dict, name: str, device, dtype) -> CLIPTextModel:
    """The ViT-H text encoder: each open_clip tensor maps to one transformers tensor, except the fused attention
    ``in_proj`` weight and bias (three each) and the pooled-output parts SD2.x does not use."""
    source = {k[len(TEXT_PREFIX):]: v for k, v in state_dict.items() if k.startswith(TEXT_PREFIX)}
    unused = [k for k in source if k in _UNUSED_TEXT]
    text_config = CLIPTextConfig(**config)
    converted = loader._convert(name, "text encoder", open_clip_text_state,
                                {k: v for k, v in source.items() if k not in unused}, text_config.hidden_size)
    fused = sum(k.endswith((".in_proj_weight", ".in_proj_bias")) for k in source)
    loader._check_conversion(name, "text encoder", len(source) - len(unused) + 2 * fused, converted)
    return loader._instantiate(lambda: CLIPTextModel(text_config), converted, name, "text encoder", device, dtype)


def load_checkpoint(info: CheckpointInfo, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    allow_pickle: bool = False, state: tuple | None = None) -> SD2Model:
    """Load an SD2.x single file or diffusers folder into an ``SD2Model``; its family decided (v or epsilon,
    native size).

    A diffusers folder's text encoder is stored as diffusers cuts it, without open_clip's last layer, so its last
    layer is A1111's penultimate one and conditions the model.

    Raises:
        ValueError: as ``sd_models_loader.load_checkpoint`` does, naming the file and what is wrong.
    """
    device = torch.device(device)
    layer = PENULTIMATE
    sampling = loader._sampling_from({}, "")
    if os.path.isdir(info.filename):
        family = model_families.detect_folder(info.filename)
        if family.name not in FAMILIES:
            raise ValueError(model_families.refusal(info.filename, family) or f"{info.name}: not an SD2.x folder")
        unet, vae, text_encoder, scheduler_config = loader._load_diffusers_folder(info.filename, device, dtype)
        layer = 1
    else:
        (unet, vae, text_encoder, scheduler_config), sampling, family = _file_components(info.filename, device,
                                                                                         dtype, allow_pickle, state)
    model = SD2Model(info=info, tokenizer=load_tokenizer(), text_encoder=text_encoder.eval(), unet=unet.eval(),
                     vae=vae.eval(), scheduler_config=scheduler_config, device=device, dtype=dtype,
                     guidance_rescale=sampling["guidance_rescale"], cfg_scale=sampling["cfg_scale"], family=family)
    model.conditioning_layer = layer
    return model


def inspect_checkpoint(path: str, *, allow_pickle: bool = False, state: tuple | None = None) -> ModelFacts:
    """Check that ``load_checkpoint`` would succeed without reading a weight; return what the model can do (the
    native size ``None`` while the prediction type waits for the load's test forward)."""
    if os.path.isdir(path):
        return loader._inspect_diffusers_folder(path)
    (unet, vae, text_encoder, _), sampling, family = _file_components(path, loader.META, torch.float32, allow_pickle,
                                                                      state)
    facts = loader.model_facts(unet, vae, text_encoder, sampling, family)
    return facts if family.prediction else dataclasses.replace(facts, native_size=None)
