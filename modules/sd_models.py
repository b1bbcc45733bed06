"""Checkpoints: discovery, A1111 titles and hashes, name resolution, and the loaded-models cache.

Discovery and resolution import no torch, so options can be validated cheaply; loading happens in
``modules.sd_models_loader`` and is reached only through ``LoadedModels``.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Callable

from modules import paths, shared

CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt")


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


def model_dirs() -> list[str]:
    """``<data-dir>/models/Stable-diffusion`` first, then the folder shipped with Serena (the embedded model)."""
    dirs = [os.path.join(shared.data_paths.models_dir, "Stable-diffusion"),
            os.path.join(paths.script_path, "models", "Stable-diffusion")]
    return list(dict.fromkeys(os.path.abspath(d) for d in dirs))


class HashCache:
    """sha256 of files, cached in ``<data-dir>/cache.json`` keyed by path, mtime and size."""

    def __init__(self, filename: str):
        self.filename = filename
        self._lock = threading.Lock()
        self._data: dict | None = None

    def _load(self) -> dict:
        if self._data is None:
            try:
                with open(self.filename, encoding="utf8") as f:
                    self._data = json.load(f).get("hashes-sha256", {})
            except (OSError, ValueError, AttributeError):
                self._data = {}
        return self._data

    def sha256(self, path: str) -> str:
        st = os.stat(path)
        key = os.path.abspath(path)
        with self._lock:
            entry = self._load().get(key)
            if entry and entry.get("mtime") == st.st_mtime and entry.get("size") == st.st_size:
                return entry["sha256"]
        digest = _sha256_of(path)
        with self._lock:
            self._load()[key] = {"mtime": st.st_mtime, "size": st.st_size, "sha256": digest}
            self._write()
        return digest

    def _write(self):
        directory = os.path.dirname(os.path.abspath(self.filename))
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".cache-", dir=directory)
            with os.fdopen(fd, "w", encoding="utf8") as f:
                json.dump({"hashes-sha256": self._data}, f, indent=1)
            os.replace(tmp, self.filename)
        except OSError:
            pass  # a read-only data folder only costs re-hashing next time


def _sha256_of(path: str) -> str:
    h = hashlib.sha256()
    if os.path.isdir(path):
        # A diffusers folder: hash its weight files in a stable order.
        for root, _, files in sorted(os.walk(path)):
            for name in sorted(files):
                if name.endswith((".safetensors", ".json", ".txt")):
                    h.update(os.path.relpath(os.path.join(root, name), path).encode())
                    with open(os.path.join(root, name), "rb") as f:
                        for block in iter(lambda: f.read(1 << 20), b""):
                            h.update(block)
        return h.hexdigest()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_hash_cache: HashCache | None = None
_checkpoints: list[CheckpointInfo] | None = None
_list_lock = threading.Lock()
extra_checkpoints: list[str] = []   # files named on the command line (--ckpt)


def hash_cache() -> HashCache:
    global _hash_cache
    wanted = os.path.join(shared.data_paths.data_dir, "cache.json")
    if _hash_cache is None or _hash_cache.filename != wanted:
        _hash_cache = HashCache(wanted)
    return _hash_cache


def _discover() -> list[CheckpointInfo]:
    found: dict[str, CheckpointInfo] = {}
    cache = hash_cache()
    for base in model_dirs():
        if not os.path.isdir(base):
            continue
        for root, dirs, files in os.walk(base):
            dirs.sort()
            for d in list(dirs):
                full = os.path.join(root, d)
                if os.path.isfile(os.path.join(full, "model_index.json")):
                    dirs.remove(d)
                    rel = os.path.relpath(full, base).replace(os.sep, "/")
                    found.setdefault(rel, CheckpointInfo(full, rel, cache.sha256(full)))
            for name in sorted(files):
                if name.endswith(CHECKPOINT_EXTENSIONS):
                    full = os.path.join(root, name)
                    rel = os.path.relpath(full, base).replace(os.sep, "/")
                    found.setdefault(rel, CheckpointInfo(full, rel, cache.sha256(full)))
    for filename in extra_checkpoints:
        if os.path.exists(filename):
            filename = os.path.abspath(filename)
            name = os.path.basename(filename.rstrip("/"))
            if name in found and found[name].filename != filename:
                # The user named this very file: list it under its path rather than drop it for a namesake.
                name = filename
            found.setdefault(name, CheckpointInfo(filename, name, cache.sha256(filename)))
    return sorted(found.values(), key=lambda c: c.name.lower())


def checkpoint_for_file(filename: str) -> CheckpointInfo:
    """The listed checkpoint that is the file (or folder) ``filename``; ``ValueError`` if none is."""
    wanted = os.path.abspath(filename)
    for info in list_checkpoints():
        if info.filename == wanted:
            return info
    raise ValueError(f"{filename}: not among the checkpoints")


def list_checkpoints(refresh: bool = False) -> list[CheckpointInfo]:
    global _checkpoints
    with _list_lock:
        if _checkpoints is None or refresh:
            _checkpoints = _discover()
        return list(_checkpoints)


def refresh_checkpoints() -> list[CheckpointInfo]:
    return list_checkpoints(refresh=True)


def resolve_checkpoint(name: Any) -> CheckpointInfo:
    """The checkpoint that ``name`` designates: an exact id first, then one unambiguous partial match.

    Raises ``ValueError`` naming the available titles; never falls back to another model.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"expected a checkpoint name, got {name!r}")
    checkpoints = list_checkpoints()
    # A file name or hash can be an exact id of several checkpoints (same name in two subfolders, copies).
    exact = [c for c in checkpoints if name in c.ids]
    if len(exact) == 1:
        return exact[0]
    lowered = name.lower()
    matches = exact or [c for c in checkpoints if any(lowered == i.lower() for i in c.ids)]
    if not matches:
        matches = [c for c in checkpoints
                   if lowered in c.title.lower() or (len(name) >= 8 and c.sha256.startswith(lowered))]
    if len(matches) == 1:
        return matches[0]
    titles = ", ".join(c.title for c in checkpoints) or "none found"
    if matches:
        raise ValueError(f"checkpoint {name!r} is ambiguous: it matches {', '.join(c.title for c in matches)}")
    raise ValueError(f"no checkpoint named {name!r}; available: {titles}")


