"""Model families: which architecture a checkpoint file is, from its tensor names and shapes alone.

A leaf that imports no torch: a single file is classified from its safetensors header (``read_header``), a diffusers
folder from ``model_index.json`` and its UNet's ``config.json`` (``detect_folder``). ``detect`` is a pure function
of ``{tensor name: shape}``, so ``modules.checkpoint_loaders`` classifies a pickled state dict the same way.

``RUNNABLE`` is the one table of what Serena can run; a family leaves "recognised, cannot run yet" by being added
there (with the loader code that runs it). Everything else is refused by name (``refusal``) before it is chosen.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace

UNET = "model.diffusion_model."
CONV_IN = UNET + "input_blocks.0.0.weight"
SD1_TEXT = "cond_stage_model.transformer."
SD2_TEXT = "cond_stage_model.model."
SDXL_OPENCLIP_0 = "conditioner.embedders.0.model."
SDXL_BIGG = "conditioner.embedders.1.model."
_LORA_MARKS = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_LORA_PARTS = (".lora_down.", ".lora_up.", ".lora_A", ".lora_B")
VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")  # a VAE's own keys

#: The families Serena can run today (SDXL base, inpainting and refiner: ``modules.sd_models_xl``; SD2.x:
#: ``modules.sd_models_sd2``).
RUNNABLE = frozenset({"sd1", "sd1-inpaint", "sd2", "sdxl", "sdxl-inpaint", "sdxl-refiner"})

MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit: a larger length field is a corrupt file, not a header


@dataclass(frozen=True)
class Family:
    """One model architecture as recognised from a file.

    ``native_size`` is the image side the family was trained at (``None`` while undecided: an SD 2.x file is 768
    with v-prediction, 512 with epsilon; see ``decided``). ``in_channels`` is the UNet's input channels (9 for an
    inpainting model) and ``context_dim`` its cross-attention width, ``None`` where the file has no UNet or its
    shape was not read. ``prediction`` is ``"epsilon"``, ``"v"`` or ``None`` (undecided from the header).
    """

    name: str
    label: str
    kind: str = "checkpoint"           # "checkpoint", "lora", "vae" or "unknown": what the file is, for messages
    native_size: int | None = None
    in_channels: int | None = None
    context_dim: int | None = None
    prediction: str | None = "epsilon"

    @property
    def runnable(self) -> bool:
        return self.name in RUNNABLE

    @property
    def is_inpaint(self) -> bool:
        return self.name.endswith("-inpaint")

    def decided(self, prediction: str) -> Family:
        """This family once its prediction type is known; an SD 2.x v-prediction model is 768 px, epsilon 512."""
        size = self.native_size
        if self.name.startswith("sd2"):
            size = 768 if prediction == "v" else 512
        return replace(self, prediction=prediction, native_size=size)


#: Every family recognised, by name. ``detect`` returns one of these (with the shapes it read filled in).
FAMILIES = {f.name: f for f in (
    Family("sd1", "SD1.x", native_size=512),
    Family("sd1-inpaint", "SD1.x inpainting", native_size=512),
    Family("sd1-pix2pix", "SD1.x InstructPix2Pix", native_size=512),
    Family("sd2", "SD2.x", prediction=None),
    Family("sd2-inpaint", "SD2.x inpainting", native_size=512),
    Family("sdxl", "SDXL", native_size=1024),
    Family("sdxl-inpaint", "SDXL inpainting", native_size=1024),
    Family("sdxl-refiner", "SDXL refiner", native_size=1024),
    Family("sd3", "SD3", native_size=1024, prediction="flow"),
    Family("flux", "FLUX", native_size=1024, prediction="flow"),
    Family("lora", "LoRA", kind="lora", prediction=None),
    Family("vae", "VAE", kind="vae", prediction=None),
    Family("unknown", "unknown", kind="unknown", prediction=None),
)}


def _unet_shapes(shapes: Mapping[str, tuple]) -> dict:
    """``in_channels`` and ``context_dim`` of an LDM UNet: conv_in's input and the first cross-attention's key."""
    found = {}
    conv_in = shapes.get(CONV_IN)
    if conv_in is not None and len(conv_in) == 4:
        found["in_channels"] = int(conv_in[1])
    for key, shape in shapes.items():
        if key.startswith(UNET) and key.endswith(".attn2.to_k.weight") and len(shape) == 2:
            found["context_dim"] = int(shape[1])
            break
    return found


def _with_channels(base: str, in_channels: int | None) -> str:
    if in_channels == 9:
        return f"{base}-inpaint"
    if base == "sd1" and in_channels == 8:
        return "sd1-pix2pix"
    return base


def detect(shapes: Mapping[str, tuple]) -> Family:
    """The family of a state dict given as ``{tensor name: shape}``; ``FAMILIES["unknown"]`` when none fits.

    Decided by which text encoders and UNet blocks the file holds (as A1111's ``sd_models_config`` does), the
    variant by conv_in's input channels (9: inpainting); the shapes read are recorded in the result.
    """
    keys = list(shapes)

    def has(*prefixes):
        return any(k.startswith(prefixes) for k in keys)

    if any(k.startswith(_LORA_MARKS) or any(p in k for p in _LORA_PARTS) for k in keys):
        return FAMILIES["lora"]
    if has(UNET + "joint_blocks.", "joint_blocks."):
        return FAMILIES["sd3"]
    if has(UNET + "double_blocks.", "double_blocks.", UNET + "single_blocks.", "single_blocks."):
        return FAMILIES["flux"]
    if has(UNET):
        unet = _unet_shapes(shapes)
        if has(SDXL_BIGG):
            base = "sdxl"
        elif has(SDXL_OPENCLIP_0):
            base = "sdxl-refiner"
        elif has(SD2_TEXT):
            base = "sd2"
        elif has(SD1_TEXT):
            base = "sd1"
        else:
            return FAMILIES["unknown"]
        name = base if base == "sdxl-refiner" else _with_channels(base, unet.get("in_channels"))
        return replace(FAMILIES[name], **unet)
    if keys and all(k.removeprefix("first_stage_model.").startswith(VAE_PARTS) for k in keys):
        return FAMILIES["vae"]
    return FAMILIES["unknown"]


def read_header(path: str) -> tuple[dict[str, tuple], dict[str, str]]:
    """``({tensor name: shape}, metadata)`` of a ``.safetensors`` file, from its header alone (no weight read).

    Raises:
        ValueError: naming the file, when the header is missing, too large or not the JSON safetensors writes.
    """
    name = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            start = f.read(8)
            if len(start) < 8:
                raise ValueError("no header")
            (length,) = struct.unpack("<Q", start)
            if length > MAX_HEADER_BYTES:
                raise ValueError(f"header length {length} is too large")
            raw = f.read(length)
        if len(raw) < length:
            raise ValueError("header cut short")
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        shapes = {k: tuple(int(n) for n in v["shape"]) for k, v in header.items()}
    except OSError as e:
        raise ValueError(f"{name}: {e.strerror or e}") from None
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"{name}: corrupt or truncated .safetensors file: {e}") from None
    return shapes, metadata if isinstance(metadata, dict) else {}


def _json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def detect_folder(folder: str) -> Family:
    """The family of a diffusers-format folder, from ``model_index.json``, ``unet/config.json`` and (SD2.x's
    open_clip text encoder) ``text_encoder/config.json``."""
    index = _json(os.path.join(folder, "model_index.json"))
    pipeline = str(index.get("_class_name", ""))
    if pipeline.startswith("StableDiffusion3") or "text_encoder_3" in index:
        return FAMILIES["sd3"]
    if pipeline.startswith("Flux"):
        return FAMILIES["flux"]
    unet = _json(os.path.join(folder, "unet", "config.json"))
    shapes = {k: unet[k] for k in ("in_channels", "cross_attention_dim") if isinstance(unet.get(k), int)}
    found = {"in_channels": shapes.get("in_channels"), "context_dim": shapes.get("cross_attention_dim")}
    if "text_encoder_2" in index or "XL" in pipeline:
        base = "sdxl" if "text_encoder" in index and index.get("text_encoder") != [None, None] else "sdxl-refiner"
    elif not unet:
        return FAMILIES["unknown"]
    elif found["context_dim"] == 1024 or _json(os.path.join(folder, "text_encoder", "config.json")).get(
            "hidden_act") == "gelu":  # open_clip's text tower uses GELU, OpenAI CLIP's quick GELU
        base = "sd2"
    else:
        base = "sd1"
    name = base if base == "sdxl-refiner" else _with_channels(base, found["in_channels"])
    family = replace(FAMILIES[name], **found)
    if base == "sd2":
        prediction = _json(os.path.join(folder, "scheduler", "scheduler_config.json")).get("prediction_type")
        if prediction in ("epsilon", "v_prediction"):
            family = family.decided("v" if prediction == "v_prediction" else "epsilon")
    return family


def detect_path(path: str) -> Family | None:
    """The family of a checkpoint file or folder; ``None`` for a pickled file (its keys need ``torch.load``, which
    ``modules.checkpoint_loaders`` runs when the file is chosen).

    Raises:
        ValueError: a ``.safetensors`` header that cannot be read (``read_header``).
    """
    if os.path.isdir(path):
        return detect_folder(path)
    if path.lower().endswith(".safetensors"):
        return detect(read_header(path)[0])
    return None


def runnable_labels() -> str:
    """"SD1.x, SD1.x inpainting, SD2.x, SDXL, SDXL inpainting and SDXL refiner": what Serena runs, for messages."""
    labels = [FAMILIES[n].label for n in FAMILIES if n in RUNNABLE]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def refusal(filename: str, family: Family) -> str | None:
    """Why ``filename`` cannot be chosen as a checkpoint, naming what it was recognised as; ``None`` if it can."""
    if family.runnable:
        return None
    name = os.path.basename(filename.rstrip("/\\"))
    runs = f"Serena runs {runnable_labels()} checkpoints"
    if family.kind == "lora":
        return f"{name} is a LoRA, not a checkpoint: it belongs in models/Lora; {runs}"
    if family.kind == "vae":
        return f"{name} is a VAE alone, not a checkpoint: it belongs in models/VAE (the sd_vae setting); {runs}"
    if family.kind == "unknown":
        return f"{name} is not a checkpoint Serena recognises; {runs}"
    article = "an" if family.label.startswith("S") else "a"  # "an SDXL", "a FLUX"
    return f"{name} is {article} {family.label} checkpoint, which Serena cannot run yet; {runs}"
