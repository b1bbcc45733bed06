"""Hires fix end to end through the API on the shipped 64 px checkpoints (real safetensors, real model loads).

The second pass's checkpoint is a nested override: a test plugin records the enter/exit hooks with their depth and
the checkpoint each sampling step sees, so the order at each depth and the return of the outer checkpoint are
observed, not assumed.
"""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from modules import jobs, shared
from modules.extensions_api import hookimpl

ALT = "serena-shapes-alt"
BASE = {"prompt": "a red circle", "negative_prompt": "blurry", "steps": 3, "seed": 7, "width": 64, "height": 64,
        "sampler_name": "Euler", "enable_hr": True, "hr_second_pass_steps": 2}
LATENT_MODES = ["Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                "Latent (nearest)", "Latent (nearest-exact)"]


@pytest.fixture
def client(real_env, plugin_host, api_client):
    yield api_client
    assert not jobs.queue_lock.locked()


def image_of(body) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(body["images"][0])))


def infotext_of(body) -> str:
    return json.loads(body["info"])["infotexts"][0]


def test_x2_gives_128_with_a1111_infotext_that_pastes_back(client):
    body = client.post("/sdapi/v1/txt2img", json=BASE).json()
    assert image_of(body).size == (128, 128)
    text = infotext_of(body)
    assert "Size: 64x64" in text and "Hires upscale: 2" in text and "Hires steps: 2" in text
    assert "Denoising strength: 0.75" in text and "Hires upscaler" not in text  # not given: A1111 writes none
    again = client.post("/sdapi/v1/txt2img", json={"infotext": text}).json()
    p = again["parameters"]
    assert (p["enable_hr"], p["hr_scale"], p["hr_second_pass_steps"], p["denoising_strength"]) == (True, 2, 2, 0.75)
    assert image_of(again).tobytes() == image_of(body).tobytes()  # exact within one machine


def test_resize_gives_that_size_and_its_infotext(client):
    body = client.post("/sdapi/v1/txt2img", json=dict(BASE, hr_resize_x=96, hr_resize_y=128,
                                                      hr_upscaler="Lanczos")).json()
    assert image_of(body).size == (96, 128)
    text = infotext_of(body)
    assert "Hires resize: 96x128" in text and "Hires upscale:" not in text and "Hires upscaler: Lanczos" in text
    pasted = client.post("/sdapi/v1/txt2img", json={"infotext": text, "send_images": False}).json()["parameters"]
    assert (pasted["hr_resize_x"], pasted["hr_resize_y"], pasted["hr_upscaler"]) == (96, 128, "Lanczos")
    # One side 0 keeps the first pass's aspect ratio.
    assert image_of(client.post("/sdapi/v1/txt2img", json=dict(BASE, hr_resize_x=96)).json()).size == (96, 96)


@pytest.mark.parametrize("upscaler", LATENT_MODES + ["Lanczos", "Nearest", "None"])
def test_every_latent_mode_and_image_upscaler_runs(client, upscaler):
    body = client.post("/sdapi/v1/txt2img", json=dict(BASE, hr_upscaler=upscaler, hr_scale=1.5)).json()
    assert image_of(body).size == (96, 96), body
    assert infotext_of(body).endswith(f"Hires upscaler: {upscaler}")


def test_latent_modes_are_listed(client):
    assert [m["name"] for m in client.get("/sdapi/v1/latent-upscale-modes").json()] == LATENT_MODES


class Recorder:
    def __init__(self, client=None):
        self.events = []
        self.client, self.options_during = client, []

    @hookimpl
    def on_opts_override_enter(self, overrides, previous, p):
        self.events.append(("enter", dict(overrides), shared.opts.sd_model_checkpoint))

    @hookimpl
    def on_opts_override_exit(self, overrides, previous, p, error, restored):
        self.events.append(("exit", dict(overrides), shared.opts.sd_model_checkpoint))

    @hookimpl
    def on_sampling_step(self, p, request, step, total_steps, sigma, latents, denoised):
        from modules import sd_models
        self.events.append(("step", request.width, sd_models.current_model().info.model_name))
        if self.client is not None and request.width == 128 and not self.options_during:
            # Another request, while the second pass runs under its nested override, sees the stored values. It
            # is made from a new thread (a fresh context, as a client's own connection has): TestClient would
            # otherwise carry this thread's context, overrides and all, into the handler.
            import threading

            reader = threading.Thread(target=lambda: self.options_during.append(
                self.client.get("/sdapi/v1/options").json()["sd_model_checkpoint"]))
            reader.start()
            reader.join()


