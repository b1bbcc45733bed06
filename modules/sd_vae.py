"""VAE files under ``models/VAE`` and the names ``sd_vae`` accepts: ``Automatic``, ``None`` or a file name."""

from __future__ import annotations

import os

from modules import shared

VAE_EXTENSIONS = (".safetensors",)
SPECIAL = ("Automatic", "None")


def vae_dirs() -> list[str]:
    return shared.data_paths.model_dirs("VAE")


def list_vaes() -> dict[str, str]:
    """``{file name: path}`` of every VAE file, first folder wins."""
    found: dict[str, str] = {}
    for base in vae_dirs():
        if os.path.isdir(base):
            for name in sorted(os.listdir(base)):
                if name.endswith(VAE_EXTENSIONS):
                    found.setdefault(name, os.path.join(base, name))
    return found


def vae_choices() -> list[str]:
    return list(SPECIAL) + list(list_vaes())


def resolve_vae_name(value) -> str:
    """The canonical ``sd_vae`` value for ``value``, or ``ValueError`` naming the choices."""
    if not isinstance(value, str):
        raise ValueError(f"expected a VAE name, got {value!r}")
    for special in SPECIAL:
        if value.lower() == special.lower():
            return special
    vaes = list_vaes()
    if value in vaes:
        return value
    stems = [n for n in vaes if os.path.splitext(n)[0] == value]
    if len(stems) == 1:
        return stems[0]
    raise ValueError(f"no VAE named {value!r}; choose one of {vae_choices()}")


def vae_path(name: str) -> str | None:
    """The file for a resolved name; ``None`` for Automatic/None."""
    return list_vaes().get(name)
