"""Loading Stable Diffusion 1.x checkpoints into diffusers/transformers components, and inspecting them unloaded.

Two on-disk forms load:

* a single ``.safetensors`` file in the original (A1111/LDM) key layout: ``model.diffusion_model.*`` (UNet),
  ``first_stage_model.*`` (VAE), ``cond_stage_model.transformer[.text_model].*`` (CLIP text encoder);
* a diffusers-format folder (``model_index.json`` with ``unet/``, ``vae/``, ``text_encoder/``, ``scheduler/``).

Component configs come from the file's ``serena_config`` safetensors metadata when present (Serena's own files),
else from the hand-written SD1.5 configs in ``modules/sd_configs/v1/``; the tokenizer always comes from
``modules/sd_configs/tokenizer/``. Nothing is fetched from a hub.

LDM keys are mapped to diffusers keys by diffusers' own converters, then loaded strictly: a tensor that finds no
place, or a parameter left without a tensor, raises ``ValueError`` naming the file, so a checkpoint never runs
with random weights. ``modules.sd_models_writer`` writes the inverse mapping.

Pickled ``.ckpt`` files are refused unless the caller opts in (``--allow-pickle-checkpoints``).

``inspect_checkpoint``/``inspect_vae`` run the same loading steps on PyTorch's ``meta`` device: tensors are built
from the safetensors header (names, shapes, dtypes) and no weight is read, so every check above (header parses,
every tensor's bytes lie inside the file, SD1.x layout, conversion, strict fit to the config) runs in a fraction of a
second, and what the model can do (``ModelFacts``) comes back.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from safetensors import SafetensorError, safe_open
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from modules import model_families
from modules.checkpoint_info import CheckpointInfo
from modules.inpaint_conditioning import check_in_channels
from modules.model_facts import ModelFacts

# Next to this file, not under paths.script_path: the configs belong to the code, wherever it is imported from.
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sd_configs")
TOKENIZER_DIR = os.path.join(CONFIGS_DIR, "tokenizer")
V1_CONFIG_DIR = os.path.join(CONFIGS_DIR, "v1")
METADATA_KEY = "serena_config"

UNET_PREFIX = model_families.UNET
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."
_TEXT_PREFIX_SHORT = model_families.SD1_TEXT
_VAE_PARTS = model_families.VAE_PARTS
PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin")

_COMPONENT_FILES = {
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "text_encoder": "text_encoder/config.json",
    "scheduler": "scheduler/scheduler_config.json",
}


META = torch.device("meta")
# init_empty_weights patches torch.nn.Module process-wide: loads that overlap would restore each other's patch.
_EMPTY_INIT_LOCK = threading.Lock()

# safetensors dtype codes -> torch dtypes, for the meta tensors of an inspection. Only whether a dtype is floating
# point matters to the checks, so a code missing here (a newer float format) is treated as float32.
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def model_facts(unet=None, vae=None, text_encoder=None, sampling=None,
                family: model_families.Family | None = None) -> ModelFacts:
    """``ModelFacts`` of loaded (or meta) components; a checkpoint's latent channels are its UNet's output, its
    native size what its configs say, else its family's."""
    layers = int(text_encoder.config.num_hidden_layers) if text_encoder is not None else None
    widths = (int(text_encoder.config.hidden_size),) if text_encoder is not None else ()
    channels = int(unet.config.out_channels) if unet is not None else int(vae.config.latent_channels)
    size = _native_size(unet.config, vae.config) if unet is not None and vae is not None else None
    return ModelFacts(text_encoder_layers=layers, latent_channels=channels,
                      native_size=size or (family.native_size if family else None),
                      cfg_scale=(sampling or {}).get("cfg_scale"), text_encoder_widths=widths,
                      family=family.name if family else None)


def _native_size(unet_config, vae_config) -> int | None:
    """``sample_size * 2 ** (len(block_out_channels) - 1)``: the latent side times the VAE's downscaling."""
    try:
        size = int(unet_config["sample_size"]) * 2 ** (len(vae_config["block_out_channels"]) - 1)
    except (KeyError, TypeError, ValueError):
        return None
    return size if size >= 8 else None


