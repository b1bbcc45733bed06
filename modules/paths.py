"""Folders Serena reads and writes, derived from the flags once (never from request fields)."""

from __future__ import annotations

import os
from dataclasses import dataclass

script_path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Paths:
    data_dir: str
    config_file: str

    @property
    def models_dir(self) -> str:
        return os.path.join(self.data_dir, "models")

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
    return Paths(data_dir=data_dir, config_file=os.path.abspath(config))
