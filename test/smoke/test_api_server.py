"""A real Serena server (uvicorn, 127.0.0.1) with the embedded model: generation, options, interrupt, clients.

Images are 64x64 with 4 steps so the whole module runs in well under a minute on two CPU cores.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import httpx
import pytest
from PIL import Image

SMALL = {"width": 64, "height": 64, "steps": 4, "sampler_name": "Euler a"}


@pytest.fixture(scope="module")
def server(serena_server, embedded_model, tmp_path_factory):
    return serena_server(tmp_path_factory.mktemp("serena-data"))


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def wait_until(predicate, timeout=60, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def test_txt2img_round_trip(http):
    payload = dict(SMALL, prompt="a red square", seed=3, batch_size=2)
    r = http.post("/sdapi/v1/txt2img", json=payload)
    assert r.status_code == 200, r.text
    body = r.json()
    images = [decode(b) for b in body["images"]]
    assert [i.size for i in images] == [(64, 64), (64, 64)] and images[0].format == "PNG"
    info = json.loads(body["info"])
    assert info["all_seeds"] == [3, 4] and info["sd_model_name"] == "serena-shapes-v1"
    assert images[0].info["parameters"] == info["infotexts"][0] and "Seed: 3" in info["infotexts"][0]
    again = http.post("/sdapi/v1/txt2img", json=payload).json()
    assert again["images"] == body["images"]  # same request, same seeds: the same images


def test_img2img_round_trip(http):
    first = http.post("/sdapi/v1/txt2img", json=dict(SMALL, prompt="a tree", seed=1)).json()["images"][0]
    r = http.post("/sdapi/v1/img2img", json=dict(SMALL, prompt="a tree at night", seed=2, denoising_strength=0.5,
                                                 init_images=["data:image/png;base64," + first]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert decode(body["images"][0]).size == (64, 64) and body["parameters"]["init_images"] is None
    assert "Denoising strength: 0.5" in json.loads(body["info"])["infotexts"][0]


def test_options_round_trip(http, server):
    before = http.get("/sdapi/v1/options").json()
    assert before["CLIP_stop_at_last_layers"] == 1 and before["sd_model_checkpoint"].startswith("serena-shapes-v1")
    assert http.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}).json() is None
    after = http.get("/sdapi/v1/options").json()
    assert after["CLIP_stop_at_last_layers"] == 2 and type(after["CLIP_stop_at_last_layers"]) is int
    config = server.log_path.parent / "config.json"
    assert json.loads(config.read_text())["CLIP_stop_at_last_layers"] == 2
    r = http.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": "x", "nope": 1})
    assert r.status_code == 422 and set(r.json()["errors"]) == {"CLIP_stop_at_last_layers", "nope"}
    assert http.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1}).status_code == 200
    assert http.get("/sdapi/v1/options").json() == before


def test_progress_idle(http):
    progress = http.get("/sdapi/v1/progress").json()
    assert progress["progress"] == 0 and progress["state"]["job_count"] == 0 and progress["current_image"] is None


def test_webuiapi_client_with_override_settings(server):
    webuiapi = pytest.importorskip("webuiapi")
    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler a", steps=4)
    options_before = api.get_options()
    result = api.txt2img(prompt="a blue circle", width=64, height=64, seed=11,
                         override_settings={"CLIP_stop_at_last_layers": 2})
    assert result.images[0].size == (64, 64)
    assert "Clip skip: 2" in result.info["infotexts"][0]
    assert api.get_options() == options_before
    assert api.util_get_current_model().startswith("serena-shapes-v1")
    assert "Euler a" in api.util_get_sampler_names()
    api.util_wait_for_ready(check_interval=0.2)


def test_interrupt_during_generation_with_overrides(http, server):
    result = {}

    def generate():
        result["r"] = httpx.post(f"{server.url}/sdapi/v1/txt2img", timeout=300, json=dict(
            SMALL, prompt="a long one", steps=150, override_settings={"CLIP_stop_at_last_layers": 2}))

    worker = threading.Thread(target=generate)
    worker.start()
    try:
        wait_until(lambda: http.get("/sdapi/v1/progress").json()["state"]["sampling_step"] >= 1)
        active = http.get("/serena/v1/overrides/active").json()
        assert active["job"] == "txt2img"
        assert active["overrides"][0]["values"] == {"CLIP_stop_at_last_layers": 2}
        assert http.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1  # not the running override
        assert http.post("/sdapi/v1/interrupt").json() == {}
    finally:
        worker.join(120)
    r = result["r"]
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 1  # an interrupted generation answers with what it had, as A1111 does
    assert http.get("/serena/v1/overrides/active").json() == {"job": None, "overrides": []}
    assert http.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1
    nxt = http.post("/sdapi/v1/txt2img", json=dict(SMALL, prompt="after", seed=5)).json()
    assert "Clip skip" not in json.loads(nxt["info"])["infotexts"][0] and len(nxt["images"]) == 1


def test_bad_overrides_do_not_reach_the_queue(http):
    r = http.post("/sdapi/v1/txt2img", json=dict(SMALL, override_settings={"sd_model_checkpoint": "nope",
                                                                            "CLIP_stop_at_last_layers": 99}))
    assert r.status_code == 422 and r.json()["error"] == "OverrideError"
    assert set(r.json()["errors"]) == {"sd_model_checkpoint", "CLIP_stop_at_last_layers"}


def test_api_auth_flag(serena_server, embedded_model, tmp_path_factory):
    server = serena_server(tmp_path_factory.mktemp("serena-auth"), "--api-auth", "admin:se:cret")
    try:
        assert httpx.get(f"{server.url}/sdapi/v1/options").status_code == 401
        assert httpx.get(f"{server.url}/sdapi/v1/options", auth=("admin", "se:cret")).status_code == 200
    finally:
        server.stop()