class SDModel:
    """One loaded SD1.x checkpoint: the components a pipeline needs, plus where they came from.

    ``scheduler_config`` is the checkpoint's own scheduler config (betas, prediction type…); samplers are built
    from it with ``SchedulerClass.from_config``. ``guidance_rescale`` is the checkpoint's own CFG rescale factor
    (0 for ordinary SD files; zero-terminal-SNR models such as Serena's shape models declare one, see
    ``sd_pipeline.rescale_guidance``); ``cfg_scale`` is the CFG scale it recommends, or ``None``. ``vae`` is the
    checkpoint's own VAE unless ``apply_vae`` swapped another in, in which case ``vae_name`` names the VAE file.
    ``conditioning_layer`` is the text encoder layer a family always conditions on, counted from the end as clip
    skip counts (SD2.x: 2, see ``modules.sd_models_sd2``); ``None``: clip skip chooses.
    """

    conditioning_layer: int | None = None

    def __init__(self, *, info: CheckpointInfo, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel,
                 unet: UNet2DConditionModel, vae: AutoencoderKL, scheduler_config: dict,
                 device: torch.device, dtype: torch.dtype, guidance_rescale: float = 0.0,
                 cfg_scale: float | None = None, family: model_families.Family = model_families.FAMILIES["sd1"]):
        self.info = info
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.unet = unet
        self.vae = vae
        self.scheduler_config = scheduler_config
        self.guidance_rescale = guidance_rescale
        self.cfg_scale = cfg_scale
        self.family = family
        self.device = device
        self.dtype = dtype
        self.vae_dtype = dtype      # the VAE's own (``modules.model_placement`` may run it in another)
        self.offload = None         # ``model_placement.ModelOffload`` under --medvram
        self.vae_name: str | None = None
        self._own_vae = vae

    @property
    def facts(self) -> ModelFacts:
        return model_facts(self.unet, self._own_vae, self.text_encoder, {"cfg_scale": self.cfg_scale}, self.family)

    @property
    def sd_model_hash(self) -> str:
        """The A1111 "Model hash": the first 10 hex digits of the checkpoint's sha256."""
        return self.info.shorthash

    def apply_vae(self, vae: AutoencoderKL | None, name: str | None = None) -> None:
        """Use ``vae`` instead of the checkpoint's own VAE, or restore the checkpoint's own with ``None``.

        Args:
            vae: a VAE from ``load_vae``; moved to this model's device and VAE dtype. ``None`` restores the
                checkpoint's own VAE, kept in memory since loading, so nothing is re-read.
            name: the VAE file name reported as ``vae_name`` (ignored when ``vae`` is ``None``).
        """
        if vae is None:
            self.vae, self.vae_name = self._own_vae, None
            return
        if (vae.device, vae.dtype) != (self.device, self.vae_dtype):
            vae = vae.to(device=self.device, dtype=self.vae_dtype)
        self.vae, self.vae_name = vae.eval(), name

    def __repr__(self):
        vae = f", vae={self.vae_name!r}" if self.vae_name else ""
        return f"<SDModel {self.info.title} on {self.device} {self.dtype}{vae}>"


def load_tokenizer() -> CLIPTokenizer:
    """The CLIP ViT-L/14 tokenizer in ``modules/sd_configs/tokenizer`` (built by tools/build_clip_tokenizer.py)."""
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True)


def default_configs() -> dict[str, dict]:
    """The SD1.5 component configs from ``modules/sd_configs/v1``: ``{"unet", "vae", "text_encoder", "scheduler"}``."""
    configs = {}
    for component, rel in _COMPONENT_FILES.items():
        with open(os.path.join(V1_CONFIG_DIR, rel), encoding="utf-8") as f:
            configs[component] = json.load(f)
    return configs


