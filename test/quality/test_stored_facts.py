"""Checkpoint inspections kept across starts in ``<data-dir>/cache.json`` (``sd_models.StoredFacts``).

A start with unchanged files reads the starting checkpoint's ``ModelFacts`` from the cache instead of importing the
model stack (docs/performance.md, start-up); any change to the file or to what decides the facts inspects again,
so the checks of test_checkpoint_checks.py still refuse a file that broke after it was cached.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from modules import paths, sd_models, shared
from modules.cache_file import CacheFile
from modules.model_facts import ModelFacts

TINY = os.path.join(paths.script_path, "models", "Stable-diffusion", "serena-tiny-v1.safetensors")
TINY_FACTS = ModelFacts(text_encoder_layers=2, latent_channels=4, native_size=64, text_encoder_widths=(32,),
                        family="sd1")


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(shared, "data_paths",
                        paths.Paths(str(tmp_path), str(tmp_path / "config.json"), shipped_models=False))
    monkeypatch.setattr(sd_models, "_cache_file", None)
    return tmp_path


def start(digest="d1"):
    """A fresh loaded-models cache (a new process: nothing in memory) over the real inspection; returns it and the
    list of files it actually inspected."""
    inspected = []

    def inspect(kind, path):
        inspected.append(os.path.basename(path))
        return sd_models.inspect_on_disk(kind, path)

    sd_models._cache_file = None
    return sd_models.LoadedModels(None, inspect, sd_models.StoredFacts(lambda: digest)), inspected


def test_a_restart_reads_the_facts_back_without_inspecting(data_dir):
    path = shutil.copy(TINY, data_dir / "m.safetensors")
    info = sd_models.CheckpointInfo(str(path), "m.safetensors", "0" * 64)
    manager, inspected = start()
    assert manager.facts(info) == TINY_FACTS
    assert inspected == ["m.safetensors"]

    manager, inspected = start()
    assert manager.facts(info) == TINY_FACTS
    assert inspected == []
    with open(data_dir / "cache.json", encoding="utf8") as f:
        stored = json.load(f)["serena-model-facts"]
    assert list(stored) == [f"checkpoint:{os.path.abspath(path)}"]


def test_a_changed_file_or_digest_is_inspected_again_and_a_broken_file_refused_by_name(data_dir):
    path = str(shutil.copy(TINY, data_dir / "m.safetensors"))
    info = sd_models.CheckpointInfo(path, "m.safetensors", "0" * 64)
    start()[0].facts(info)

    # What decides the facts changed (the loader's code, a package, --allow-pickle-checkpoints): inspected again.
    manager, inspected = start(digest="d2")
    assert manager.facts(info) == TINY_FACTS
    assert inspected == ["m.safetensors"]

    # Same size, new mtime: inspected again.
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    manager, inspected = start(digest="d2")
    assert manager.facts(info) == TINY_FACTS
    assert inspected == ["m.safetensors"]

    # Truncated after caching: refused by name, and the failure is not stored (every start checks it again).
    os.truncate(path, os.path.getsize(path) // 2)
    for _ in range(2):
        manager, inspected = start(digest="d2")
        with pytest.raises(ValueError, match=r"^m\.safetensors: corrupt or truncated"):
            manager.facts(info)
        assert inspected == ["m.safetensors"]


def test_cache_sections_survive_each_other(data_dir):
    # Hashing a checkpoint must not drop stored facts, nor storing facts the hashes (one file, two sections).
    path = str(shutil.copy(TINY, data_dir / "m.safetensors"))
    start()[0].facts(sd_models.CheckpointInfo(path, "m.safetensors", "0" * 64))
    sd_models._cache_file = None
    sd_models.file_sha256(path)
    with open(data_dir / "cache.json", encoding="utf8") as f:
        assert set(json.load(f)) == {"hashes-sha256", "serena-model-facts"}


def test_a_read_only_or_unreadable_cache_file_is_only_a_miss(tmp_path):
    broken = tmp_path / "cache.json"
    broken.write_text("[1, 2")
    cache = CacheFile(str(broken))
    assert cache.get("s", "k") is None
    cache.put("s", "k", {"v": 1})
    assert CacheFile(str(broken)).get("s", "k") == {"v": 1}

    missing = CacheFile(str(tmp_path / "no-such-dir" / "file-not-dir" / "cache.json"))
    (tmp_path / "no-such-dir").write_text("a file where the folder should be")
    missing.put("s", "k", 1)  # cannot be written: kept in memory only
    assert missing.get("s", "k") == 1
