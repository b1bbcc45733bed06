"""Checkpoint discovery, titles, name resolution, the sha256 cache and the loaded-models LRU (``modules.sd_models``).

No model is loaded: discovery only hashes files, and ``LoadedModels`` is given a counting ``load_fn``.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from modules import paths, sd_models, sd_vae, shared, shared_options
from modules.options import Options


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A data folder and an application folder of our own, an empty checkpoint list and fresh options."""
    data, app = tmp_path / "data", tmp_path / "app"
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    (app / "models" / "Stable-diffusion").mkdir(parents=True)
    monkeypatch.setattr(shared, "data_paths", paths.Paths(data_dir=str(data), config_file=str(data / "config.json")))
    monkeypatch.setattr(paths, "script_path", str(app))
    monkeypatch.setattr(shared, "opts", Options(shared_options.options_templates))
    monkeypatch.setattr(sd_models, "_cache_file", None)
    monkeypatch.setattr(sd_models, "extra_checkpoints", [])
    # The files here are placeholders: nothing inspects their headers (test_checkpoint_checks.py does, on real files).
    monkeypatch.setattr(sd_models, "model_manager", sd_models.LoadedModels(load_fn=None))
    return data / "models" / "Stable-diffusion", app / "models" / "Stable-diffusion"


def put(folder, rel: str, content: bytes | None = None) -> str:
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if content is not None else rel.encode())
    return str(path)


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


# --- discovery and titles -----------------------------------------------------------------------------------------

def test_titles_are_name_and_short_hash(env):
    user, _ = env
    put(user, "b.safetensors", b"bbb")
    put(user, "sub/a.ckpt", b"aaa")
    put(user, "notes.txt")
    titles = [c.title for c in sd_models.list_checkpoints()]
    assert titles == [f"b.safetensors [{sha(b'bbb')[:10]}]", f"sub/a.ckpt [{sha(b'aaa')[:10]}]"]
    info = sd_models.resolve_checkpoint("b.safetensors")
    assert info.sha256 == sha(b"bbb") and info.shorthash == sha(b"bbb")[:10]
    assert info.model_name == "b"
    assert sd_models.resolve_checkpoint("sub/a.ckpt").model_name == "sub_a"


def test_diffusers_folder_is_one_checkpoint(env):
    user, _ = env
    put(user, "pipe/model_index.json", b"{}")
    put(user, "pipe/unet/diffusion_pytorch_model.safetensors", b"weights")
    checkpoints = sd_models.list_checkpoints()
    assert [c.name for c in checkpoints] == ["pipe"]
    assert checkpoints[0].is_folder


def test_data_folder_comes_before_the_application_folder(env):
    user, shipped = env
    put(user, "same.safetensors", b"user copy")
    put(shipped, "same.safetensors", b"shipped copy")
    put(shipped, "only-shipped.safetensors", b"x")
    found = {c.name: c for c in sd_models.list_checkpoints()}
    assert set(found) == {"same.safetensors", "only-shipped.safetensors"}
    assert found["same.safetensors"].sha256 == sha(b"user copy")


def test_checkpoints_named_on_the_command_line_are_listed(env, tmp_path, monkeypatch):
    extra = tmp_path / "elsewhere" / "mine.safetensors"
    extra.parent.mkdir()
    extra.write_bytes(b"mine")
    monkeypatch.setattr(sd_models, "extra_checkpoints", [str(extra), str(tmp_path / "missing.safetensors")])
    assert [c.filename for c in sd_models.list_checkpoints()] == [str(extra)]


def test_a_command_line_checkpoint_is_never_dropped_for_a_namesake(env, tmp_path, monkeypatch):
    user, _ = env
    listed = put(user, "model.safetensors", b"listed")
    extra = tmp_path / "elsewhere" / "model.safetensors"
    extra.parent.mkdir()
    extra.write_bytes(b"named on the command line")
    monkeypatch.setattr(sd_models, "extra_checkpoints", [str(extra)])
    assert sd_models.checkpoint_for_file(str(extra)).sha256 == sha(b"named on the command line")
    assert sd_models.checkpoint_for_file(listed).name == "model.safetensors"
    with pytest.raises(ValueError, match="not among the checkpoints"):
        sd_models.checkpoint_for_file(str(tmp_path / "other.safetensors"))


def test_list_is_cached_until_refreshed(env):
    user, _ = env
    put(user, "one.safetensors")
    assert len(sd_models.list_checkpoints()) == 1
    put(user, "two.safetensors")
    assert len(sd_models.list_checkpoints()) == 1
    assert len(sd_models.refresh_checkpoints()) == 2