def load_checkpoint(info: CheckpointInfo, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    allow_pickle: bool = False, state: tuple | None = None) -> SDModel:
    """Load a checkpoint file or diffusers folder into an ``SDModel``.

    Args:
        info: the checkpoint, from ``modules.sd_models``.
        device: where the components are placed.
        dtype: the components' floating-point dtype (weights are cast from whatever the file holds).
        allow_pickle: accept pickled ``.ckpt`` files (read with ``torch.load(weights_only=True)``).
        state: the file's ``read_state_dict`` result when the caller has read it already (``file_state``).

    Raises:
        ValueError: the file is unreadable, truncated, pickled without ``allow_pickle``, not an SD1.x layout,
            or its tensors do not fit its config; the message names the file.
    """
    device = torch.device(device)
    sampling = _sampling_from({}, "")
    if os.path.isdir(info.filename):
        family = _folder_family(info.filename)
        components = _load_diffusers_folder(info.filename, device, dtype)
    else:
        components, sampling, family = _ldm_file_components(info.filename, device, dtype, allow_pickle, state)
    unet, vae, text_encoder, scheduler_config = components
    return SDModel(info=info, tokenizer=load_tokenizer(), text_encoder=text_encoder.eval(), unet=unet.eval(),
                   vae=vae.eval(), scheduler_config=scheduler_config, device=device, dtype=dtype,
                   guidance_rescale=sampling["guidance_rescale"], cfg_scale=sampling["cfg_scale"], family=family)


def inspect_checkpoint(path: str, *, allow_pickle: bool = False, state: tuple | None = None) -> ModelFacts:
    """Check that ``load_checkpoint`` would succeed, without reading any weight; return what the model can do.

    A single file goes through the very steps of ``load_checkpoint`` on the ``meta`` device, its tensors built
    from the header. A diffusers folder has each component's config read and each ``.safetensors`` header opened
    (truncation is caught there); whether its tensors fit their configs is left to ``from_pretrained`` at load.
    A pickled file (with ``allow_pickle``) is memory-mapped, not read, where its format allows.

    Raises:
        ValueError: as ``load_checkpoint`` does, naming the file and what is wrong.
    """
    if os.path.isdir(path):
        return _inspect_diffusers_folder(path)
    (unet, vae, text_encoder, _), sampling, family = _ldm_file_components(path, META, torch.float32, allow_pickle,
                                                                          state)
    return model_facts(unet, vae, text_encoder, sampling, family)


def inspect_vae(path: str) -> ModelFacts:
    """Check that ``load_vae`` would succeed, without reading any weight (see ``inspect_checkpoint``)."""
    return model_facts(vae=load_vae(path, device=META))


def file_state(path: str, device: torch.device, allow_pickle: bool, state: tuple | None = None) -> tuple:
    """``state`` when the caller read the file already, else ``read_state_dict`` of it for ``device`` (``meta``:
    no weight read): a pickle, unpickled once to tell its family, is not read again to load it."""
    return state if state is not None else read_state_dict(path, allow_pickle=allow_pickle, meta=device.type == "meta")


def _ldm_file_components(path: str, device: torch.device, dtype: torch.dtype, allow_pickle: bool,
                         state: tuple | None = None):
    """``((unet, vae, text_encoder, scheduler_config), sampling, family)`` of a single-file checkpoint."""
    state_dict, metadata = file_state(path, device, allow_pickle, state)
    family = _check_ldm_layout(state_dict, os.path.basename(path))
    configs = _configs_from_metadata(metadata, path)
    if family.in_channels is not None:  # conv_in's shape decides (9: inpainting), whatever the config says
        configs["unet"] = {**configs["unet"], "in_channels": family.in_channels}
    components = _components_from_ldm(state_dict, configs, os.path.basename(path), device, dtype)
    return components, configs["sampling"], family


