"""End to end generation on the real embedded checkpoints (safetensors on disk, no stand-ins).

Golden hashes live in ``test/smoke/golden.json``; a change that alters them must update that file on purpose:
``SERENA_UPDATE_GOLDEN=1 python scripts/run_tests.py test/smoke/test_generation.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from modules import images, jobs, paths, plugins, processing, sd_models, shared
from modules.runtime_utils import OverrideError

GOLDEN = os.path.join(os.path.dirname(__file__), "golden.json")
ROOT = paths.script_path
ALT = "serena-shapes-alt"
VAE = "serena-tiny-vae.safetensors"


def generate(**kw) -> processing.Processed:
    args = dict(prompt="a red circle on a blue background", negative_prompt="blurry", steps=6, width=64, height=64,
                seed=1234, sampler_name="Euler a", do_not_save_samples=True)
    args.update(kw)
    cls = processing.StableDiffusionProcessingImg2Img if "init_images" in kw else \
        processing.StableDiffusionProcessingTxt2Img
    return jobs.run_job("test", processing.process_images, cls(**args))


def pixels(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def png_bytes(processed) -> bytes:
    buf = io.BytesIO()
    images.encode_image(processed.images[0], "png", processed.infotexts[0], buf)
    return buf.getvalue()


def test_same_request_same_bytes(real_env):
    assert png_bytes(generate()) == png_bytes(generate())
    assert pixels(generate(seed=1235).images[0]) != pixels(generate().images[0])


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "DDIM"])
def test_golden_images(real_env, sampler):
    key = f"{sampler}|seed=1234|steps=6|64x64"
    digest = pixels(generate(sampler_name=sampler).images[0])
    golden = json.load(open(GOLDEN)) if os.path.exists(GOLDEN) else {}
    if os.environ.get("SERENA_UPDATE_GOLDEN") == "1":
        golden[key] = digest
        with open(GOLDEN, "w") as f:
            json.dump(golden, f, indent=1, sort_keys=True)
    assert golden.get(key) == digest, f"golden image changed for {key}; update on purpose (see module docstring)"


def test_batch_image_equals_single(real_env):
    batch = generate(seed=10, batch_size=2)
    single = generate(seed=11)
    assert batch.all_seeds == [10, 11]
    # Same seed, same noise; the UNet then runs at another batch size, and the CPU kernels for different batch
    # sizes round differently: with the trained default model a few channel values differ by one level.
    diff = np.abs(np.asarray(batch.images[1], dtype=np.int16) - np.asarray(single.images[0], dtype=np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


@pytest.mark.parametrize("key,value", [
    ("CLIP_stop_at_last_layers", 2),
    ("eta_noise_seed_delta", 31337),
    ("sd_model_checkpoint", ALT),
    ("sd_vae", VAE),
])
def test_override_equals_stored_setting(real_env, key, value):
    baseline = pixels(generate().images[0])
    overridden = generate(override_settings={key: value})
    assert pixels(overridden.images[0]) != baseline, f"{key} override must change the image"
    shared.opts.set(key, value)
    try:
        stored = generate()
    finally:
        shared.opts.unset(key)
    assert pixels(stored.images[0]) == pixels(overridden.images[0])
    assert stored.infotexts[0] == overridden.infotexts[0]
    assert pixels(generate().images[0]) == baseline
    assert shared.opts.stored() == {}


def test_checkpoint_override_costs_one_load(real_env):
    generate()
    before = sd_models.model_manager.loads
    for _ in range(3):
        r = generate(override_settings={"sd_model_checkpoint": ALT})
        assert r.sd_model_name == ALT
    assert sd_models.model_manager.loads == before + 1
    assert generate().sd_model_name == "serena-shapes-v1"


def test_bad_checkpoint_leaves_current_model(real_env):
    bad = real_env / "models" / "Stable-diffusion" / "broken.safetensors"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    sd_models.refresh_checkpoints()
    try:
        # The core's switch hook fails; under strict hooks (the suite) that surfaces as HookError.
        with pytest.raises((ValueError, plugins.HookError), match="broken"):
            generate(override_settings={"sd_model_checkpoint": "broken"})
        with pytest.raises(OverrideError):
            generate(override_settings={"sd_model_checkpoint": "no-such-model"})
        assert generate().sd_model_name == "serena-shapes-v1"
    finally:
        bad.unlink()
        sd_models.refresh_checkpoints()


def test_img2img_with_mask(real_env):
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    r = generate(init_images=[init], mask=mask, denoising_strength=0.6)
    assert r.images[0].size == (64, 64) and "Denoising strength: 0.6" in r.infotexts[0]
    again = generate(init_images=[init], mask=mask, denoising_strength=0.6)
    assert pixels(again.images[0]) == pixels(r.images[0])


def test_prompt_features_change_conditioning(real_env):
    plain = pixels(generate(prompt="a red circle").images[0])
    assert pixels(generate(prompt="a (red:1.5) circle").images[0]) != plain
    assert pixels(generate(prompt="a [red:green:3] circle").images[0]) != plain
    long_prompt = ", ".join(["a red circle on a blue background"] * 12)  # > 75 tokens: chunked, not truncated
    assert pixels(generate(prompt=long_prompt).images[0]) != pixels(generate(prompt=", ".join(
        ["a red circle on a blue background"] * 11)).images[0])


def test_cli_txt2img(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(ROOT, "webui.py"), "--data-dir", str(tmp_path), "--txt2img", "a red circle",
           "--steps", "4", "--seed", "3", "--override", "CLIP_stop_at_last_layers=2", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [path] = [line for line in done.stdout.splitlines() if line.endswith(".png")]
    assert os.path.exists(path) and path.startswith(str(out))
    parameters = Image.open(path).info["parameters"]
    assert "Clip skip: 2" in parameters
    assert "CFG scale: 4.0" in parameters and "Size: 64x64" in parameters  # the checkpoint's recommendations
    assert not (tmp_path / "config.json").exists()
    bad = subprocess.run(cmd[:-4] + ["--override", "CLIP_stop_at_last_layers=two"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "CLIP_stop_at_last_layers" in bad.stderr
