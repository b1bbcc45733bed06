"""Upscalers in a real server process: an extension folder lists upscalers through ``on_list_upscalers``; the
extras endpoints run them over HTTP (uvicorn on 127.0.0.1), blend ``upscaler_2`` by its visibility, and turn an
upscaler that fails into a 422 naming the field and the upscaler."""

from __future__ import annotations

import base64
import io
import textwrap

import httpx
import pytest
from PIL import Image

EXTENSION = '''
from PIL import Image

from modules.extensions_api import Upscaler, hookimpl, upscale_tiled


def doubler(image, width, height):
    # A stand-in for a 2x model, run on A1111's 192 px tiles; Serena resizes the result to the size asked for.
    return upscale_tiled(image, lambda tile: tile.resize((tile.width * 2, tile.height * 2), Image.Resampling.NEAREST))


def white(image, width, height):
    return Image.new("RGB", (width, height), (250, 250, 250))


def broken(image, width, height):
    raise OSError("model file truncated")


@hookimpl
def on_list_upscalers():
    return [Upscaler("Smoke doubler", doubler, scale=2, model_path="smoke/doubler.pth"),
            Upscaler("Smoke white", white, scale=1), Upscaler("Smoke broken", broken), Upscaler("nearest", white)]
'''


def png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


@pytest.fixture(scope="module")
def http(serena_server, embedded_model, tmp_path_factory):
    data = tmp_path_factory.mktemp("upscalers-smoke")
    scripts = data / "extensions" / "smoke-upscalers" / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "smoke_upscalers.py").write_text(textwrap.dedent(EXTENSION))
    server = serena_server(data)
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def test_the_extension_s_upscalers_are_listed_after_the_built_in_ones(http):
    listed = http.get("/sdapi/v1/upscalers").json()
    assert [u["name"] for u in listed] == ["None", "Lanczos", "Nearest", "Smoke doubler", "Smoke white",
                                           "Smoke broken"]  # "nearest" is taken by the built-in one
    assert listed[3] == {"name": "Smoke doubler", "model_name": None, "model_path": "smoke/doubler.pth",
                         "model_url": None, "scale": 2}


def test_extras_run_the_extension_s_upscaler_and_blend_the_second(http):
    source = Image.new("RGB", (300, 40), (0, 0, 0))
    source.putpixel((299, 39), (255, 0, 0))
    r = http.post("/sdapi/v1/extra-single-image", json={"image": png(source), "upscaler_1": "smoke doubler",
                                                        "upscaling_resize": 2})
    assert r.status_code == 200, r.text
    result = decode(r.json()["image"])
    assert result.size == (600, 80) and result.getpixel((598, 78)) == (255, 0, 0)
    assert result.getpixel((0, 0)) == (0, 0, 0)
    r = http.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": png(source), "name": "a.png"}], "upscaler_1": "Smoke doubler", "upscaling_resize": 2,
        "upscaler_2": "Smoke white", "extras_upscaler_2_visibility": 0.4})
    assert r.status_code == 200, r.text
    [blended] = [decode(i) for i in r.json()["images"]]
    assert blended.size == (600, 80) and blended.getpixel((0, 0)) == (100, 100, 100)
    assert "Postprocess upscaler 2: Smoke white, visibility 0.4" in r.json()["html_info"]
    assert "'nearest' is already listed by Serena (built in)" in r.json()["html_info"]


def test_a_failing_upscaler_is_a_422_naming_the_field(http):
    r = http.post("/sdapi/v1/extra-single-image", json={"image": png(Image.new("RGB", (8, 8))),
                                                        "upscaler_1": "Smoke broken"})
    assert r.status_code == 422, r.text
    assert r.json()["errors"] == {"upscaler_1": "upscaler 'Smoke broken' failed: OSError: model file truncated"}
    assert http.get("/sdapi/v1/progress").json()["state"]["job"] == ""  # the job ended
