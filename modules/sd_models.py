"""Checkpoints: discovery, A1111 titles and hashes, name resolution, and the loaded-models cache.

Discovery and resolution import no torch; loading happens in the loaders ``modules.checkpoint_loaders`` chooses and
is reached only through ``LoadedModels``, which also inspects a file (its header only, cached by path, size and mtime,
of the ``.yaml`` beside it too) before it is selected, overridden or loaded, so a file that cannot load is refused by
name instead of failing a generation.
Hashes and successful inspections are kept across starts in ``<data-dir>/cache.json`` (``modules.cache_file``).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from typing import Any, Callable

from modules import model_families, shared
from modules.cache_file import CacheFile
from modules.checkpoint_info import CheckpointInfo, config_beside
from modules.model_facts import ModelFacts
from modules.option_info import OptionError

log = logging.getLogger("serena.sd_models")

CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt")


def model_dirs() -> list[str]:
    """``<data-dir>/models/Stable-diffusion`` first, then the folder shipped with Serena (the embedded model)."""
    return shared.data_paths.model_dirs("Stable-diffusion")


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


_cache_file: CacheFile | None = None
_checkpoints: tuple[tuple, list[CheckpointInfo]] | None = None  # (where they were looked for, what was found)
_list_lock = threading.Lock()
extra_checkpoints: list[str] = []   # files named on the command line (--ckpt)


def cache_file() -> CacheFile:
    """``<data-dir>/cache.json`` of the current data folder: file hashes and checkpoint inspections."""
    global _cache_file
    wanted = os.path.join(shared.data_paths.data_dir, "cache.json")
    if _cache_file is None or _cache_file.filename != wanted:
        _cache_file = CacheFile(wanted)
    return _cache_file


def file_sha256(path: str) -> str:
    """sha256 of a file (or diffusers folder), kept in ``cache.json`` while its mtime and size are unchanged."""
    st = os.stat(path)
    key = os.path.abspath(path)
    entry = cache_file().get("hashes-sha256", key)
    if entry and entry.get("mtime") == st.st_mtime and entry.get("size") == st.st_size:
        return entry["sha256"]
    digest = _sha256_of(path)
    cache_file().put("hashes-sha256", key, {"mtime": st.st_mtime, "size": st.st_size, "sha256": digest})
    return digest


def _discover(dirs, extra) -> list[CheckpointInfo]:
    found: dict[str, CheckpointInfo] = {}
    for base in dirs:
        if not os.path.isdir(base):
            continue
        for root, dirs, files in os.walk(base):
            dirs.sort()
            for d in list(dirs):
                full = os.path.join(root, d)
                if os.path.isfile(os.path.join(full, "model_index.json")):
                    dirs.remove(d)
                    rel = os.path.relpath(full, base).replace(os.sep, "/")
                    found.setdefault(rel, CheckpointInfo(full, rel, file_sha256(full)))
            for name in sorted(files):
                if name.endswith(CHECKPOINT_EXTENSIONS):
                    full = os.path.join(root, name)
                    rel = os.path.relpath(full, base).replace(os.sep, "/")
                    found.setdefault(rel, CheckpointInfo(full, rel, file_sha256(full)))
    for filename in extra:
        if os.path.exists(filename):
            filename = os.path.abspath(filename)
            name = os.path.basename(filename.rstrip("/"))
            if name in found and found[name].filename != filename:
                # The user named this very file: list it under its path rather than drop it for a namesake.
                name = filename
            found.setdefault(name, CheckpointInfo(filename, name, file_sha256(filename)))
    return sorted(found.values(), key=lambda c: c.name.lower())


def checkpoint_for_file(filename: str) -> CheckpointInfo:
    """The listed checkpoint that is the file (or folder) ``filename``; ``ValueError`` if none is."""
    wanted = os.path.abspath(filename)
    for info in list_checkpoints():
        if info.filename == wanted:
            return info
    raise ValueError(f"{filename}: not among the checkpoints")


def list_checkpoints(refresh: bool = False) -> list[CheckpointInfo]:
    """The checkpoints found in ``model_dirs()`` and ``extra_checkpoints``: listed once, again when those change or
    on ``refresh`` (a file added to a folder is seen after a refresh, as in A1111)."""
    global _checkpoints
    where = (tuple(model_dirs()), tuple(extra_checkpoints))
    with _list_lock:
        if refresh or _checkpoints is None or _checkpoints[0] != where:
            _checkpoints = (where, _discover(*where))
        return list(_checkpoints[1])


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
    """What a generation uses when ``sd_model_checkpoint`` is unset: the embedded default, else the first found.

    A checkpoint whose file cannot load is passed over (with a logged warning) while another one can.
    """
    checkpoints = list_checkpoints()
    candidates = sorted(checkpoints, key=lambda c: os.path.basename(c.filename) != DEFAULT_CHECKPOINT_FILE)
    for c in candidates:
        try:
            model_manager.facts(c)
            return c
        except ValueError as e:
            log.warning("checkpoint %s cannot be the default: %s", c.title, e)
    return candidates[0] if candidates else None


_listed_families: dict[str, tuple] = {}  # filename -> (signature, family)


def listed_family(info: CheckpointInfo) -> model_families.Family | None:
    """The family of a listed checkpoint from its header (or folder index) alone: no torch, no weight read, kept
    while the file is unchanged. ``None`` when the header cannot tell (a pickled file, an unreadable header):
    choosing it is what names the problem (``model_manager.facts``)."""
    try:
        signature = _signature(info.filename)
        cached = _listed_families.get(info.filename)
        if cached is None or cached[0] != signature:
            cached = (signature, model_families.detect_path(info.filename))
            _listed_families[info.filename] = cached
    except (OSError, ValueError):
        return None
    return cached[1]


def checkpoint_facts(name: str | None):
    """``(CheckpointInfo, ModelFacts)`` of the checkpoint ``name`` (``None``: the default), or ``None`` when it
    is unknown, cannot load, or the loaded-models cache cannot tell (that is reported for the checkpoint itself)."""
    try:
        info = resolve_checkpoint(name) if name else default_checkpoint()
        facts = model_manager.facts(info) if info is not None else None
    except ValueError:
        return None
    return (info, facts) if facts is not None else None


def effective_checkpoint() -> CheckpointInfo:
    """The checkpoint named by the effective ``sd_model_checkpoint`` of the current context."""
    name = shared.opts.sd_model_checkpoint
    if name:
        return resolve_checkpoint(name)
    info = default_checkpoint()
    if info is None:
        raise ValueError(f"no checkpoint found; put a .safetensors file in {model_dirs()[0]}")
    return info


#: A1111's defaults, for a checkpoint that declares neither: 512 is exactly SD 1.x's native size.
SD_DEFAULT_SIZE = 512
SD_DEFAULT_CFG_SCALE = 7.0


@dataclass(frozen=True)
class CheckpointDefaults:
    """What a generation that does not say otherwise uses with a checkpoint: the image side it was made for and
    the CFG scale it recommends."""

    size: int = SD_DEFAULT_SIZE
    cfg_scale: float = SD_DEFAULT_CFG_SCALE


def checkpoint_defaults(override_settings: dict | None = None) -> CheckpointDefaults:
    """The defaults of the checkpoint a generation with ``override_settings`` runs on: its
    ``sd_model_checkpoint`` first (as the generation loads it), else the effective setting, else the default one.

    Read from the cached inspection (``model_manager.facts``), so no weight and no file is read twice. The one
    place the API (a request without ``width``/``height``), the UI (the tabs' starting values) and the CLI
    (``--txt2img`` without ``--width``/``--cfg-scale``) get them from. A checkpoint that is unknown or cannot load
    gets A1111's defaults: the generation refuses it by name before anything runs at that size.
    """
    name = (override_settings or {}).get("sd_model_checkpoint")
    try:
        facts = model_manager.facts(resolve_checkpoint(name) if name else effective_checkpoint())
    except ValueError as e:
        log.info("checkpoint defaults unknown (%s)", e)
        facts = None
    if facts is None:
        return CheckpointDefaults()
    return CheckpointDefaults(size=facts.native_size or SD_DEFAULT_SIZE,
                              cfg_scale=facts.cfg_scale if facts.cfg_scale is not None else SD_DEFAULT_CFG_SCALE)


DEFAULT_CHECKPOINT_FILE = "serena-shapes-v1.safetensors"


class CheckpointLoadError(OptionError):
    """A checkpoint or VAE that cannot be loaded; an ``OptionError`` of the key that chose it (HTTP 422)."""

    def __init__(self, key: str, title: str, error: Exception):
        super().__init__(key, f"{title} cannot be loaded: {error}")
        self.title = title


def _signature(path: str) -> tuple:
    """What changes when a checkpoint's facts may have: size and mtime of the file and of the ``.yaml`` config beside
    it (``None`` while there is none; SD2.x's prediction type comes from it), or of every file in a folder."""
    if not os.path.isdir(path):
        st = os.stat(path)
        try:
            config = os.stat(config_beside(path))
        except OSError:
            return st.st_size, st.st_mtime_ns, None
        return st.st_size, st.st_mtime_ns, (config.st_size, config.st_mtime_ns)
    entries = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            st = os.stat(os.path.join(root, name))
            entries.append((os.path.relpath(os.path.join(root, name), path), st.st_size, st.st_mtime_ns))
    return tuple(entries)


class StoredFacts:
    """Successful inspections kept in ``cache.json`` (section ``serena-model-facts``), so that a start with
    unchanged files reads the starting checkpoint's ``ModelFacts`` without importing the model stack.

    An entry is keyed by kind and absolute path and holds only while the file's signature (size and mtime of it
    and of the ``.yaml`` beside it, or of every file in a folder) and the digest of what decides the facts
    (``inspection_digest``) are the same.
    """

    SECTION = "serena-model-facts"

    def __init__(self, digest: Callable[[], str]):
        self._digest = digest

    def get(self, kind: str, path: str, signature: tuple) -> ModelFacts | None:
        entry = cache_file().get(self.SECTION, f"{kind}:{os.path.abspath(path)}")
        if not isinstance(entry, dict) or entry.get("signature") != _as_json(signature) \
                or entry.get("digest") != self._digest():
            return None
        try:
            return ModelFacts(**entry["facts"])
        except (KeyError, TypeError):
            return None  # written by another version: inspect again

    def put(self, kind: str, path: str, signature: tuple, facts):
        if isinstance(facts, ModelFacts):
            cache_file().put(self.SECTION, f"{kind}:{os.path.abspath(path)}",
                             {"signature": _as_json(signature), "digest": self._digest(),
                              "facts": asdict(facts)})


def _as_json(value):
    """``value`` as it reads back from JSON (tuples become lists), so a stored signature compares equal."""
    return json.loads(json.dumps(value))


class LoadedModels:
    """An LRU cache of loaded checkpoints, sized by ``sd_checkpoints_limit``.

    Switching to a cached checkpoint reads nothing from disk; ``loads`` counts real loads, so tests and
    benchmarks can prove it. Touched only under the generation queue lock (``facts`` from any thread).

    ``inspect_fn(kind, path)`` (``kind`` is ``"checkpoint"`` or ``"vae"``) checks a file without loading it and
    returns its ``ModelFacts``; without one (a cache of stand-in models) nothing is inspected. ``stored`` (a
    ``StoredFacts``) keeps successful inspections across starts: ``_inspect`` asks memory, then it, then inspects.
    """

    def __init__(self, load_fn: Callable[[CheckpointInfo], Any],
                 inspect_fn: Callable[[str, str], Any] | None = None, stored: StoredFacts | None = None):
        self._load_fn = load_fn
        self._inspect_fn = inspect_fn
        self._stored = stored
        self._cache: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._lock = threading.RLock()
        self._facts: dict[tuple, tuple] = {}   # (kind, path) -> (signature, facts, error)
        self._facts_lock = threading.Lock()    # not _lock: a validation must not wait for a running load
        self.loads = 0
        self.current: CheckpointInfo | None = None

    def facts(self, info: CheckpointInfo):
        """The ``ModelFacts`` of a checkpoint, from its header; ``ValueError`` naming the file and what is wrong.

        ``None`` when this cache has no ``inspect_fn``. The result is kept until ``_signature`` changes (the file's
        size or mtime, or the ``.yaml`` beside it).
        """
        return self._inspect("checkpoint", info.filename)

    def vae_facts(self, path: str):
        """As ``facts``, for a VAE file."""
        return self._inspect("vae", path)

    def _inspect(self, kind: str, path: str):
        if self._inspect_fn is None:
            return None
        try:
            signature = _signature(path)
        except OSError as e:
            raise ValueError(f"{os.path.basename(path)}: {e.strerror or e}") from None
        with self._facts_lock:
            cached = self._facts.get((kind, path))
        if cached is None or cached[0] != signature:
            facts = self._stored.get(kind, path, signature) if self._stored is not None else None
            if facts is not None:
                cached = (signature, facts, None)
            else:
                try:
                    cached = (signature, self._inspect_fn(kind, path), None)
                except ValueError as e:
                    cached = (signature, None, str(e))  # a failure is not stored: the next start checks again
                else:
                    if self._stored is not None:
                        self._stored.put(kind, path, signature, cached[1])
            with self._facts_lock:
                self._facts[(kind, path)] = cached
        if cached[2] is not None:
            raise ValueError(cached[2])
        return cached[1]

    def get(self, info: CheckpointInfo) -> Any:
        """The loaded model of ``info``; ``CheckpointLoadError`` if it cannot load (the cache and ``current``
        are then as they were: the model in use stays loaded)."""
        with self._lock:
            if info.filename in self._cache:
                self._cache.move_to_end(info.filename)
                model = self._cache[info.filename]
            else:
                try:
                    self.facts(info)  # a header that cannot load costs no read of the weights
                    model = self._load_fn(info)
                except (ValueError, OSError) as e:
                    raise CheckpointLoadError("sd_model_checkpoint", info.title, e) from e
                from modules import plugins
                plugins.host.call("on_model_loaded", sd_model=model)  # a real load, not a switch to a cached one
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


def placement():
    """Where and how the networks run, from the flags on this machine (``devices.placement``)."""
    from modules import devices
    return devices.placement_for(shared.cmd_opts)


def load_from_disk(info: CheckpointInfo):
    """Load ``info``'s weights as the flags ask (device, precision, offload, attention, pickles) and the
    ``serena_torch_compile`` setting, by its family's loader: the process's model cache's loader."""
    from modules import checkpoint_loaders, model_placement
    where = placement()
    model = checkpoint_loaders.load_checkpoint(info, device=where.load_device,
                                               dtype=model_placement.torch_dtype(where.dtype),
                                               allow_pickle=shared.cmd_opts.allow_pickle_checkpoints)
    return model_placement.apply(model, where, compile_unet=bool(shared.opts.serena_torch_compile))


def inspect_on_disk(kind: str, path: str):
    """Check a checkpoint's or VAE's header against the model it declares: the process's model cache's inspector."""
    from modules import checkpoint_loaders, sd_models_loader
    if kind == "vae":
        return sd_models_loader.inspect_vae(path)
    return checkpoint_loaders.inspect_checkpoint(path, allow_pickle=shared.cmd_opts.allow_pickle_checkpoints)


@functools.lru_cache(maxsize=None)
def inspection_digest(allow_pickle: bool) -> str:
    """A digest of what decides an inspection's outcome besides the file: the source of the loaders (and of the choice
    among them), of the family detection and of the UNet input channels it accepts, the SD1.x, SD2.x and SDXL configs
    (read, not imported), the versions of the packages it runs, and whether pickles are allowed."""
    from importlib import metadata
    h = hashlib.sha256()
    loader_dir = os.path.dirname(os.path.abspath(__file__))
    files = [os.path.join(loader_dir, name) for name in ("sd_models_loader.py", "sd_models_xl.py", "sd_models_sd2.py",
                                                         "checkpoint_loaders.py", "model_families.py",
                                                         "inpaint_conditioning.py")]
    for configs in ("v1", "v2", "xl", "xl_refiner"):
        for root, dirs, names in os.walk(os.path.join(loader_dir, "sd_configs", configs)):
            dirs.sort()
            files += [os.path.join(root, name) for name in sorted(names)]
    for name in files:
        h.update(os.path.relpath(name, loader_dir).encode())
        with open(name, "rb") as f:
            h.update(f.read())
    for package in ("torch", "diffusers", "transformers", "accelerate", "safetensors"):
        try:
            h.update(f"{package}={metadata.version(package)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{package}=none".encode())
    h.update(f"allow_pickle={allow_pickle}".encode())
    return h.hexdigest()


model_manager = LoadedModels(load_from_disk, inspect_on_disk,
                             StoredFacts(lambda: inspection_digest(bool(shared.cmd_opts.allow_pickle_checkpoints))))
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


def overridden(key: str) -> bool:
    """Whether an override layer of the current context sets ``key`` (a request chose it, not the settings)."""
    return any(key in layer.values for layer in shared.opts.layers())


def clip_skip_problem(clip_skip: int, info: CheckpointInfo, facts) -> str | None:
    """Why checkpoint ``info`` cannot honour ``clip_skip``, or ``None``. Clip skip n takes the output of the n-th
    text-encoder layer from the end, so n is at most the layer count: 12 for SD1.5 (A1111's maximum), 2 for the
    embedded models."""
    layers = facts.text_encoder_layers
    if layers is not None and clip_skip > layers:
        return f"{clip_skip} is more than {info.title} allows: its text encoder has {layers} layers (at most {layers})"
    return None


def vae_problem(vae_name: str, vae_facts, info: CheckpointInfo, facts) -> str | None:
    """Why VAE ``vae_name`` cannot work with checkpoint ``info``, or ``None``: its latents must have the UNet's
    channels (a mismatch fails in the first decode)."""
    if vae_facts.latent_channels != facts.latent_channels:
        return (f"{vae_name} makes {vae_facts.latent_channels}-channel latents; {info.title} works on "
                f"{facts.latent_channels} channels")
    return None


def _warn(warnings: list | None, message: str):
    log.warning("%s", message)
    if warnings is not None and message not in warnings:
        warnings.append(message)


def _fallback_model(error: ValueError, warnings: list | None):
    """A working model instead of a stored (or default) checkpoint that cannot load: the one in use, else the
    first that loads. The setting itself is kept, so fixing the file brings it back."""
    candidates = ([model_manager.current] if model_manager.current is not None else []) + list_checkpoints()
    for info in candidates:
        try:
            model = model_manager.get(info)
        except CheckpointLoadError:
            continue
        _warn(warnings, f"sd_model_checkpoint: {getattr(error, 'reason', error)}; using {info.title} instead")
        return model
    raise error


def _external_vae(name: str, model):
    from modules import sd_models_loader, sd_vae
    path = sd_vae.vae_path(name)
    if path is None:
        raise ValueError(f"no VAE named {name!r}")
    vae_facts = model_manager.vae_facts(path)
    if vae_facts is not None and getattr(model, "facts", None) is not None:
        problem = vae_problem(name, vae_facts, model.info, model.facts)
        if problem:
            raise ValueError(problem)
    if name not in _vae_cache:
        _vae_cache.clear()  # one external VAE in memory at a time
        _vae_cache[name] = sd_models_loader.load_vae(path, device=model.device, dtype=model.vae_dtype)
    return _vae_cache[name]


def current_model(warnings: list | None = None):
    """The model that matches the effective checkpoint and VAE of the current context, loading what is missing.

    Called by the core's enter hook and by every generation; cheap when nothing changes, and a model already in
    the cache is switched to without reading the disk.

    A checkpoint or VAE that cannot load leaves the models in memory as they were. Named by an override (a
    request), it raises ``CheckpointLoadError`` (HTTP 422); chosen by the settings (or by ``Automatic``), a
    working model is used instead — the one in use, else the first that loads; for a VAE the checkpoint's own —
    with a warning in the log and in ``warnings`` (the generation's), so a broken file never bricks the server.
    """
    try:
        info = effective_checkpoint()
        model = model_manager.get(info)
    except ValueError as e:
        if overridden("sd_model_checkpoint"):
            if isinstance(e, OptionError):
                raise
            raise CheckpointLoadError("sd_model_checkpoint", str(shared.opts.sd_model_checkpoint), e) from e
        model = _fallback_model(e, warnings)
    vae_name = wanted_vae(model.info)
    if getattr(model, "vae_name", None) != vae_name:
        vae = None
        if vae_name is not None:
            try:
                vae = _external_vae(vae_name, model)
            except (ValueError, OSError) as e:
                if overridden("sd_vae") and shared.opts.sd_vae == vae_name:  # a request named this very file
                    raise CheckpointLoadError("sd_vae", vae_name, e) from e
                _warn(warnings, f"sd_vae: {vae_name} cannot be used: {e}; using the checkpoint's own VAE")
                vae_name = None
        if getattr(model, "vae_name", None) != vae_name:
            model.apply_vae(vae, vae_name)
    return model
