"""Folders Serena reads and writes, derived from the flags once (never from request fields)."""

from __future__ import annotations

import os
from dataclasses import dataclass

script_path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Paths:
    data_dir: str
    config_file: str
    # Whether models are also looked for in Serena's own models/ folder (the embedded checkpoint) after the data
    # folder's; a data folder of its own (a test's) can leave them out.
    shipped_models: bool = True
    # ``--embeddings-dir``; ``None``: ``<data-dir>/embeddings`` (A1111).
    embeddings: str | None = None

    @property
    def models_dir(self) -> str:
        return os.path.join(self.data_dir, "models")

    def model_dirs(self, kind: str) -> list[str]:
        """The folders of ``kind`` models (``"Stable-diffusion"``, ``"VAE"``), first match first."""
        dirs = [os.path.join(self.models_dir, kind)]
        if self.shipped_models:
            dirs.append(os.path.join(script_path, "models", kind))
        return list(dict.fromkeys(os.path.abspath(d) for d in dirs))

    @property
    def embeddings_dir(self) -> str:
        """Textual inversion embeddings, subfolders included (``modules.textual_inversion``)."""
        return self.embeddings or os.path.join(self.data_dir, "embeddings")

    @property
    def extensions_dir(self) -> str:
        return os.path.join(self.data_dir, "extensions")

    @property
    def extensions_builtin_dir(self) -> str:
        return os.path.join(script_path, "extensions-builtin")

    @property
    def outputs_dir(self) -> str:
        return os.path.join(self.data_dir, "outputs")

    def resolve(self, path: str) -> str:
        """A relative path from settings is relative to the data folder."""
        return path if os.path.isabs(path) else os.path.join(self.data_dir, path)


def from_cmd_opts(cmd_opts) -> Paths:
    data_dir = os.path.abspath(cmd_opts.data_dir or script_path)
    config = cmd_opts.ui_settings_file or os.path.join(data_dir, "config.json")
    embeddings = os.path.abspath(cmd_opts.embeddings_dir) if cmd_opts.embeddings_dir else None
    return Paths(data_dir=data_dir, config_file=os.path.abspath(config), embeddings=embeddings)
