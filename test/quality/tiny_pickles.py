"""Pickled copies of the tiny ``.safetensors`` checkpoints, for tests of ``--allow-pickle-checkpoints``."""

from __future__ import annotations

import torch

from modules import sd_models_loader as loader


def write_pickle(source: str, target, *, nested: bool = True) -> dict:
    """Write ``source``'s tensors to ``target`` as a pickled checkpoint (A1111's ``{"state_dict": ...}`` when
    ``nested``, the bare state dict otherwise); returns the component configs of its ``serena_config`` metadata,
    which a pickle cannot carry."""
    tensors, metadata = loader.read_state_dict(source)
    torch.save({"state_dict": tensors} if nested else tensors, str(target))
    return {k: v for k, v in loader.stored_configs(metadata, source).items() if k != "sampling"}


def default_to(monkeypatch, module, configs: dict) -> None:
    """Make ``configs`` (``write_pickle``'s) part of ``module.default_configs``, which a file without metadata is
    read with: the tiny model's configs stand in for the shipped full-size ones."""
    shipped = module.default_configs
    monkeypatch.setattr(module, "default_configs", lambda *args: {**shipped(*args), **configs})
