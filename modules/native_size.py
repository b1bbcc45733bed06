"""The image size a checkpoint was made for, read from its configuration without loading it.

One function for every front door: the API (a request without ``width``/``height``), the UI (the tabs' starting
size) and the headless CLI (``--txt2img`` without ``--width``/``--height``).
"""

from __future__ import annotations

import json
import logging
import os

log = logging.getLogger("serena")

#: A1111's default size, exactly SD 1.x's native size: used for checkpoints that do not declare theirs.
SD_DEFAULT_SIZE = 512
#: Where Serena's checkpoints keep their component configs (``modules.sd_models_loader.METADATA_KEY``).
CONFIG_METADATA_KEY = "serena_config"


def _read_json(path: str):
    with open(path, encoding="utf8") as f:
        return json.load(f)


def declared_size(filename: str) -> int | None:
    """``unet.sample_size * 2 ** (len(vae.block_out_channels) - 1)`` from a checkpoint's configuration (Serena's
    safetensors metadata, a diffusers folder's config files), or ``None`` when the file does not say."""
    try:
        if os.path.isdir(filename):
            unet = _read_json(os.path.join(filename, "unet", "config.json"))
            vae = _read_json(os.path.join(filename, "vae", "config.json"))
        elif filename.endswith(".safetensors"):
            from safetensors import safe_open

            try:
                with safe_open(filename, framework="pt", device="cpu") as f:
                    metadata = f.metadata() or {}
            except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a bad header
                raise ValueError(str(e)) from e
            if CONFIG_METADATA_KEY not in metadata:
                return None
            configs = json.loads(metadata[CONFIG_METADATA_KEY])
            unet, vae = configs["unet"], configs["vae"]
        else:
            return None
        size = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.info("native size of %s unknown (%s)", filename, e)
        return None
    return size if size >= 8 else None


def native_size(filename: str) -> int:
    """The checkpoint's declared size; a file that declares none is a standard SD 1.x checkpoint: 512."""
    return declared_size(filename) or SD_DEFAULT_SIZE


def for_generation(override_settings: dict | None = None) -> int:
    """The native size of the checkpoint a generation with ``override_settings`` runs on.

    ``sd_model_checkpoint`` in the overrides wins over the stored setting, as it does when the generation loads its
    model. Raises ``ValueError`` when that checkpoint does not exist (the caller reports the override).
    """
    from modules import sd_models

    name = (override_settings or {}).get("sd_model_checkpoint")
    info = sd_models.resolve_checkpoint(name) if name else sd_models.effective_checkpoint()
    return native_size(info.filename)