def default_checkpoint() -> CheckpointInfo | None:
    """What a generation uses when ``sd_model_checkpoint`` is unset: the embedded default, else the first found."""
    checkpoints = list_checkpoints()
    for c in checkpoints:
        if os.path.basename(c.filename) == DEFAULT_CHECKPOINT_FILE:
            return c
    return checkpoints[0] if checkpoints else None


def effective_checkpoint() -> CheckpointInfo:
    """The checkpoint named by the effective ``sd_model_checkpoint`` of the current context."""
    name = shared.opts.sd_model_checkpoint
    if name:
        return resolve_checkpoint(name)
    info = default_checkpoint()
    if info is None:
        raise ValueError(f"no checkpoint found; put a .safetensors file in {model_dirs()[0]}")
    return info


DEFAULT_CHECKPOINT_FILE = "serena-shapes-v1.safetensors"


class LoadedModels:
    """An LRU cache of loaded checkpoints, sized by ``sd_checkpoints_limit``.

    Switching to a cached checkpoint reads nothing from disk; ``loads`` counts real loads, so tests and
    benchmarks can prove it. Touched only under the generation queue lock.
    """

    def __init__(self, load_fn: Callable[[CheckpointInfo], Any]):
        self._load_fn = load_fn
        self._cache: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0
        self.current: CheckpointInfo | None = None

    def get(self, info: CheckpointInfo) -> Any:
        with self._lock:
            if info.filename in self._cache:
                self._cache.move_to_end(info.filename)
                model = self._cache[info.filename]
            else:
                model = self._load_fn(info)
                self.loads += 1
                self._cache[info.filename] = model
                limit = max(1, int(shared.opts.sd_checkpoints_limit))
                while len(self._cache) > limit:
                    self._cache.popitem(last=False)
            self.current = info
            return model

    def cached(self) -> list[str]:
        with self._lock:
            return list(self._cache)

    def unload_all(self):
        with self._lock:
            self._cache.clear()
            self.current = None


def _load_from_disk(info: CheckpointInfo):
    from modules import devices, plugins, sd_models_loader
    model = sd_models_loader.load_checkpoint(info, device=devices.device(), dtype=devices.dtype(),
                                             allow_pickle=shared.cmd_opts.allow_pickle_checkpoints)
    plugins.host.call("on_model_loaded", sd_model=model)
    return model


model_manager = LoadedModels(_load_from_disk)
_vae_cache: dict[str, Any] = {}


def wanted_vae(info: CheckpointInfo) -> str | None:
    """The VAE file name the effective ``sd_vae`` asks for with checkpoint ``info`` (``None``: its own VAE).

    ``Automatic`` picks ``models/VAE/<checkpoint stem>.vae.safetensors`` (or one next to the checkpoint) when
    present, as A1111 does; ``None`` always means the checkpoint's own.
    """
    from modules import sd_vae
    choice = shared.opts.sd_vae
    if choice == "None":
        return None
    if choice == "Automatic":
        stem = os.path.splitext(os.path.basename(info.filename))[0]
        candidate = f"{stem}.vae.safetensors"
        return candidate if candidate in sd_vae.list_vaes() else None
    return choice


def current_model():
    """The model that matches the effective checkpoint and VAE of the current context, loading what is missing.

    Called by the core's enter hook and by every generation; cheap when nothing changes, and a model already in
    the cache is switched to without reading the disk.
    """
    from modules import sd_vae
    info = effective_checkpoint()
    model = model_manager.get(info)
    vae_name = wanted_vae(info)
    if getattr(model, "vae_name", None) != vae_name:
        if vae_name is None:
            model.apply_vae(None, None)
        else:
            if vae_name not in _vae_cache:
                from modules import devices, sd_models_loader
                _vae_cache.clear()  # one external VAE in memory at a time
                _vae_cache[vae_name] = sd_models_loader.load_vae(sd_vae.vae_path(vae_name), device=devices.device(),
                                                                 dtype=devices.dtype())
            model.apply_vae(_vae_cache[vae_name], vae_name)
    return model
