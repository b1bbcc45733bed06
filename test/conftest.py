"""Shared fixtures. The suite runs with strict hooks: the first hook error fails the call."""

from __future__ import annotations

import logging
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

os.environ.setdefault("SERENA_STRICT_HOOKS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

from modules import initialize, model_options, paths, plugins, sd_models, shared  # noqa: E402
from modules.checkpoint_info import CheckpointInfo  # noqa: E402
from modules.hookspecs import hookimpl  # noqa: E402

# As modules.initialize does: the tests build the runtime without it.
model_options.attach(shared.opts)


class FakeModel:
    """Stands in for a loaded checkpoint in unit tests of the seam (never in smoke tests)."""

    def __init__(self, info):
        self.info = info
        self.vae_name = None
        self.sd_model_hash = info.shorthash
        self.device, self.vae_dtype = "cpu", None  # where an external VAE is loaded for it

    def apply_vae(self, vae, name):
        self.vae_name = name


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A fresh data folder with two fake checkpoints and a VAE; ``shared.opts`` bound to its config.json."""
    sd_dir = tmp_path / "models" / "Stable-diffusion"
    sd_dir.mkdir(parents=True)
    (sd_dir / "alpha.safetensors").write_bytes(b"alpha weights")
    (sd_dir / "beta.safetensors").write_bytes(b"beta weights")
    vae_dir = tmp_path / "models" / "VAE"
    vae_dir.mkdir(parents=True)
    (vae_dir / "sharp.safetensors").write_bytes(b"vae weights")
    # The data folder's models only (not the shipped ones); the checkpoint list follows the folders by itself.
    monkeypatch.setattr(shared, "data_paths",
                        paths.Paths(str(tmp_path), str(tmp_path / "config.json"), shipped_models=False))
    monkeypatch.setattr(shared.opts, "filename", str(tmp_path / "config.json"))
    shared.opts.load()
    yield tmp_path
    shared.opts.load(str(tmp_path / "does-not-exist.json"))


@pytest.fixture
def fake_models(data_dir, monkeypatch):
    """A loaded-models cache whose loads are recorded instead of reading weights."""
    loaded = []

    def load(info):
        loaded.append(info.name)
        return FakeModel(info)

    manager = sd_models.LoadedModels(load)
    manager.loaded_names = loaded
    monkeypatch.setattr(sd_models, "model_manager", manager)
    yield manager


@pytest.fixture(autouse=True)
def plugin_host():
    """A fresh strict host with only the core plugin, as ``plugins.host`` / ``plugins.pm`` for one test: what a
    test registers or loads is gone afterwards, and no test sees another's plugins."""
    with plugins.use_host(plugins.Host(plugins.create_plugin_manager(), strict=True)) as host:
        initialize.register_core_plugin(host)
        yield host


@pytest.fixture(scope="session")
def tiny_model():
    """The shipped tiny checkpoint, loaded once: real sampling at 64x64 in a fraction of a second."""
    from modules import sd_models_loader
    path = os.path.join(ROOT, "models", "Stable-diffusion", "serena-tiny-v1.safetensors")
    return sd_models_loader.load_checkpoint(CheckpointInfo(path, os.path.basename(path), "0" * 64))


@pytest.fixture
def serve_model(data_dir, monkeypatch):
    """``serve_model(model)``: a loaded-models cache that runs every generation, whatever checkpoint it asks for,
    on ``model`` (returned)."""
    def serve(model):
        monkeypatch.setattr(sd_models, "model_manager", sd_models.LoadedModels(lambda info: model))
        return model
    return serve


@pytest.fixture
def real_model(serve_model, tiny_model):
    """Every generation, whatever checkpoint it asks for, runs on the real tiny model."""
    return serve_model(tiny_model)


@pytest.fixture
def disk_models(tmp_path, monkeypatch):
    """Real files through the real loaded-models cache: call it with ``{name: source}`` checkpoints (and ``vaes``,
    the same for ``models/VAE``); they are copied into a fresh data folder, ``shared.opts`` is bound to its
    config.json, and the cache it returns records every load from disk in ``disk_loads``."""

    def serve(checkpoints: dict, vaes: dict | None = None):
        for sub, files in (("Stable-diffusion", checkpoints), ("VAE", vaes or {})):
            folder = tmp_path / "models" / sub
            folder.mkdir(parents=True, exist_ok=True)
            for name, source in files.items():
                shutil.copy(source, folder / name)
        monkeypatch.setattr(shared, "data_paths",
                            paths.Paths(str(tmp_path), str(tmp_path / "config.json"), shipped_models=False))
        monkeypatch.setattr(sd_models, "_cache_file", None)
        monkeypatch.setattr(sd_models, "_vae_cache", {})
        loads = []

        def load_from_disk(info):
            loads.append(info.name)
            return sd_models.load_from_disk(info)

        manager = sd_models.LoadedModels(load_from_disk, sd_models.inspect_on_disk)
        manager.disk_loads = loads
        monkeypatch.setattr(sd_models, "model_manager", manager)
        monkeypatch.setattr(shared.opts, "filename", str(tmp_path / "config.json"))
        shared.opts.load()
        sd_models.refresh_checkpoints()
        return manager

    yield serve
    shared.opts.load(str(tmp_path / "does-not-exist.json"))


@pytest.fixture
def register(plugin_host):
    """Register plugins on this test's host: ``register(obj, name, group)``."""
    def _register(plugin, name, group=plugins.USER_GROUP):
        plugin_host.register(plugin, name, group)
        return plugin

    return _register


class OverrideCounter:
    """Counts on_opts_override_enter/exit calls."""

    def __init__(self):
        self.enter = self.exit = 0

    @hookimpl
    def on_opts_override_enter(self):
        self.enter += 1

    @hookimpl
    def on_opts_override_exit(self):
        self.exit += 1


@pytest.fixture
def override_counter(register):
    """An ``OverrideCounter`` registered for one test."""
    return register(OverrideCounter(), "override-counter")


@pytest.fixture
def lenient_hooks(plugin_host):
    """Turn strict hooks off for one test, to check containment."""
    plugin_host.strict = False


@pytest.fixture
def start_with_ckpt(tmp_path, monkeypatch, caplog):
    """Start-up as ``--data-dir <tmp_path> --ckpt PATH`` on an install without shipped models: call it with the
    path; it returns the start-up's warning messages."""
    from modules import cmd_args

    def start(path) -> list[str]:
        monkeypatch.setattr(shared, "cmd_opts", shared.cmd_opts)
        monkeypatch.setattr(sd_models, "extra_checkpoints", [])
        monkeypatch.setattr(paths, "script_path", str(tmp_path / "app"))
        opts = cmd_args.parse_args(["--data-dir", str(tmp_path), "--ckpt", str(path)])
        with caplog.at_level(logging.WARNING, logger="serena.initialize"):
            initialize.initialize(opts, load_extensions=False)
        return [r.getMessage() for r in caplog.records if r.name == "serena.initialize"]

    return start


@pytest.fixture
def api_client():
    """A ``TestClient`` on a bare app with only Serena's API routes; request it after the fixtures that prepare the
    models and data folder it should see."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from modules.api.api import Api

    app = FastAPI()
    Api(app)
    with TestClient(app) as client:
        yield client