def test_list_follows_the_folders_and_can_leave_the_shipped_models_out(env, tmp_path, monkeypatch):
    user, shipped = env
    put(user, "here.safetensors")
    put(shipped, "shipped.safetensors")
    assert [c.name for c in sd_models.list_checkpoints()] == ["here.safetensors", "shipped.safetensors"]
    # Another data folder is listed without a refresh; without the shipped models, only its own are.
    other = tmp_path / "other"
    put(other / "models" / "Stable-diffusion", "there.safetensors")
    put(other / "models" / "VAE", "there-vae.safetensors")
    monkeypatch.setattr(shared, "data_paths",
                        paths.Paths(str(other), str(other / "config.json"), shipped_models=False))
    assert [c.name for c in sd_models.list_checkpoints()] == ["there.safetensors"]
    assert sd_models.model_dirs() == [str(other / "models" / "Stable-diffusion")]
    assert sd_vae.vae_dirs() == [str(other / "models" / "VAE")]
    assert list(sd_vae.list_vaes()) == ["there-vae.safetensors"]
    monkeypatch.setattr(sd_models, "extra_checkpoints", [put(tmp_path, "flag.safetensors")])
    assert [c.name for c in sd_models.list_checkpoints()] == ["flag.safetensors", "there.safetensors"]


def test_default_checkpoint_prefers_the_embedded_model(env):
    user, shipped = env
    put(user, "aaa-first.safetensors")
    assert sd_models.default_checkpoint().name == "aaa-first.safetensors"
    put(shipped, sd_models.DEFAULT_CHECKPOINT_FILE)
    sd_models.refresh_checkpoints()
    assert sd_models.default_checkpoint().name == sd_models.DEFAULT_CHECKPOINT_FILE
    assert sd_models.effective_checkpoint().name == sd_models.DEFAULT_CHECKPOINT_FILE
    shared.opts.sd_model_checkpoint = "aaa-first"
    assert sd_models.effective_checkpoint().name == "aaa-first.safetensors"


def test_no_checkpoint_at_all(env):
    assert sd_models.default_checkpoint() is None
    with pytest.raises(ValueError, match="no checkpoint found"):
        sd_models.effective_checkpoint()


# --- resolution ---------------------------------------------------------------------------------------------------

@pytest.fixture
def three(env):
    user, _ = env
    put(user, "anime-v1.safetensors", b"anime one")
    put(user, "anime-v2.safetensors", b"anime two")
    put(user, "photo/real.safetensors", b"photo")
    return {c.name: c for c in sd_models.list_checkpoints()}


SPELLINGS = {
    "title": lambda c: c.title,
    "relative name": lambda c: c.name,
    "file name": lambda c: os.path.basename(c.filename),
    "stem": lambda c: "photo/real",
    "model name": lambda c: "photo_real",
    "stem with hash": lambda c: f"photo/real [{c.shorthash}]",
    "short hash": lambda c: c.shorthash,
    "sha256": lambda c: c.sha256,
    "8-digit hash": lambda c: c.sha256[:8],
    "12-digit hash prefix": lambda c: c.sha256[:12],
    "title in upper case": lambda c: c.title.upper(),
}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_resolution_by_every_spelling(three, spelling):
    target = three["photo/real.safetensors"]
    assert sd_models.resolve_checkpoint(SPELLINGS[spelling](target)) == target


def test_partial_name_must_be_unambiguous(three):
    assert sd_models.resolve_checkpoint("v2").name == "anime-v2.safetensors"
    with pytest.raises(ValueError, match=r"'anime' is ambiguous: it matches anime-v1\.safetensors \[.*\], "
                                         r"anime-v2\.safetensors \["):
        sd_models.resolve_checkpoint("anime")


def test_unknown_name_lists_the_titles(three):
    with pytest.raises(ValueError) as excinfo:
        sd_models.resolve_checkpoint("sdxl-base")
    message = str(excinfo.value)
    assert message.startswith("no checkpoint named 'sdxl-base'; available: ")
    for info in three.values():
        assert info.title in message


@pytest.mark.parametrize("bad", [None, "", "   ", 3])
def test_non_names_are_rejected(three, bad):
    with pytest.raises(ValueError, match="expected a checkpoint name"):
        sd_models.resolve_checkpoint(bad)


def test_same_file_name_in_two_folders_is_ambiguous(env):
    user, _ = env
    put(user, "a/model.safetensors", b"first")
    put(user, "b/model.safetensors", b"second")
    with pytest.raises(ValueError, match="ambiguous"):
        sd_models.resolve_checkpoint("model.safetensors")
    assert sd_models.resolve_checkpoint("b/model.safetensors").sha256 == sha(b"second")