def test_hires_checkpoint_is_a_nested_override_and_the_outer_one_returns(client, register):
    stored = client.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
    recorder = register(Recorder(client), "hires-recorder")
    body = client.post("/sdapi/v1/txt2img", json=dict(
        BASE, hr_checkpoint_name=ALT, override_settings={"CLIP_stop_at_last_layers": 1, "eta_noise_seed_delta": 3},
        hr_sampler_name="DDIM", hr_prompt="a blue square")).json()
    assert image_of(body).size == (128, 128)
    events = recorder.events
    enters = [e for e in events if e[0] == "enter"]
    exits = [e for e in events if e[0] == "exit"]
    # Outer (the request's overrides) enters first and exits last; the hires layer nests inside it.
    assert [set(e[1]) for e in enters] == [{"CLIP_stop_at_last_layers", "eta_noise_seed_delta"},
                                           {"sd_model_checkpoint"}]
    assert [set(e[1]) for e in exits] == [{"sd_model_checkpoint"}, {"CLIP_stop_at_last_layers",
                                                                    "eta_noise_seed_delta"}]
    assert ALT in enters[1][2]  # the effective checkpoint inside the nested layer
    assert exits[0][2] == enters[0][2]  # ...and the outer one is back when its exit hook runs
    steps = [e for e in events if e[0] == "step"]
    assert {e[2] for e in steps if e[1] == 64} == {"serena-shapes-v1"}
    assert {e[2] for e in steps if e[1] == 128} == {ALT}
    text = infotext_of(body)
    assert f"Hires checkpoint: {ALT} [" in text and "Hires sampler: DDIM" in text
    assert "Hires prompt: a blue square" in text and "Model: serena-shapes-v1" in text
    assert recorder.options_during == [stored]
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == stored
    plain = client.post("/sdapi/v1/txt2img", json=dict(BASE, enable_hr=False)).json()
    assert json.loads(plain["info"])["sd_model_name"] == "serena-shapes-v1"
    # The checkpoint pastes back with the rest.
    pasted = client.post("/sdapi/v1/txt2img", json={"infotext": text, "send_images": False}).json()["parameters"]
    assert ALT in pasted["hr_checkpoint_name"] and pasted["hr_sampler_name"] == "DDIM"


@pytest.mark.parametrize("field, value", [("hr_upscaler", "Latent (sideways)"), ("hr_sampler_name", "Eulr"),
                                          ("hr_checkpoint_name", "no-such-model"), ("hr_scheduler", "Squiggly"),
                                          ("hr_scale", 0), ("denoising_strength", 1.5)])
def test_bad_hires_fields_are_422_naming_the_field_before_queueing(client, field, value):
    r = client.post("/sdapi/v1/txt2img", json=dict(BASE, **{field: value}))
    assert r.status_code == 422, r.text
    assert field in r.json()["errors"]


def test_hires_fields_without_enable_hr_change_nothing(client):
    body = client.post("/sdapi/v1/txt2img", json=dict(BASE, enable_hr=False, hr_upscaler="Latent (sideways)")).json()
    assert image_of(body).size == (64, 64) and "Hires" not in infotext_of(body)


def test_cli_runs_hires_fix_and_refuses_a_bad_upscaler(tmp_path):
    import os
    import subprocess
    import sys

    from modules import paths

    cmd = [sys.executable, os.path.join(paths.script_path, "webui.py"), "--data-dir", str(tmp_path), "--txt2img",
           "a red circle", "--steps", "2", "--seed", "3", "--enable-hr", "--hr-second-pass-steps", "2",
           "--hr-upscaler", "Latent (bicubic)", "--out", str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [path] = [line for line in done.stdout.splitlines() if line.endswith(".png")]
    image = Image.open(path)
    assert image.size == (128, 128) and "Hires upscaler: Latent (bicubic)" in image.info["parameters"]
    bad = subprocess.run(cmd[:-2] + ["--hr-upscaler", "Latent (sideways)"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "hr_upscaler" in bad.stderr


def test_a_second_pass_above_the_size_limits_is_a_422_naming_the_field(client):
    r = client.post("/sdapi/v1/txt2img", json=dict(BASE, width=256, height=256, hr_scale=16))
    assert r.status_code == 422 and "api_max_width" in r.json()["errors"]["hr_scale"], r.text
    r = client.post("/sdapi/v1/txt2img", json=dict(BASE, width=64, height=8, hr_resize_y=4096))  # 32768 x 4096
    assert r.status_code == 422 and "api_max_width" in r.json()["errors"]["hr_resize_x"], r.text
    r = client.post("/sdapi/v1/txt2img", json=dict(BASE, width=8, height=64, hr_resize_x=1024))  # 1024 x 8192
    assert r.status_code == 422 and "api_max_height" in r.json()["errors"]["hr_resize_x"], r.text


def test_styles_apply_to_the_hires_prompt(client, real_env):
    (real_env / "styles.csv").write_text('name,prompt,negative_prompt\ngreen,"{prompt}, green",\n')
    body = client.post("/sdapi/v1/txt2img", json=dict(BASE, styles=["green"], hr_prompt="a square")).json()
    assert 'Hires prompt: "a square, green"' in infotext_of(body), infotext_of(body)


class BrokenUpscaler:
    """An extension whose upscaler raises, as a broken model file would."""

    @hookimpl
    def on_list_upscalers(self):
        from modules import upscalers

        def fail(image, width, height):
            raise RuntimeError("weights are corrupt")
        return [upscalers.Upscaler("Broken", fail, scale=2)]


def test_an_upscaler_that_fails_in_the_second_pass_is_a_422_naming_hr_upscaler(client, register):
    register(BrokenUpscaler(), "broken-upscaler")
    stored = shared.opts.stored()
    r = client.post("/sdapi/v1/txt2img", json=dict(BASE, hr_upscaler="Broken"))
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "UpscalerFailed" and "weights are corrupt" in body["errors"]["hr_upscaler"]
    assert shared.opts.stored() == stored and not jobs.queue_lock.locked()
    assert client.post("/sdapi/v1/txt2img", json=BASE).status_code == 200  # the next request is unaffected
