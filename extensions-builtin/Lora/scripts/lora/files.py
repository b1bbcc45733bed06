"""LoRA files on disk: finding them, their metadata, alias and hash, and reading their tensors.

Files live in every ``models/Lora`` folder (``model_dirs("Lora")``), subfolders included. ``.safetensors`` files
are always listed; pickled ``.pt``/``.ckpt`` files only with ``--allow-pickle-checkpoints`` (reading them can run
code), and then through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from dataclasses import dataclass, field

from modules.extensions_api import allow_pickle, model_dirs

log = logging.getLogger("serena.lora")

SAFE_EXTENSIONS = (".safetensors",)
PICKLE_EXTENSIONS = (".pt", ".ckpt")
# A1111's order for the metadata shown first; everything else after, as stored.
METADATA_ORDER = {"ss_sd_model_name": 1, "ss_resolution": 2, "ss_clip_skip": 3, "ss_num_train_images": 10,
                  "ss_tag_frequency": 20}

MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit
_hashes: dict[tuple, str] = {}  # (path, mtime, size) -> sha256 hex


def read_metadata(path: str) -> dict:
    """A safetensors file's ``__metadata__``, JSON-looking values parsed (A1111's ``read_metadata_from_safetensors``),
    in A1111's display order."""
    with open(path, "rb") as f:
        header_size = struct.unpack("<Q", f.read(8))[0]
        if header_size > min(os.path.getsize(path) - 8, MAX_HEADER):
            raise ValueError(f"a header of {header_size} bytes does not fit the file")
        header = json.loads(f.read(header_size).decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("the header is no JSON object")
    metadata = {}
    for key, value in (header.get("__metadata__") or {}).items():
        if isinstance(value, str) and value[:1] == "{":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        metadata[key] = value
    return dict(sorted(metadata.items(), key=lambda kv: METADATA_ORDER.get(kv[0], 999)))


def _sha256(path: str, skip_header: bool) -> str:
    """sha256 of the file, or for safetensors of the bytes after the header (the AddNet hash A1111 records)."""
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size, skip_header)
    if key not in _hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            if skip_header:
                f.seek(8 + struct.unpack("<Q", f.read(8))[0])
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


@dataclass
class NetworkOnDisk:
    """One LoRA file: ``name`` is its file name without extension (what a tag names), ``alias`` its
    ``ss_output_name`` (a tag may use either)."""

    name: str
    path: str
    metadata: dict = field(default_factory=dict)

    @property
    def is_safetensors(self) -> bool:
        return self.path.lower().endswith(SAFE_EXTENSIONS)

    @property
    def alias(self) -> str:
        return str(self.metadata.get("ss_output_name") or self.name)

    @property
    def signature(self) -> tuple:
        st = os.stat(self.path)
        return self.path, st.st_mtime_ns, st.st_size

    def shorthash(self) -> str:
        """The 12 hex digits of ``Lora hashes``: ``sshs_model_hash`` from the metadata, else the AddNet hash."""
        full = self.metadata.get("sshs_model_hash") or _sha256(self.path, self.is_safetensors)
        return str(full)[:12]

    def item(self) -> dict:
        """A1111's ``GET /sdapi/v1/loras`` entry."""
        return {"name": self.name, "alias": self.alias, "path": self.path, "metadata": self.metadata}

    def read_tensors(self) -> dict:
        """Every tensor of the file, on the CPU."""
        if self.is_safetensors:
            from safetensors.torch import load_file
            return load_file(self.path, device="cpu")
        if not allow_pickle():
            raise ValueError(f"{self.path} is a pickled file; start with --allow-pickle-checkpoints to read it")
        import torch
        loaded = torch.load(self.path, map_location="cpu", weights_only=True)
        return loaded.get("state_dict", loaded) if isinstance(loaded, dict) else {}


class Library:
    """The LoRA files found on disk, by name and by alias (a name wins over another file's alias)."""

    def __init__(self):
        self.networks: dict[str, NetworkOnDisk] = {}
        self.by_alias: dict[str, NetworkOnDisk] = {}
        self.scanned = False

    def refresh(self) -> None:
        extensions = SAFE_EXTENSIONS + (PICKLE_EXTENSIONS if allow_pickle() else ())
        networks: dict[str, NetworkOnDisk] = {}
        for folder in model_dirs("Lora"):
            for root, dirs, names in os.walk(folder, followlinks=True):
                dirs.sort()
                for filename in sorted(names):
                    path = os.path.join(root, filename)
                    stem, ext = os.path.splitext(filename)
                    if ext.lower() not in extensions:
                        if ext.lower() in PICKLE_EXTENSIONS:
                            log.info("Lora: %s is pickled; skipped without --allow-pickle-checkpoints", path)
                        continue
                    if stem in networks:
                        log.warning("Lora: %s has the name of %s; the first is kept", path, networks[stem].path)
                        continue
                    try:
                        metadata = read_metadata(path) if ext.lower() in SAFE_EXTENSIONS else {}
                    except (OSError, ValueError, struct.error) as e:
                        log.warning("Lora: cannot read %s: %s", path, e)
                        continue
                    networks[stem] = NetworkOnDisk(stem, path, metadata)
        by_alias = {}
        for network in networks.values():
            if network.alias not in networks and network.alias not in by_alias:
                by_alias[network.alias] = network
        self.networks, self.by_alias, self.scanned = networks, by_alias, True

    def find(self, name: str) -> NetworkOnDisk | None:
        """The file a tag names (file name, else alias); scans once more before giving up on a new file."""
        if not self.scanned:
            self.refresh()
        found = self.networks.get(name) or self.by_alias.get(name)
        if found is None:
            self.refresh()
            found = self.networks.get(name) or self.by_alias.get(name)
        return found

    def names(self) -> list[str]:
        if not self.scanned:
            self.refresh()
        return list(self.networks)