def test_short_hash_option_validation_gives_the_title(three):
    target = three["anime-v1.safetensors"]
    shared.opts.set("sd_model_checkpoint", target.shorthash)
    assert shared.opts.sd_model_checkpoint == target.title


# --- the sha256 cache ---------------------------------------------------------------------------------------------

@pytest.fixture
def hash_calls(monkeypatch):
    calls = []
    real = sd_models._sha256_of

    def counting(path):
        calls.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(sd_models, "_sha256_of", counting)
    return calls


def test_hashes_are_reused_while_mtime_and_size_are_unchanged(env, hash_calls):
    user, _ = env
    path = put(user, "m.safetensors", b"version 1")
    sd_models.list_checkpoints()
    assert hash_calls == ["m.safetensors"]
    sd_models.refresh_checkpoints()
    assert hash_calls == ["m.safetensors"]

    # A restart reads the hashes back from cache.json.
    sd_models._cache_file = None
    sd_models.refresh_checkpoints()
    assert hash_calls == ["m.safetensors"]
    with open(os.path.join(shared.data_paths.data_dir, "cache.json"), encoding="utf8") as f:
        cache = json.load(f)
    assert cache["hashes-sha256"][os.path.abspath(path)]["sha256"] == sha(b"version 1")

    # Same size, new mtime: hashed again.
    with open(path, "wb") as f:
        f.write(b"version 2")
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert sd_models.refresh_checkpoints()[0].sha256 == sha(b"version 2")
    assert hash_calls == ["m.safetensors", "m.safetensors"]

    # Same mtime, new size: hashed again.
    st = os.stat(path)
    with open(path, "wb") as f:
        f.write(b"version three")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert sd_models.refresh_checkpoints()[0].sha256 == sha(b"version three")
    assert len(hash_calls) == 3


def test_unreadable_cache_file_only_costs_rehashing(env, hash_calls):
    user, _ = env
    put(user, "m.safetensors", b"abc")
    with open(os.path.join(shared.data_paths.data_dir, "cache.json"), "w") as f:
        f.write("{broken")
    assert sd_models.list_checkpoints()[0].sha256 == sha(b"abc")
    assert hash_calls == ["m.safetensors"]


# --- the loaded-models LRU ----------------------------------------------------------------------------------------

@pytest.fixture
def manager(three):
    loaded = []

    def load_fn(info):
        loaded.append(info.name)
        return f"model:{info.name}"

    return sd_models.LoadedModels(load_fn), loaded, three


def test_switching_back_to_a_cached_model_does_not_load(manager):
    models, loaded, ckpt = manager
    shared.opts.sd_checkpoints_limit = 2
    a, b = ckpt["anime-v1.safetensors"], ckpt["anime-v2.safetensors"]
    assert models.get(a) == "model:anime-v1.safetensors"
    assert models.get(b) == "model:anime-v2.safetensors"
    assert models.get(a) == "model:anime-v1.safetensors"
    assert models.get(a) == "model:anime-v1.safetensors"
    assert loaded == ["anime-v1.safetensors", "anime-v2.safetensors"]
    assert models.loads == 2
    assert models.current == a


def test_least_recently_used_is_evicted_at_the_limit(manager):
    models, loaded, ckpt = manager
    shared.opts.sd_checkpoints_limit = 2
    a, b, c = ckpt["anime-v1.safetensors"], ckpt["anime-v2.safetensors"], ckpt["photo/real.safetensors"]
    models.get(a)
    models.get(b)
    models.get(a)  # b is now the least recently used
    models.get(c)
    assert models.cached() == [a.filename, c.filename]
    models.get(b)
    assert loaded == [a.name, b.name, c.name, b.name]
    assert models.cached() == [c.filename, b.filename]


def test_default_limit_keeps_one_model(manager):
    models, loaded, ckpt = manager
    a, b = ckpt["anime-v1.safetensors"], ckpt["anime-v2.safetensors"]
    models.get(a)
    models.get(b)
    models.get(a)
    assert models.loads == 3
    assert models.cached() == [a.filename]


def test_failed_load_caches_nothing(three):
    def failing(info):
        raise ValueError(f"{info.name}: corrupt")

    models = sd_models.LoadedModels(failing)
    with pytest.raises(ValueError, match="corrupt"):
        models.get(three["anime-v1.safetensors"])
    assert models.cached() == [] and models.loads == 0 and models.current is None


def test_unload_all(manager):
    models, _, ckpt = manager
    models.get(ckpt["anime-v1.safetensors"])
    models.unload_all()
    assert models.cached() == [] and models.current is None
