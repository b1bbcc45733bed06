"""The HTTP API in-process: every endpoint's status and shape, A1111's error bodies, overrides, options, auth.

No model runs here: ``sample_batch`` is replaced by one that paints small images (the real pipeline is exercised by
``test/smoke/test_api_server.py``).
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from modules import jobs, processing, shared, upscalers
from modules.api import errors as api_errors
from modules.api.api import Api, parse_credentials
from modules.hookspecs import hookimpl

SNAPSHOT = os.path.join(os.path.dirname(__file__), "openapi_snapshot.json")


class Gate:
    """Lets a test hold a fake generation inside ``sample_batch`` and look at the server meanwhile."""

    def __init__(self):
        self.inside = threading.Event()
        self.release = threading.Event()
        self.seen: list[dict] = []


@pytest.fixture
def gate():
    return Gate()


@pytest.fixture
def fake_sampling(monkeypatch, gate):
    """``sample_batch`` returns 8x8 images and records the effective clip skip; waits on ``gate`` if armed."""
    armed = {"on": False}

    def sample_batch(p, model, prompts, negative_prompts, seeds, subseeds):
        gate.seen.append({"clip_skip": shared.opts.CLIP_stop_at_last_layers, "model": model.info.name})
        if armed["on"]:
            gate.inside.set()
            assert gate.release.wait(10), "test never released the generation"
        return [Image.new("RGB", (p.width, p.height), (seed % 256, 40, 80)) for seed in seeds]

    monkeypatch.setattr(processing.StableDiffusionProcessing, "sample_batch", sample_batch)
    return armed


def make_client(auth=None):
    app = FastAPI()
    Api(app, auth=auth)
    return TestClient(app)


@pytest.fixture
def client(data_dir, fake_models, fake_sampling):
    with make_client() as c:
        yield c
    assert not jobs.queue_lock.locked() and not jobs.state.busy  # every request ended its job


def png_b64(size=(16, 16), color=(200, 10, 10), fmt="PNG", parameters=None) -> str:
    """An image as raw base64; ``parameters`` goes into a PNG text chunk."""
    extra = {}
    if parameters is not None:
        extra["pnginfo"] = PngImagePlugin.PngInfo()
        extra["pnginfo"].add_text("parameters", parameters)
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt, **extra)
    return base64.b64encode(buffer.getvalue()).decode()


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


TXT = {"prompt": "a cat", "width": 64, "height": 64, "steps": 2, "seed": 7}


# -- every endpoint answers ------------------------------------------------------------------------------------

GET_SHAPES = {
    "/sdapi/v1/progress": dict, "/sdapi/v1/options": dict, "/sdapi/v1/cmd-flags": dict, "/sdapi/v1/samplers": list,
    "/sdapi/v1/schedulers": list, "/sdapi/v1/upscalers": list, "/sdapi/v1/latent-upscale-modes": list,
    "/sdapi/v1/sd-models": list, "/sdapi/v1/sd-vae": list, "/sdapi/v1/hypernetworks": list,
    "/sdapi/v1/face-restorers": list, "/sdapi/v1/realesrgan-models": list, "/sdapi/v1/prompt-styles": list,
    "/sdapi/v1/embeddings": dict, "/sdapi/v1/memory": dict, "/sdapi/v1/scripts": dict,
    "/sdapi/v1/script-info": list, "/sdapi/v1/extensions": list, "/sdapi/v1/loras": list,
    "/serena/v1/hooks": dict, "/serena/v1/overrides/active": dict,
}


@pytest.mark.parametrize("path", sorted(GET_SHAPES))
def test_every_get_endpoint_answers(client, path):
    r = client.get(path)
    assert r.status_code == 200, r.text
    assert isinstance(r.json(), GET_SHAPES[path])


def test_list_shapes(client):
    assert client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    assert client.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}
    models = client.get("/sdapi/v1/sd-models").json()
    assert [m["model_name"] for m in models] == ["alpha", "beta"]
    assert set(models[0]) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert models[0]["title"] == f"alpha.safetensors [{models[0]['hash']}]" and len(models[0]["sha256"]) == 64
    assert client.get("/sdapi/v1/sd-vae").json()[0]["model_name"] == "sharp.safetensors"
    samplers = client.get("/sdapi/v1/samplers").json()
    assert {"Euler", "Euler a"} <= {s["name"] for s in samplers} and set(samplers[0]) == {"name", "aliases", "options"}
    assert {"name", "label", "aliases", "default_rho", "need_inner_model"} == set(
        client.get("/sdapi/v1/schedulers").json()[0])
    assert [u["name"] for u in client.get("/sdapi/v1/upscalers").json()][:3] == ["None", "Lanczos", "Nearest"]
    assert set(client.get("/sdapi/v1/memory").json()) == {"ram", "cuda"}
    assert "on_opts_override_enter" in client.get("/serena/v1/hooks").json()


@pytest.mark.parametrize("path", ["/sdapi/v1/refresh-checkpoints", "/sdapi/v1/refresh-vae",
                                  "/sdapi/v1/refresh-embeddings", "/sdapi/v1/interrupt",
                                  "/sdapi/v1/skip", "/sdapi/v1/unload-checkpoint", "/sdapi/v1/reload-checkpoint"])
def test_control_endpoints_answer(client, path):
    r = client.post(path)
    assert r.status_code == 200, r.text
    assert r.json() in (None, {})


def test_reload_and_unload_checkpoint(client, fake_models):
    client.post("/sdapi/v1/reload-checkpoint")
    assert fake_models.loaded_names == ["alpha.safetensors"] and fake_models.cached()
    client.post("/sdapi/v1/unload-checkpoint")
    assert fake_models.cached() == [] and fake_models.current is None


def test_cmd_flags_hide_credentials(data_dir, monkeypatch):
    monkeypatch.setattr(shared.cmd_opts, "api_auth", "u:secret")
    with make_client(auth="u:secret") as c:
        flags = c.get("/sdapi/v1/cmd-flags", auth=("u", "secret")).json()
    assert flags["api_auth"] == "<hidden>" and "secret" not in json.dumps(flags)


# -- txt2img ---------------------------------------------------------------------------------------------------


def test_txt2img_shape(client):
    r = client.post("/sdapi/v1/txt2img", json=dict(TXT, batch_size=2))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"images", "parameters", "info", "warnings"}
    assert len(body["images"]) == 2 and not body["images"][0].startswith("data:")
    image = decode(body["images"][0])
    assert image.format == "PNG" and image.size == (64, 64)
    assert image.info["parameters"].startswith("a cat\nSteps: 2")
    info = json.loads(body["info"])  # a JSON *string*, as webuiapi parses it
    assert info["all_seeds"] == [7, 8] and info["infotexts"][0] == image.info["parameters"]
    assert body["parameters"]["prompt"] == "a cat" and body["parameters"]["sampler_index"] == "Euler"
    assert body["warnings"] == [] and info["warnings"] == []


def test_send_images_false(client):
    body = client.post("/sdapi/v1/txt2img", json=dict(TXT, send_images=False)).json()
    assert body["images"] == [] and json.loads(body["info"])["seed"] == 7


def test_save_images(client, data_dir):
    client.post("/sdapi/v1/txt2img", json=TXT)
    outputs = data_dir / "outputs"
    assert not outputs.exists()  # save_images defaults to false, as in A1111
    client.post("/sdapi/v1/txt2img", json=dict(TXT, save_images=True))
    saved = list(outputs.rglob("*.png"))
    assert len(saved) == 1 and "Steps: 2" in Image.open(saved[0]).info["parameters"]


def test_samples_format_jpg(client):
    client.post("/sdapi/v1/options", json={"samples_format": "jpg"})
    image_b64 = client.post("/sdapi/v1/txt2img", json=TXT).json()["images"][0]
    assert decode(image_b64).format == "JPEG"
    info = client.post("/sdapi/v1/png-info", json={"image": image_b64}).json()
    assert info["info"].startswith("a cat\nSteps: 2") and info["parameters"]["Seed"] == "7"


def test_override_applies_to_that_request_only(client):
    body = client.post("/sdapi/v1/txt2img", json=dict(TXT, override_settings={"CLIP_stop_at_last_layers": 2})).json()
    assert "Clip skip: 2" in json.loads(body["info"])["infotexts"][0]
    assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1
    assert shared.opts.stored() == {}


def test_checkpoint_override_by_alias(client, gate):
    client.post("/sdapi/v1/txt2img", json=dict(TXT, override_settings={"sd_model_checkpoint": "beta"}))
    client.post("/sdapi/v1/txt2img", json=TXT)
    assert [s["model"] for s in gate.seen] == ["beta.safetensors", "alpha.safetensors"]


def test_bad_overrides_are_422_listing_every_key(client, gate, data_dir, override_counter):
    counter = override_counter
    r = client.post("/sdapi/v1/txt2img", json=dict(TXT, override_settings={
        "CLIP_stop_at_last_layers": "two", "no_such_option": 1, "outdir_samples": "/tmp/x",
        "sd_model_checkpoint": "missing", "eta_noise_seed_delta": 3}))
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "OverrideError" and body["body"] == ""
    assert set(body["errors"]) == {"CLIP_stop_at_last_layers", "no_such_option", "outdir_samples",
                                   "sd_model_checkpoint"}
    assert "restricted" in body["errors"]["outdir_samples"] and "missing" in body["errors"]["sd_model_checkpoint"]
    assert (counter.enter, counter.exit) == (0, 0) and gate.seen == []
    assert shared.opts.stored() == {} and not (data_dir / "config.json").exists()


@pytest.mark.parametrize("payload,field", [
    ({"sampler_name": "Nope"}, "sampler_name"), ({"sampler_index": "Nope"}, "sampler_index"),
    ({"scheduler": "Nope"}, "scheduler"), ({"script_name": "X/Y/Z plot"}, "script_name"),
    ({"alwayson_scripts": {"ADetailer": {"args": []}}}, "alwayson_scripts.ADetailer"),
    ({"width": 4096}, "width"), ({"height": 4096}, "height"), ({"steps": 151}, "steps"),
    ({"batch_size": 4, "n_iter": 5}, "batch_size"), ({"width": 60}, "width"),
])
def test_bad_fields_are_4xx_naming_the_field(client, gate, payload, field):
    r = client.post("/sdapi/v1/txt2img", json=dict(TXT, **payload))
    assert r.status_code == 422, r.text
    assert field in r.json()["errors"] and gate.seen == []


def test_old_combined_sampler_names(client):
    info = json.loads(client.post("/sdapi/v1/txt2img", json=dict(TXT, sampler_name="DPM++ 2M Karras")).json()["info"])
    assert (info["sampler_name"], info["scheduler"]) == ("DPM++ 2M", "Karras")


def test_limits_are_options_a_client_cannot_lift(client):
    r = client.post("/sdapi/v1/options", json={"api_max_width": 8192})
    assert r.status_code == 422 and "restricted" in r.json()["errors"]["api_max_width"]
    r = client.post("/sdapi/v1/txt2img", json=dict(TXT, width=4096, override_settings={"api_max_width": 8192}))
    assert r.status_code == 422
    shared.opts.set("api_max_width", 4096)  # the server owner can
    assert client.post("/sdapi/v1/txt2img", json=dict(TXT, width=4096, steps=1)).status_code == 200


def test_request_validation_stays_fastapis(client):
    r = client.post("/sdapi/v1/txt2img", json={"steps": "many"})
    assert r.status_code == 422 and isinstance(r.json()["detail"], list)
    assert r.json()["detail"][0]["loc"] == ["body", "steps"]


def test_internal_error_is_500_in_a1111_shape(client, monkeypatch, caplog):
    def boom(*args):
        raise RuntimeError("the pipeline broke")

    monkeypatch.setattr(processing.StableDiffusionProcessing, "sample_batch", boom)
    r = client.post("/sdapi/v1/txt2img", json=dict(TXT, override_settings={"CLIP_stop_at_last_layers": 3}))
    assert r.status_code == 500
    assert r.json() == {"error": "RuntimeError", "detail": "", "body": "", "errors": "the pipeline broke"}
    assert "Traceback" in caplog.text or any(rec.exc_info for rec in caplog.records)
    assert not jobs.state.busy and not jobs.queue_lock.locked()
    assert shared.opts.CLIP_stop_at_last_layers == 1


def test_legacy_fields_accepted_with_warnings(client):
    # What webuiapi 0.9.17 sends by default: accepted, no warnings.
    webuiapi_defaults = dict(
        enable_hr=False, denoising_strength=0.7, firstphase_width=0, firstphase_height=0, hr_scale=2,
        hr_upscaler="Latent", hr_second_pass_steps=0, hr_resize_x=0, hr_resize_y=0, hr_checkpoint_name=None,
        hr_sampler_name=None, hr_scheduler=None, hr_prompt="", hr_negative_prompt="", styles=[], subseed=-1,
        subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0, sampler_name="Euler a",
        scheduler="automatic", batch_size=1, n_iter=1, cfg_scale=7.0, restore_faces=False, tiling=False,
        do_not_save_samples=False, do_not_save_grid=False, negative_prompt="", eta=1.0, s_churn=0, s_tmax=0, s_tmin=0,
        s_noise=1, override_settings={}, override_settings_restore_afterwards=True, sampler_index="Euler a",
        script_name=None, script_args=[], send_images=True, save_images=False, alwayson_scripts={})
    body = client.post("/sdapi/v1/txt2img", json=dict(webuiapi_defaults, **TXT)).json()
    assert body["warnings"] == [] and len(body["images"]) == 1
    # Settings Serena does not act on: still 200, and said so.
    body = client.post("/sdapi/v1/txt2img", json=dict(TXT, restore_faces=True, enable_hr=True, s_churn=0.5,
                                                        sampler="Euler")).json()
    warned = " ".join(body["warnings"])
    for field in ("restore_faces", "s_churn", "unknown field `sampler`"):
        assert field in warned
    assert "enable_hr" not in warned  # Hires fix is implemented (test/smoke/test_hires.py)
    assert json.loads(body["info"])["warnings"] == body["warnings"]


def test_paths_never_come_from_requests(client, data_dir, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    body = client.post("/sdapi/v1/txt2img", json=dict(TXT, save_images=True, outpath_samples=str(elsewhere),
                                                       is_api=False)).json()
    assert "unknown field `outpath_samples` was ignored" in body["warnings"]
    assert "outpath_samples" not in body["parameters"]
    assert list(elsewhere.iterdir()) == [] and len(list((data_dir / "outputs").rglob("*.png"))) == 1


def test_infotext_fills_unset_fields_and_overrides(client, gate):
    text = "a dog\nNegative prompt: ugly\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 42, Size: 64x64, Clip skip: 2"
    body = client.post("/sdapi/v1/txt2img", json={"infotext": text, "seed": 9}).json()
    info = json.loads(body["info"])
    assert (info["prompt"], info["negative_prompt"], info["steps"], info["seed"]) == ("a dog", "ugly", 3, 9)
    assert gate.seen[0]["clip_skip"] == 2 and body["parameters"]["override_settings"] == {
        "CLIP_stop_at_last_layers": 2}
    r = client.post("/sdapi/v1/txt2img", json={"infotext": "x\nSteps: 3, Seed: 1, Size: 64x64, Clip skip: lots"})
    assert r.status_code == 422 and "infotext" in r.json()["errors"]



def test_infotext_setting_this_server_lacks_is_a_warning(client, gate):
    """A1111 infotexts name VAEs other servers lack: skipped with a warning, never a 422."""
    text = "a dog\nSteps: 3, Seed: 1, Size: 64x64, Clip skip: 2, VAE: vae-ft-mse-840000-ema-pruned.safetensors"
    r = client.post("/sdapi/v1/txt2img", json={"infotext": text})
    assert r.status_code == 200
    body = r.json()
    assert any("sd_vae" in w and "not applied" in w for w in body["warnings"])
    assert body["parameters"]["override_settings"] == {"CLIP_stop_at_last_layers": 2}
    r = client.post("/sdapi/v1/txt2img", json={"infotext": text, "override_settings": {"sd_vae": "missing"}})
    assert r.status_code == 422 and "sd_vae" in r.json()["errors"]


# -- img2img and images in requests ----------------------------------------------------------------------------


def test_img2img_accepts_data_urls_and_formats(client):
    for fmt, prefix in (("PNG", "data:image/png;base64,"), ("JPEG", ""), ("WEBP", "data:image/webp;base64,")):
        r = client.post("/sdapi/v1/img2img", json=dict(TXT, init_images=[prefix + png_b64(fmt=fmt)]))
        assert r.status_code == 200, (fmt, r.text)
    body = r.json()
    assert body["parameters"]["init_images"] is None and body["parameters"]["mask"] is None
    assert "include_init_images" not in body["parameters"]
    assert json.loads(body["info"])["denoising_strength"] == 0.75


def test_img2img_include_init_images_and_mask(client):
    init, mask = png_b64(), png_b64(color=(255, 255, 255))
    body = client.post("/sdapi/v1/img2img", json=dict(TXT, init_images=[init], mask=mask,
                                                       include_init_images=True)).json()
    assert body["parameters"]["init_images"] == [init] and body["parameters"]["mask"] == mask


@pytest.mark.parametrize("payload,field", [
    ({"init_images": ["not base64 at all!"]}, "init_images[0]"),
    ({"init_images": [png_b64(), base64.b64encode(b"plain text, not an image").decode()]}, "init_images[1]"),
    ({"init_images": [png_b64(fmt="GIF")]}, "init_images[0]"),
    ({"init_images": ["https://example.com/cat.png"]}, "init_images[0]"),
    ({"init_images": []}, "init_images"),
    ({"init_images": [png_b64()], "mask": "%%%"}, "mask"),
])
def test_bad_images_are_422_naming_the_field(client, payload, field):
    r = client.post("/sdapi/v1/img2img", json=dict(TXT, **payload))
    assert r.status_code == 422, r.text
    assert list(r.json()["errors"]) == [field]


def test_png_info(client):
    text = "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512"
    body = client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + png_b64(parameters=text)}).json()
    assert body["info"] == text and body["parameters"]["Steps"] == "20" and body["parameters"]["Prompt"] == "a cat"
    body = client.post("/sdapi/v1/png-info", json={"image": png_b64()}).json()
    assert body == {"info": "", "items": {}, "parameters": {}}
    assert client.post("/sdapi/v1/png-info", json={"image": "@@"}).json()["errors"] == {"image": "not valid base64"}


# -- extras ----------------------------------------------------------------------------------------------------


def test_extras_single_image(client):
    source = png_b64(size=(10, 6), parameters="kept")
    for upscaler in ("Lanczos", "Nearest"):
        body = client.post("/sdapi/v1/extra-single-image",
                           json={"image": source, "upscaler_1": upscaler, "upscaling_resize": 3}).json()
        result = decode(body["image"])
        assert result.size == (30, 18) and result.info["parameters"] == "kept" and upscaler in body["html_info"]
    body = client.post("/sdapi/v1/extra-single-image", json={"image": source}).json()
    assert decode(body["image"]).size == (10, 6)  # upscaler_1 "None" leaves the image as it is
    body = client.post("/sdapi/v1/extra-single-image", json={
        "image": source, "upscaler_1": "Lanczos", "resize_mode": 1, "upscaling_resize_w": 20,
        "upscaling_resize_h": 20, "upscaling_crop": True}).json()
    assert decode(body["image"]).size == (20, 20)


class ListUpscalers:
    """An extension listing upscalers through ``on_list_upscalers``."""

    def __init__(self, *items):
        self.items = list(items)

    @hookimpl
    def on_list_upscalers(self):
        return self.items


def test_extras_batch_with_an_upscaler_an_extension_lists(client, register):
    calls = []

    def doubler(image, width, height):
        calls.append((width, height))
        return image.resize((width, height))

    register(ListUpscalers(upscalers.Upscaler("Test doubler", doubler, scale=2, model_path="/m/d.pth")), "doubler")
    listed = {u["name"]: u for u in client.get("/sdapi/v1/upscalers").json()}
    assert listed["Test doubler"] == {"name": "Test doubler", "model_name": None, "model_path": "/m/d.pth",
                                      "model_url": None, "scale": 2}
    body = client.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": png_b64(size=(4, 4)), "name": "a.png"},
                      {"data": "data:image/png;base64," + png_b64(size=(8, 4)), "name": "b.png"}],
        "upscaler_1": "test DOUBLER", "upscaling_resize": 2, "upscaler_2": "Nearest",
        "extras_upscaler_2_visibility": 0.5}).json()
    assert [decode(i).size for i in body["images"]] == [(8, 8), (16, 8)] and calls == [(8, 8), (16, 8)]
    assert "Postprocess upscaler 2: Nearest, visibility 0.5" in body["html_info"]


def solid(value):
    return lambda image, width, height: Image.new("RGB", (width, height), (value, value, value))


@pytest.mark.parametrize("visibility", [0, 0.25, 0.5, 1])
def test_extras_upscaler_2_blends_by_its_visibility(client, register, visibility):
    register(ListUpscalers(upscalers.Upscaler("Black", solid(0)), upscalers.Upscaler("White", solid(200))), "solid")
    body = client.post("/sdapi/v1/extra-single-image", json={
        "image": png_b64(size=(3, 2)), "upscaler_1": "Black", "upscaler_2": "White", "upscaling_resize": 2,
        "extras_upscaler_2_visibility": visibility}).json()
    result = decode(body["image"])
    assert result.size == (6, 4) and result.getpixel((5, 3)) == (round(200 * visibility),) * 3
    assert ("Postprocess upscaler 2: White" in body["html_info"]) == (visibility > 0)


@pytest.mark.parametrize("field", ["upscaler_1", "upscaler_2"])
def test_a_failing_upscaler_is_a_422_naming_its_field_and_itself(client, register, field):
    def broken(image, width, height):
        raise OSError("model file truncated")

    register(ListUpscalers(upscalers.Upscaler("Broken", broken)), "broken")
    chosen = {"upscaler_1": "Lanczos", "upscaler_2": "Lanczos", field: "Broken"}
    r = client.post("/sdapi/v1/extra-single-image", json=dict(
        image=png_b64(), extras_upscaler_2_visibility=0.5, **chosen))
    assert r.status_code == 422, r.text
    assert r.json()["errors"] == {field: "upscaler 'Broken' failed: OSError: model file truncated"}


def test_an_extension_cannot_replace_a_builtin_upscaler(client, register):
    register(ListUpscalers(upscalers.Upscaler("lanczos", solid(0))), "impostor")
    names = [u["name"] for u in client.get("/sdapi/v1/upscalers").json()]
    assert names == ["None", "Lanczos", "Nearest"]
    body = client.post("/sdapi/v1/extra-single-image", json={
        "image": png_b64(color=(200, 10, 10)), "upscaler_1": "lanczos"}).json()
    assert decode(body["image"]).getpixel((0, 0)) == (200, 10, 10)
    assert "extension 'impostor' listed an upscaler that was skipped: 'lanczos' is already listed" in body["html_info"]


@pytest.mark.parametrize("payload,field", [
    ({"upscaler_1": "ESRGAN_4x"}, "upscaler_1"), ({"upscaler_2": "nope"}, "upscaler_2"),
    ({"upscaler_1": "Lanczos", "upscaling_resize": 8, "image": png_b64(size=(1100, 4))}, "upscaling_resize"),
    ({"image": "!!"}, "image"),
])
def test_extras_errors_name_the_field(client, payload, field):
    r = client.post("/sdapi/v1/extra-single-image", json=dict({"image": png_b64()}, **payload))
    assert r.status_code == 422 and field in r.json()["errors"], r.text


def test_extras_bad_batch_item_names_its_index(client):
    r = client.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": png_b64(), "name": "a"}, {"data": "??", "name": "b"}]})
    assert r.status_code == 422 and list(r.json()["errors"]) == ["imageList[1].data"]


# -- options ---------------------------------------------------------------------------------------------------


def test_options_round_trip(client, data_dir, monkeypatch):
    replaced = []
    real_replace = os.replace

    def recording_replace(src, dst):
        if os.path.basename(dst) == "config.json":
            replaced.append((os.path.dirname(src), os.path.basename(src).endswith(".tmp")))
        return real_replace(src, dst)

    monkeypatch.setattr("modules.settings_file.os.replace", recording_replace)
    before = client.get("/sdapi/v1/options").json()
    assert type(before["CLIP_stop_at_last_layers"]) is int and type(before["eta_noise_seed_delta"]) is int
    assert before["sd_model_checkpoint"].startswith("alpha.safetensors [")  # what generations use while unset
    r = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 3.0, "eta_noise_seed_delta": 5,
                                               "sd_model_checkpoint": "beta"})
    assert r.status_code == 200 and r.json() is None
    after = client.get("/sdapi/v1/options").json()
    assert after["CLIP_stop_at_last_layers"] == 3 and type(after["CLIP_stop_at_last_layers"]) is int
    assert after["sd_model_checkpoint"].startswith("beta.safetensors [")
    saved = json.loads((data_dir / "config.json").read_text())
    assert saved == {"CLIP_stop_at_last_layers": 3, "eta_noise_seed_delta": 5,
                     "sd_model_checkpoint": after["sd_model_checkpoint"]}
    assert replaced == [(str(data_dir), True)]  # a temp file in the same folder, renamed over config.json
    # Posting back everything GET returned changes nothing, restricted keys included.
    assert client.post("/sdapi/v1/options", json=after).status_code == 200
    assert client.get("/sdapi/v1/options").json() == after and len(replaced) == 1


def test_options_all_or_nothing(client, data_dir):
    r = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2, "randn_source": "TPU",
                                               "no_such_option": 1, "outdir_samples": "/etc",
                                               "sd_model_checkpoint": "missing"})
    assert r.status_code == 422
    assert r.json()["error"] == "OptionsRejected"
    assert set(r.json()["errors"]) == {"randn_source", "no_such_option", "outdir_samples", "sd_model_checkpoint"}
    assert shared.opts.stored() == {} and not (data_dir / "config.json").exists()


def test_options_frozen(client, monkeypatch):
    monkeypatch.setattr(shared.opts, "frozen", True)
    r = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2})
    assert r.status_code == 403 and "freeze-settings" in r.json()["detail"]
    assert client.get("/sdapi/v1/options").status_code == 200


def test_options_get_does_not_see_a_running_generation(client, fake_sampling, gate):
    fake_sampling["on"] = True
    result = {}
    worker = threading.Thread(target=lambda: result.update(r=client.post(
        "/sdapi/v1/txt2img", json=dict(TXT, override_settings={"CLIP_stop_at_last_layers": 4}))))
    worker.start()
    try:
        assert gate.inside.wait(10)
        assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1
        active = client.get("/serena/v1/overrides/active").json()
        assert active["job"] == "txt2img"
        assert active["overrides"][0]["values"] == {"CLIP_stop_at_last_layers": 4}
        progress = client.get("/sdapi/v1/progress").json()
        assert progress["state"]["job"] == "txt2img" and progress["state"]["job_count"] == 1
    finally:
        gate.release.set()
        worker.join(10)
    assert result["r"].status_code == 200 and gate.seen[0]["clip_skip"] == 4
    assert client.get("/serena/v1/overrides/active").json() == {"job": None, "overrides": []}


def test_interrupt_during_generation(client, fake_sampling, gate):
    fake_sampling["on"] = True
    result = {}
    worker = threading.Thread(target=lambda: result.update(r=client.post(
        "/sdapi/v1/txt2img", json=dict(TXT, n_iter=3, override_settings={"CLIP_stop_at_last_layers": 2}))))
    worker.start()
    try:
        assert gate.inside.wait(10)
        assert client.post("/sdapi/v1/interrupt").json() == {}
    finally:
        gate.release.set()
        worker.join(10)
    body = result["r"].json()
    assert result["r"].status_code == 200 and len(body["images"]) == 1  # stopped before the next batch
    assert shared.opts.CLIP_stop_at_last_layers == 1
    fake_sampling["on"] = False
    assert len(client.post("/sdapi/v1/txt2img", json=dict(TXT, n_iter=2)).json()["images"]) == 2


# -- Serena's endpoints ----------------------------------------------------------------------------------------


def test_validate_overrides_has_no_side_effects(client, data_dir, override_counter):
    counter = override_counter
    body = client.post("/serena/v1/overrides/validate", json={"CLIP_stop_at_last_layers": 2.0,
                                                              "sd_model_checkpoint": "beta"}).json()
    assert body["valid"] is True and body["errors"] == {}
    assert body["normalized"]["CLIP_stop_at_last_layers"] == 2
    assert body["normalized"]["sd_model_checkpoint"].startswith("beta.safetensors [")
    body = client.post("/serena/v1/overrides/validate", json={"CLIP_stop_at_last_layers": 0, "zzz": 1,
                                                              "outdir_samples": "/"}).json()
    assert body["valid"] is False and set(body["errors"]) == {"CLIP_stop_at_last_layers", "zzz", "outdir_samples"}
    assert counter.enter == 0 and shared.opts.stored() == {} and not (data_dir / "config.json").exists()


# -- auth ------------------------------------------------------------------------------------------------------


def test_auth(data_dir, fake_models, fake_sampling):
    with make_client(auth="alice:pa:ss:word, bob:x") as c:
        for path in ("/sdapi/v1/options", "/serena/v1/hooks", "/sdapi/v1/progress"):
            r = c.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Basic"
            assert r.json()["error"] == "HTTPException" and r.json()["detail"] == "Incorrect username or password"
        assert c.get("/sdapi/v1/options", auth=("alice", "pa:ss")).status_code == 401
        assert c.get("/sdapi/v1/options", auth=("alice", "pa:ss:word")).status_code == 200
        assert c.get("/serena/v1/hooks", auth=("bob", "x")).status_code == 200
        assert c.post("/sdapi/v1/txt2img", json=TXT).status_code == 401
        assert c.post("/sdapi/v1/txt2img", json=TXT, auth=("bob", "x")).status_code == 200


@pytest.mark.parametrize("auth,expected", [
    ("u:p", {"u": "p"}), ("u:p:q,v:", {"u": "p:q", "v": ""}), (None, {}), ("", {}),
])
def test_parse_credentials(auth, expected):
    assert parse_credentials(auth) == expected


@pytest.mark.parametrize("auth", ["nocolon", ":nouser"])
def test_parse_credentials_refuses_malformed(auth):
    with pytest.raises(ValueError, match="--api-auth"):
        parse_credentials(auth)


# -- OpenAPI snapshot ------------------------------------------------------------------------------------------


def _schema_summary(app) -> dict:
    spec = app.openapi()
    paths = {}
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            response = operation["responses"].get("200", {}).get("content", {}).get("application/json", {})
            paths[f"{method.upper()} {path}"] = {"request": body, "response": response.get("schema")}
    return {"paths": paths, "schemas": spec.get("components", {}).get("schemas", {})}


def test_openapi_matches_snapshot():
    """The API's paths and schemas are what clients were promised.

    A change here is a change for every client. When it is on purpose, regenerate the snapshot and review its
    diff with the change: ``SERENA_UPDATE_SNAPSHOTS=1 venv/bin/python -m pytest test/quality/test_api.py -k openapi``.
    """
    app = FastAPI()
    Api(app)
    current = _schema_summary(app)
    if os.environ.get("SERENA_UPDATE_SNAPSHOTS") == "1":
        with open(SNAPSHOT, "w", encoding="utf8") as f:
            json.dump(current, f, indent=1, sort_keys=True)
            f.write("\n")
    if not os.path.exists(SNAPSHOT):
        pytest.fail(f"{SNAPSHOT} is missing; create it with SERENA_UPDATE_SNAPSHOTS=1 (see this test's docstring)")
    with open(SNAPSHOT, encoding="utf8") as f:
        expected = json.load(f)
    changed = sorted(set(current["paths"]) ^ set(expected["paths"]))
    changed += sorted(k for k in set(current["paths"]) & set(expected["paths"])
                      if current["paths"][k] != expected["paths"][k])
    changed += sorted(k for k in set(current["schemas"]) | set(expected["schemas"])
                      if current["schemas"].get(k) != expected["schemas"].get(k))
    assert not changed, (
        f"the API schema differs from {SNAPSHOT} at: {', '.join(changed)}. If this change is on purpose, run "
        "SERENA_UPDATE_SNAPSHOTS=1 venv/bin/python -m pytest test/quality/test_api.py -k openapi and commit the "
        "snapshot with it.")


def test_error_response_shapes():
    from modules.option_info import OptionError

    response = api_errors.error_response(OptionError("sd_vae", "no VAE named 'x'"))
    assert response.status_code == 422 and json.loads(response.body)["errors"] == {"sd_vae": "no VAE named 'x'"}


# -- the size of a request that gives none ---------------------------------------------------------------------


def declaring_checkpoint(data_dir, monkeypatch, name: str, native_size: int) -> str:
    """A checkpoint that declares its native size, as the embedded models do. The stand-in model cache reads no
    file, so it reports the size as the real cache's inspection would (``ModelFacts.native_size``)."""
    from modules import sd_models
    from modules.model_facts import ModelFacts

    (data_dir / "models" / "Stable-diffusion" / f"{name}.safetensors").write_bytes(b"declaring weights")
    facts = sd_models.model_manager.facts
    declared = ModelFacts(text_encoder_layers=12, latent_channels=4, native_size=native_size)
    monkeypatch.setattr(sd_models.model_manager, "facts",
                        lambda info: declared if info.model_name == name else facts(info))
    return name


