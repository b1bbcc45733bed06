"""Hostile input and faults around the options store: wrong types that compare equal, saves killed with SIGKILL,
saves that fail, image saves that fail.

What must hold: a value of the wrong type is a 422 naming the option at every front door, even when Python's
``==`` calls it equal to the current value (``True == 1``); ``config.json`` is always a whole state that was written (never a mix, never invalid JSON); the
temp files a killed save leaves are gone after the next start; a save that fails changes nothing (memory equals
the file, through the Options API, ``POST /options`` and the settings page); a generation whose images cannot be
written still returns them, with a warning naming the file.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import random
import subprocess
import sys
import time

import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from fastapi.testclient import TestClient
from PIL import Image

from modules import images, processing, shared, shared_options
from modules.api.api import Api
from modules.option_info import OptionInfo
from modules.options import Options, SettingsSaveError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMES = 2000  # entries per written state: big enough that a kill often lands inside a write

# Saves state after state until killed; each state n is {"n": n, "names": ["n-0", ..., "n-1999"]}.
SAVER = f"""
import sys
from modules.option_info import OptionInfo
from modules.options import Options
opts = Options({{"n": OptionInfo(0), "names": OptionInfo([])}}, filename=sys.argv[1])
opts.load()
n = opts.n
print("ready", flush=True)
while True:
    n += 1
    opts.set_many({{"n": n, "names": [f"{{n}}-{{j}}" for j in range({NAMES})]}}, save=True)