def load_vae(path: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    """Load a standalone VAE ``.safetensors`` file.

    Accepts A1111 VAE files (LDM keys ``encoder.down.0.block.0…``, with or without ``first_stage_model.``) and
    diffusers-keyed VAE weights (``encoder.down_blocks.0.resnets.0…``). The config comes from the file's
    ``serena_config`` metadata, else the SD1.5 VAE config.

    Raises:
        ValueError: unreadable file, or tensors that do not fit the config; the message names the file.
    """
    name = os.path.basename(path)
    device = torch.device(device)
    state_dict, metadata = read_state_dict(path, meta=device.type == "meta")
    config = _configs_from_metadata(metadata, path)["vae"]
    prefix = VAE_PREFIX if any(k.startswith(VAE_PREFIX) for k in state_dict) else ""
    source = {k[len(prefix):]: v for k, v in state_dict.items()
              if k.startswith(prefix) and k[len(prefix):].startswith(_VAE_PARTS)}
    if not source:
        raise ValueError(f"{name}: not a VAE file: no encoder.*/decoder.* tensors")
    if any(".down_blocks." in k or ".up_blocks." in k for k in source):
        converted = source
    else:
        converted = _convert(name, "VAE", convert_ldm_vae_checkpoint, source, config)
        _check_conversion(name, "VAE", len(source), converted)
    return _instantiate(lambda: AutoencoderKL.from_config(config), converted, name, "VAE", device, dtype).eval()


def read_state_dict(path: str, *, allow_pickle: bool = False,
                    meta: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, safetensors metadata)`` of a checkpoint file, on the CPU in the file's dtypes.

    With ``meta`` the tensors are on the ``meta`` device: shapes and dtypes only, no weight read (a pickled file
    is memory-mapped where its format allows).

    Raises:
        ValueError: pickled file without ``allow_pickle``, unknown extension, or a corrupt/truncated file.
    """
    name = os.path.basename(path)
    if path.lower().endswith(PICKLE_EXTENSIONS):
        obj = read_pickle(path, allow_pickle=allow_pickle, mmap=meta)
        state_dict = obj.get("state_dict", obj) if isinstance(obj, dict) else None
        if not isinstance(state_dict, dict):
            raise ValueError(f"{name}: pickled checkpoint holds {type(obj).__name__}, not a state dict")
        return {k: v.to(META) if meta else v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}, {}
    if not path.lower().endswith(".safetensors"):
        raise ValueError(f"{name}: unsupported checkpoint type; expected .safetensors")
    with _open_safetensors(path) as f:
        metadata = f.metadata() or {}
        if meta:
            tensors = {k: _meta_tensor(f.get_slice(k)) for k in f.keys()}
        else:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, metadata


@contextlib.contextmanager
def _open_safetensors(path: str):
    """``safe_open``, which parses the header and checks that every tensor's byte range lies inside the file."""
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            yield f
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{os.path.basename(path)}: corrupt or truncated .safetensors file: {e}") from e


def _meta_tensor(tensor_slice) -> torch.Tensor:
    dtype = _SAFETENSORS_DTYPES.get(tensor_slice.get_dtype(), torch.float32)
    return torch.empty(tensor_slice.get_shape(), dtype=dtype, device=META)


def read_pickle(path: str, *, allow_pickle: bool, mmap: bool = False, what: str = "checkpoint"):
    """The object in a pickled file, unpickled weights-only (tensors, containers, numbers, strings: no code runs).

    Raises:
        ValueError: without ``allow_pickle`` (``--allow-pickle-checkpoints``), or a file that cannot be read.
            ``what`` names the kind of file in the message ("checkpoint", "embedding").
    """
    name = os.path.basename(path)
    if not allow_pickle:
        raise ValueError(f"{name}: pickled {what}s can run arbitrary code; convert to .safetensors, "
                         f"or start with --allow-pickle-checkpoints to load it anyway")
    return _load_pickle(path, name, mmap=mmap, what=what)


def _load_pickle(path: str, name: str, *, mmap: bool, what: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch.load surfaces corruption as many unrelated exception types
        if mmap and "mmap" in str(e):  # the legacy (pre-zip) format cannot be memory-mapped: read it
            return _load_pickle(path, name, mmap=False, what=what)
        raise ValueError(f"{name}: cannot read pickled {what}: {e}") from e


#: ``serena_config.sampling`` entries: how a checkpoint is meant to be sampled. name -> (absent, low, high)
SAMPLING_KEYS = {"guidance_rescale": (0.0, 0.0, 1.0), "cfg_scale": (None, 1.0, 30.0)}


def _sampling_from(stored, name: str) -> dict:
    if not isinstance(stored, dict):
        raise ValueError(f"{name}: {METADATA_KEY} sampling must be a JSON object, got {stored!r}")
    sampling = {}
    for key, (absent, low, high) in SAMPLING_KEYS.items():
        value = stored.get(key, absent)
        if value is not absent and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                    or not low <= value <= high):
            raise ValueError(f"{name}: {METADATA_KEY} sampling.{key} must be a number from {low:g} to {high:g}, "
                             f"got {value!r}")
        sampling[key] = value if value is absent else float(value)
    return sampling


def stored_configs(metadata: dict[str, str], path: str) -> dict:
    """The ``serena_config`` metadata object of a file (``{}`` without one); ``ValueError`` naming the file when it
    is not a JSON object."""
    if METADATA_KEY not in metadata:
        return {}
    try:
        stored = json.loads(metadata[METADATA_KEY])
    except ValueError as e:
        raise ValueError(f"{os.path.basename(path)}: unreadable {METADATA_KEY} metadata: {e}") from e
    if not isinstance(stored, dict):
        raise ValueError(f"{os.path.basename(path)}: {METADATA_KEY} metadata is not a JSON object")
    return stored


def _configs_from_metadata(metadata: dict[str, str], path: str) -> dict[str, dict]:
    configs = default_configs()
    stored = stored_configs(metadata, path)
    configs.update({k: v for k, v in stored.items() if k in configs})
    configs["sampling"] = _sampling_from(stored.get("sampling", {}), os.path.basename(path))
    return configs


def checkpoint_sampling(path: str) -> dict:
    """How a checkpoint is meant to be sampled, from its metadata alone (no weights are read).

    Returns ``{"guidance_rescale": float, "cfg_scale": float | None}``: the CFG rescale the sampling loop
    applies, and the CFG scale the checkpoint recommends (``None``: no recommendation; Serena's UI and CLI then
    start at A1111's 7). Folders and files without ``serena_config`` metadata give those defaults.

    Raises:
        ValueError: unreadable file or metadata, or a sampling value out of range; the message names the file.
    """
    metadata = {}
    if os.path.isfile(path) and path.lower().endswith(".safetensors"):
        metadata = _safetensors_metadata(path)
    return _configs_from_metadata(metadata, path)["sampling"]


def _safetensors_metadata(path: str) -> dict[str, str]:
    with _open_safetensors(path) as f:
        return f.metadata() or {}


def _components_from_ldm(state_dict: dict[str, torch.Tensor], configs: dict[str, dict], name: str,
                         device: torch.device, dtype: torch.dtype):
    """``(unet, vae, text_encoder, scheduler_config)`` from an LDM-layout state dict ``_check_ldm_layout`` passed."""
    unet, vae = ldm_unet_and_vae(state_dict, configs, name, device, dtype)
    # position_ids is a non-persistent buffer in transformers; some old files carry broken float copies of it.
    text_source = {k: v for k, v in state_dict.items()
                   if k.startswith(_TEXT_PREFIX_SHORT) and not k.endswith("embeddings.position_ids")}
    text_sd = {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(text_source).items()}
    _check_conversion(name, "text encoder", len(text_source), text_sd)
    text_config = CLIPTextConfig(**configs["text_encoder"])
    text_encoder = _instantiate(lambda: CLIPTextModel(text_config), text_sd, name, "text encoder", device, dtype)
    return unet, vae, text_encoder, dict(configs["scheduler"])


def ldm_unet_and_vae(state_dict: dict[str, torch.Tensor], configs: dict[str, dict], name: str,
                     device: torch.device, dtype: torch.dtype):
    """``(unet, vae)`` from the ``model.diffusion_model.*`` and ``first_stage_model.*`` tensors of a single file,
    built from ``configs["unet"]`` and ``configs["vae"]``; ``ValueError`` naming the file when a tensor is left."""
    unet_config, vae_config = configs["unet"], configs["vae"]

    n_unet = sum(k.startswith(UNET_PREFIX) for k in state_dict)
    unet_sd = _convert(name, "UNet", convert_ldm_unet_checkpoint, state_dict, unet_config)
    _check_conversion(name, "UNet", n_unet, unet_sd)

    vae_source = {k: v for k, v in state_dict.items()
                  if k.startswith(VAE_PREFIX) and k[len(VAE_PREFIX):].startswith(_VAE_PARTS)}
    vae_sd = _convert(name, "VAE", convert_ldm_vae_checkpoint, vae_source, vae_config)
    _check_conversion(name, "VAE", len(vae_source), vae_sd)

    unet = _instantiate(lambda: UNet2DConditionModel.from_config(unet_config), unet_sd, name, "UNet", device, dtype)
    vae = _instantiate(lambda: AutoencoderKL.from_config(vae_config), vae_sd, name, "VAE", device, dtype)
    return unet, vae


def _check_ldm_layout(state_dict: dict[str, torch.Tensor], name: str) -> model_families.Family:
    """The family of a state dict Serena can run; ``ValueError`` naming what it is otherwise."""
    if not state_dict:
        raise ValueError(f"{name}: the file holds no tensors")
    keys = list(state_dict)
    family = model_families.detect({k: tuple(v.shape) for k, v in state_dict.items()})
    if family.name != "unknown" and not family.runnable:
        raise ValueError(model_families.refusal(name, family))
    if family.in_channels is not None:
        check_in_channels(family.in_channels, name)
    if family.name.startswith("sdxl"):  # runnable, by their own loader
        raise ValueError(f"{name}: an {family.label} checkpoint, which modules.sd_models_xl loads")
    if family.name.startswith("sd2"):  # runnable, by its own loader
        raise ValueError(f"{name}: an {family.label} checkpoint, which modules.sd_models_sd2 loads")

    def has(prefix):
        return any(k.startswith(prefix) for k in keys)

    parts = ((UNET_PREFIX, "UNet"), (VAE_PREFIX, "VAE"), (_TEXT_PREFIX_SHORT, "text encoder"))
    missing = [what for prefix, what in parts if not has(prefix)]
    if missing:
        found = sorted({".".join(k.split(".")[:2]) for k in keys})[:8]
        raise ValueError(f"{name}: not a Stable Diffusion 1.x checkpoint in the LDM layout: no "
                         f"{', '.join(missing)} tensors (found key prefixes {found})")
    return family


def _folder_family(folder: str) -> model_families.Family:
    family = model_families.detect_folder(folder)
    if not family.runnable:
        raise ValueError(model_families.refusal(folder, family))
    if family.in_channels is not None:
        check_in_channels(family.in_channels, os.path.basename(folder.rstrip("/\\")))
    return family


def _check_conversion(name: str, what: str, n_source: int, converted: dict[str, torch.Tensor]) -> None:
    """Fail when diffusers' converter dropped source tensors.

    The converters map tensors by name pattern and silently skip what they do not recognise; each source
    tensor maps to exactly one target, so equal counts mean nothing was dropped.
    """
    if len(converted) != n_source:
        raise ValueError(f"{name}: {n_source} {what} tensors in the file, but {len(converted)} mapped onto the "
                         f"SD1.x layout its config describes")


def _convert(name: str, what: str, convert, *args) -> dict[str, torch.Tensor]:
    try:
        return convert(*args)
    except KeyError as e:
        raise ValueError(f"{name}: the {what} conversion needs {e}, which the file or its config lacks") from e


def _instantiate(build, state_dict: dict[str, torch.Tensor], name: str, what: str,
                 device: torch.device, dtype: torch.dtype):
    """Build a model without allocating random weights, then assign ``state_dict`` to it strictly.

    The tensors are cast before they are assigned: casting a diffusers model afterwards warns on every load.
    """
    state_dict = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
                  for k, v in state_dict.items()}
    if torch.device(device).type == "meta":
        # An inspection runs in whatever thread validates a request. torch's device context is per thread, while
        # init_empty_weights patches torch.nn.Module for every thread: two overlapping ones can leave it patched,
        # and every model built afterwards, anywhere, has no weights.
        with torch.device(META):
            model = build()
    else:
        with _EMPTY_INIT_LOCK, init_empty_weights():
            model = build()
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(f"{name}: {what} weights do not fit its config: {e}") from e
    # Non-persistent buffers (CLIP's position_ids) were built on the CPU and are not in the state dict.
    return model.to(device)