def test_omitted_size_is_the_checkpoints_native_size(client, data_dir, monkeypatch):
    from modules import sd_models
    # alpha (the default here) declares nothing: a standard SD 1.x file, A1111's 512.
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1})
    assert r.status_code == 200, r.text
    assert (r.json()["parameters"]["width"], r.json()["parameters"]["height"]) == (512, 512)
    assert decode(r.json()["images"][0]).size == (512, 512)
    # A checkpoint that declares its size, chosen by override for this request only: its size, not the stored one's.
    declaring_checkpoint(data_dir, monkeypatch, "gamma", 24)
    sd_models.refresh_checkpoints()
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1,
                                               "override_settings": {"sd_model_checkpoint": "gamma"}})
    assert r.status_code == 200, r.text
    assert decode(r.json()["images"][0]).size == (24, 24) and r.json()["parameters"]["width"] == 24
    assert json.loads(r.json()["info"])["sd_model_name"] == "gamma"
    # An explicit size is always honoured, one side given: the other is the native size.
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 40, "height": None,
                                               "override_settings": {"sd_model_checkpoint": "gamma"}})
    assert decode(r.json()["images"][0]).size == (40, 24)
    img = client.post("/sdapi/v1/img2img", json={"prompt": "x", "steps": 1, "init_images": [png_b64()],
                                                 "override_settings": {"sd_model_checkpoint": "gamma"}})
    assert img.status_code == 200, img.text
    assert decode(img.json()["images"][0]).size == (24, 24)
    # The stored checkpoint decides when no override does.
    shared.opts.set("sd_model_checkpoint", "gamma")
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 16, "height": 8})
    assert decode(r.json()["images"][0]).size == (16, 8)
    assert decode(client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1}).json()["images"][0]).size == (24, 24)


def test_omitted_size_with_an_unknown_checkpoint_override_is_422(client, gate):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "override_settings": {"sd_model_checkpoint": "nope"}})
    assert r.status_code == 422 and "sd_model_checkpoint" in r.json()["errors"]
    assert gate.seen == []  # nothing ran


def test_openapi_says_an_omitted_size_is_null():
    app = FastAPI()
    Api(app)
    schema = app.openapi()["components"]["schemas"]["StableDiffusionTxt2ImgProcessingAPI"]["properties"]["width"]
    assert schema.get("default") is None and {"type": "null"} in schema["anyOf"]
    assert "native size" in schema["description"]