"""


def temp_files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".config-"))


def test_kill_9_during_saves_leaves_a_whole_state_and_no_temp_files_after_restart(tmp_path):
    path = tmp_path / "config.json"
    env = dict(os.environ, PYTHONPATH=ROOT)
    rng = random.Random()
    last, interrupted = 0, 0
    for _ in range(25):
        child = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, env=env, cwd=ROOT)
        assert child.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.0, 0.08))
        child.kill()
        child.wait()
        child.stdout.close()
        state = json.loads(path.read_text()) if path.exists() else {"n": 0, "names": []}
        n = state["n"]
        assert set(state) <= {"n", "names"} and n >= last  # a state written, never one older than the last seen
        assert state.get("names", []) == ([f"{n}-{j}" for j in range(NAMES)] if n else [])
        last = n
        interrupted += bool(temp_files(tmp_path))
        restarted = Options({"n": OptionInfo(0), "names": OptionInfo([])}, filename=str(path))
        restarted.load()  # the next start
        assert temp_files(tmp_path) == [] and restarted.n == n
    assert last > 0  # the children really saved


# -- wrong types that compare equal --------------------------------------------------------------------------------


@pytest.fixture
def client(data_dir, fake_models, monkeypatch):
    def paint(p, model, prompts, negative_prompts, seeds, subseeds):
        return [Image.new("RGB", (p.width, p.height), (seed % 256, 40, 80)) for seed in seeds]

    monkeypatch.setattr(processing.StableDiffusionProcessing, "sample_batch", paint)
    app = FastAPI()
    Api(app)
    with TestClient(app) as c:
        yield c


def _options_of(kind) -> list[str]:
    return sorted(k for k, info in shared_options.options_templates.items()
                  if info.expected_type() is kind and not info.restrict_api)


# For each option type, JSON values of another type -- including those == to a valid value (True for 1, 1 for True).
WRONG_FOR = {
    int: st.booleans() | st.text(max_size=2) | st.just([1]),
    bool: st.integers(-1, 2) | st.floats(-1, 2) | st.sampled_from(["true", "1", [True]]),
    str: st.booleans() | st.integers(-1, 2) | st.floats(-1, 2) | st.just(["png"]),
    list: st.booleans() | st.integers(0, 1) | st.just("[]") | st.just({}),
}
WRONG_TYPED = st.sampled_from(sorted(WRONG_FOR, key=lambda t: t.__name__)).flatmap(
    lambda kind: st.tuples(st.sampled_from(_options_of(kind)), WRONG_FOR[kind]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(WRONG_TYPED)
def test_property_post_options_refuses_wrong_types_naming_the_option(client, data_dir, key_value):
    key, value = key_value
    r = client.post("/sdapi/v1/options", json={key: value})
    assert r.status_code == 422 and list(r.json()["errors"]) == [key], (key, value, r.text)
    assert shared.opts.stored() == {} and not (data_dir / "config.json").exists()


def test_equal_but_wrong_types_are_refused_by_overrides_and_the_settings_page(client, data_dir):
    from modules.ui import settings as settings_page

    bad = {"CLIP_stop_at_last_layers": True, "samples_save": 1}
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2, "override_settings": bad})
    assert r.status_code == 422 and set(r.json()["errors"]) == set(bad)
    assert client.post("/serena/v1/overrides/validate", json=bad).json()["valid"] is False
    changes, errors = settings_page.apply_values(list(bad), list(bad.values()))
    assert changes == {} and set(errors) == set(bad)
    # Integral floats stay accepted for ints (A1111 does, and JSON clients send 2.0); the same value is no change.
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1.0}).status_code == 200
    assert shared.opts.stored() == {} and not (data_dir / "config.json").exists()
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2.0}).status_code == 200
    assert on_disk(data_dir) == {"CLIP_stop_at_last_layers": 2}


# -- saves that fail ---------------------------------------------------------------------------------------------


class FullDisk(io.StringIO):
    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fail_create(real):
    def fake(path, *args, **kwargs):
        if str(path).endswith(".tmp"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real(path, *args, **kwargs)
    return fake


def _fail_write(real):
    def fake(fd, *args, **kwargs):
        os.close(fd)
        return FullDisk()
    return fake


def _fail_always(code):
    def patch(real):
        def fake(*args, **kwargs):
            raise OSError(code, os.strerror(code))
        return fake
    return patch


# The OS call each failure comes from, as a read-only or full data folder makes it fail.
FAULTS = {
    "create-EROFS": ("open", _fail_create),
    "write-ENOSPC": ("fdopen", _fail_write),
    "fsync-ENOSPC": ("fsync", _fail_always(errno.ENOSPC)),
    "replace-EROFS": ("replace", _fail_always(errno.EROFS)),
}


@pytest.fixture(params=sorted(FAULTS))
def fault(request, monkeypatch):
    """``arm()`` makes every settings save fail at one OS call; ``disarm()`` lets saves succeed again."""
    name, make = FAULTS[request.param]
    real = getattr(os, name)

    class Fault:
        code = errno.ENOSPC if "ENOSPC" in request.param else errno.EROFS
        reason = os.strerror(code)

        def arm(self):
            monkeypatch.setattr(f"modules.settings_file.os.{name}", make(real))

        def disarm(self):
            monkeypatch.setattr(f"modules.settings_file.os.{name}", real)
    return Fault()


def on_disk(folder) -> dict:
    path = folder / "config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_a_failed_save_changes_nothing_through_the_options_api(tmp_path, fault):
    opts = Options({"a": OptionInfo(1), "b": OptionInfo("x"), "c": OptionInfo(False)},
                   filename=str(tmp_path / "config.json"))
    opts.set_many({"a": 2}, save=True)
    fault.arm()
    with pytest.raises(SettingsSaveError) as failed:
        opts.set_many({"a": 3, "b": "y"}, save=True)
    assert str(failed.value) == f"could not write the settings file {tmp_path / 'config.json'}: {fault.reason}"
    assert failed.value.errno == fault.code
    assert opts.stored() == on_disk(tmp_path) == {"a": 2} and temp_files(tmp_path) == []
    fault.disarm()
    opts.set_many({"c": True}, save=True)  # the next good save does not carry the change that failed
    assert on_disk(tmp_path) == {"a": 2, "c": True} == opts.stored()


def test_a_failed_save_changes_nothing_through_post_options(client, data_dir, fault):
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}).status_code == 200
    fault.arm()
    r = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 4, "samples_format": "jpg"})
    assert r.status_code == 500 and r.json()["error"] == "SettingsSaveError"
    assert r.json()["detail"] == f"could not write the settings file {data_dir / 'config.json'}: {fault.reason}"
    assert set(r.json()) == {"error", "detail", "body", "errors"}
    shown = client.get("/sdapi/v1/options").json()
    assert (shown["CLIP_stop_at_last_layers"], shown["samples_format"]) == (2, "png")
    assert shared.opts.stored() == on_disk(data_dir) == {"CLIP_stop_at_last_layers": 2}
    fault.disarm()
    assert client.post("/sdapi/v1/options", json={"eta_noise_seed_delta": 5}).status_code == 200
    assert on_disk(data_dir) == {"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 5}


def test_a_failed_save_changes_nothing_through_the_settings_page(data_dir, fault):
    from modules.ui import settings

    fault.arm()
    changes, errors = settings.apply_values(["CLIP_stop_at_last_layers", "samples_save"], [3, False])
    assert changes == {} and list(errors) == ["config.json"] and str(data_dir / "config.json") in errors["config.json"]
    assert shared.opts.stored() == on_disk(data_dir) == {}


def test_a_failed_callback_puts_every_value_back(tmp_path):
    calls = []

    def reload_a():
        calls.append(("a", opts.a))

    def refuse():
        raise RuntimeError("cannot load that")

    opts = Options({"a": OptionInfo(1, onchange=reload_a), "b": OptionInfo(1, onchange=refuse)},
                   filename=str(tmp_path / "config.json"))
    with pytest.raises(ValueError, match="cannot load that"):
        opts.set_many({"a": 2, "b": 2}, save=True)
    assert opts.stored() == {} and not (tmp_path / "config.json").exists()
    assert calls == [("a", 2), ("a", 1)]  # a's callback saw the new value, then was told it is back


# -- image saves that fail -----------------------------------------------------------------------------------------


TXT = {"prompt": "a cat", "width": 64, "height": 64, "steps": 2, "seed": 7, "batch_size": 2, "save_images": True}


def test_an_unwritable_outputs_folder_returns_the_images_with_a_warning(client, data_dir):
    (data_dir / "outputs").write_text("not a folder")  # as root a read-only folder still takes files; this does not
    r = client.post("/sdapi/v1/txt2img", json=TXT)
    assert r.status_code == 200 and len(r.json()["images"]) == 2
    assert Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).size == (64, 64)
    warnings = json.loads(r.json()["info"])["warnings"]
    not_saved = [w for w in warnings if "was not saved" in w]
    assert len(not_saved) == 2 and all(str(data_dir / "outputs") in w for w in not_saved)


def test_a_full_disk_while_encoding_leaves_no_partial_image(client, data_dir, monkeypatch):
    real = images.encode_image

    def half_written(image, fmt, parameters, target):
        if isinstance(target, io.BytesIO):
            return real(image, fmt, parameters, target)  # the response's copy, in memory
        target.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(images, "encode_image", half_written)
    r = client.post("/sdapi/v1/txt2img", json=dict(TXT, batch_size=1))
    assert r.status_code == 200 and len(r.json()["images"]) == 1
    warning = [w for w in json.loads(r.json()["info"])["warnings"] if "was not saved" in w][0]
    assert "No space left on device" in warning and "00000-7.png" in warning
    folder = data_dir / "outputs" / "txt2img-images"
    assert [p for p in folder.rglob("*") if p.is_file()] == []
    monkeypatch.setattr(images, "encode_image", real)
    assert client.post("/sdapi/v1/txt2img", json=dict(TXT, batch_size=1)).status_code == 200
    assert [p.name for p in folder.rglob("*.png")] == ["00000-7.png"]  # the number was not used up either