def _load_diffusers_folder(folder: str, device: torch.device, dtype: torch.dtype):
    """``(unet, vae, text_encoder, scheduler_config)`` from a diffusers-format folder, strictly, safetensors only."""
    loaded = [load_folder_part(folder, cls, sub, device, dtype)
              for cls, sub in ((UNet2DConditionModel, "unet"), (AutoencoderKL, "vae"), (CLIPTextModel, "text_encoder"))]
    return (*loaded, folder_scheduler_config(folder, default_configs()["scheduler"]))


def load_folder_part(folder: str, cls, sub: str, device: torch.device, dtype: torch.dtype):
    """One component of a diffusers folder (``cls`` from ``sub/``), strictly, safetensors only; ``ValueError``
    naming the folder and the part when it cannot load or its weights do not fit its config."""
    name = os.path.basename(folder.rstrip("/\\"))
    try:
        dtype_arg = {"torch_dtype": dtype} if sub in ("unet", "vae") else {"dtype": dtype}  # transformers: dtype
        model, report = cls.from_pretrained(folder, subfolder=sub, local_files_only=True, use_safetensors=True,
                                            output_loading_info=True, **dtype_arg)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise ValueError(f"{name}: cannot load {sub}/: {e}") from e
    problems = {k: v for k, v in report.items() if k != "error_msgs" and v}
    if problems or report.get("error_msgs"):
        raise ValueError(f"{name}: {sub}/ weights do not fit its config: {problems or report['error_msgs']}")
    return model.to(device)


