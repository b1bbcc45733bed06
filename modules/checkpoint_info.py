"""``CheckpointInfo``: one checkpoint on disk and the A1111 names it answers to.

A leaf: the loader and the checkpoint list both need it, and neither may import the other for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def config_beside(path: str) -> str:
    """The ``.yaml`` model config A1111 reads beside a checkpoint file (``model.safetensors`` -> ``model.yaml``):
    SD2.x's prediction type comes from it, so a check of the file is only as fresh as this file too."""
    return os.path.splitext(path)[0] + ".yaml"


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint on disk: a single file, or a diffusers-format folder (``model_index.json``)."""

    filename: str
    name: str          # path relative to its models folder, as A1111 shows it
    sha256: str

    @property
    def shorthash(self) -> str:
        return self.sha256[:10]

    @property
    def model_name(self) -> str:
        return os.path.splitext(self.name.replace("/", "_").replace("\\", "_"))[0]

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]"

    @property
    def is_folder(self) -> bool:
        return os.path.isdir(self.filename)

    @property
    def ids(self) -> tuple:
        """Every spelling that names this checkpoint exactly (A1111's aliases)."""
        stem = os.path.splitext(self.name)[0]
        return (self.title, self.name, stem, self.model_name, os.path.basename(self.filename), self.shorthash,
                self.sha256, self.sha256[:8], f"{stem} [{self.shorthash}]", f"{self.model_name} [{self.shorthash}]")
