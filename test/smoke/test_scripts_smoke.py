"""Scripts on a real server (uvicorn, 127.0.0.1, the embedded model, the built-in extensions as start-up loads
them): "Prompts from file or textbox" listed in A1111's shapes, each line the same image as the plain request with
that line's settings, and a bad line refused before it queues."""

from __future__ import annotations

import json

import httpx
import pytest

SMALL = {"width": 64, "height": 64, "steps": 4, "sampler_name": "Euler a", "seed": 11}
TITLE = "prompts from file or textbox"


@pytest.fixture(scope="module")
def http(serena_server, embedded_model, tmp_path_factory):
    server = serena_server(tmp_path_factory.mktemp("serena-data"))
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def test_prompts_from_file_is_listed_in_a1111_shapes(http):
    listing = http.get("/sdapi/v1/scripts").json()
    assert TITLE in listing["txt2img"] and TITLE in listing["img2img"]
    [info] = [i for i in http.get("/sdapi/v1/script-info").json() if i["name"] == TITLE and not i["is_img2img"]]
    assert [a["label"] for a in info["args"]] == ["Iterate seed every line", "Use same random seed for all lines",
                                                  "Insert prompts at the", "List of prompt inputs"]


def test_each_line_is_the_plain_generation_with_that_lines_settings(http):
    text = "a red square\n--prompt a blue circle --steps 3 --seed 5 --cfg_scale 3"
    r = http.post("/sdapi/v1/txt2img", json=dict(SMALL, prompt="", script_name="Prompts From File Or Textbox",
                                                  script_args=[False, False, "start", text]))
    assert r.status_code == 200, r.text
    body = r.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 2 and info["all_seeds"] == [11, 5]
    assert "Steps: 4" in info["infotexts"][0] and "Steps: 3, Sampler: Euler a, CFG scale: 3.0, Seed: 5" in \
        info["infotexts"][1]
    first = http.post("/sdapi/v1/txt2img", json=dict(SMALL, prompt="a red square")).json()
    second = http.post("/sdapi/v1/txt2img", json=dict(SMALL, prompt="a blue circle", steps=3, seed=5,
                                                      cfg_scale=3)).json()
    assert body["images"] == first["images"] + second["images"]  # same machine, same settings: the same pixels
    assert json.loads(first["info"])["infotexts"] + json.loads(second["info"])["infotexts"] == info["infotexts"]


def test_a_bad_line_is_refused_before_it_queues(http):
    r = http.post("/sdapi/v1/txt2img", json=dict(SMALL, script_name=TITLE,
                                                  script_args=[False, False, "start", "ok\n--steps 3 --bogus 1"]))
    assert r.status_code == 422
    [(field, message)] = r.json()["errors"].items()
    assert field == "script_args[3] (List of prompt inputs)"
    assert message.startswith("line 2 ('--steps 3 --bogus 1'): unknown option --bogus; known: --sd_model, --prompt")
