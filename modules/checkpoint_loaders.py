"""Which loader reads a checkpoint: SDXL's (``modules.sd_models_xl``), SD2.x's (``modules.sd_models_sd2``) or
SD1.x's (``modules.sd_models_loader``, which also names every file it cannot read or run), by the checkpoint's family
(``modules.model_families``).

A ``.safetensors`` file is classified from its header and a diffusers folder from its ``model_index.json``, before the
loader reads anything. A pickled file (``.ckpt``, ``.pt``...; read only with ``--allow-pickle-checkpoints``) has no
header: its state dict is unpickled once (``torch.load(weights_only=True)``, memory-mapped for a check), classified
from its keys and shapes, and handed to the chosen loader, so telling its family costs no second read.
"""

from __future__ import annotations

import os

import torch

from modules import model_families, sd_models_loader, sd_models_sd2, sd_models_xl
from modules.checkpoint_info import CheckpointInfo
from modules.model_facts import ModelFacts

_FAMILY_LOADERS = (sd_models_xl, sd_models_sd2)


def loader_for(path: str, state: tuple | None = None):
    """The loading module for the checkpoint at ``path``; ``state`` is its ``(state dict, metadata)`` when it was
    read already (a pickle's: ``pickled_state``), else the family comes from the header or the folder's index."""
    if state is not None:
        family = model_families.detect({k: tuple(v.shape) for k, v in state[0].items()})
    else:
        try:
            family = model_families.detect_path(path)
        except ValueError:
            family = None  # an unreadable header: the SD1.x loader names what is wrong with it
    for loader in _FAMILY_LOADERS:
        if family is not None and family.name in loader.FAMILIES:
            return loader
    return sd_models_loader


def pickled_state(path: str, *, allow_pickle: bool, meta: bool) -> tuple | None:
    """``sd_models_loader.read_state_dict`` of a pickled file (``meta``: shapes only, memory-mapped where its format
    allows); ``None`` for a ``.safetensors`` file or a folder, whose family needs no read.

    Raises:
        ValueError: a pickle without ``allow_pickle``, or one that cannot be read; the message names the file.
    """
    if os.path.isdir(path) or not path.lower().endswith(sd_models_loader.PICKLE_EXTENSIONS):
        return None
    return sd_models_loader.read_state_dict(path, allow_pickle=allow_pickle, meta=meta)


def load_checkpoint(info: CheckpointInfo, *, device: torch.device | str, dtype: torch.dtype,
                    allow_pickle: bool):
    """``info`` loaded by its family's loader (see ``sd_models_loader.load_checkpoint``); ``ValueError`` naming the
    file when it cannot load."""
    state = pickled_state(info.filename, allow_pickle=allow_pickle, meta=False)
    return loader_for(info.filename, state).load_checkpoint(info, device=device, dtype=dtype,
                                                            allow_pickle=allow_pickle, state=state)


def inspect_checkpoint(path: str, *, allow_pickle: bool) -> ModelFacts:
    """The checkpoint at ``path`` checked by its family's loader without reading a weight (see
    ``sd_models_loader.inspect_checkpoint``); ``ValueError`` naming the file and what is wrong."""
    state = pickled_state(path, allow_pickle=allow_pickle, meta=True)
    return loader_for(path, state).inspect_checkpoint(path, allow_pickle=allow_pickle, state=state)