def folder_scheduler_config(folder: str, default: dict) -> dict:
    """A diffusers folder's ``scheduler/scheduler_config.json``, or ``default`` when it has none."""
    scheduler_file = os.path.join(folder, _COMPONENT_FILES["scheduler"])
    if not os.path.isfile(scheduler_file):
        return default
    with open(scheduler_file, encoding="utf-8") as f:
        return json.load(f)


def folder_part_configs(folder: str, parts) -> dict[str, dict]:
    """``{part: config}`` of a diffusers folder's ``parts`` (``"unet"``, ``"vae"``...), each checked to have
    readable ``.safetensors`` weights (headers only) and a ``config.json``; ``ValueError`` naming the part."""
    name = os.path.basename(folder.rstrip("/\\"))
    configs = {}
    for sub in parts:
        directory = os.path.join(folder, sub)
        weights = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors")) if os.path.isdir(directory) \
            else []
        if not weights:
            raise ValueError(f"{name}: cannot load {sub}/: no .safetensors weights")
        for weight in weights:
            try:
                _safetensors_metadata(os.path.join(directory, weight))
            except ValueError as e:
                raise ValueError(f"{name}: {sub}/{e}") from None
        try:
            with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
                configs[sub] = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{name}: cannot load {sub}/config.json: {e}") from e
    return configs


def _inspect_diffusers_folder(folder: str) -> ModelFacts:
    name = os.path.basename(folder.rstrip("/\\"))
    family = _folder_family(folder)
    configs = folder_part_configs(folder, ("unet", "vae", "text_encoder"))
    try:
        return ModelFacts(text_encoder_layers=int(configs["text_encoder"]["num_hidden_layers"]),
                          latent_channels=int(configs["unet"].get("out_channels", 4)),
                          native_size=_native_size(configs["unet"], configs["vae"]) or family.native_size,
                          text_encoder_widths=(int(configs["text_encoder"]["hidden_size"]),),
                          family=family.name)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{name}: text_encoder/config.json lacks a valid num_hidden_layers or hidden_size: "
                         f"{e}") from None
