"""The built-in "SD upscale" img2img script (issue 15 item 5), on the tiny real model: the upscaled size, the tiles
for an overlap, blended seams, the upscaler by position or name, and its refusals before queueing.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.extensions_api import hookimpl
from modules.extensions_api.testing import loaded

ROOT = Path(__file__).resolve().parents[2]
SD_UPSCALE = ROOT / "extensions-builtin" / "sd-upscale"


class Tiles:
    """Every generation's init image and result: the tiles in, the tiles out."""

    def __init__(self):
        self.inputs, self.outputs = [], []

    @hookimpl
    def on_before_process(self, p):
        self.inputs.append(p.init_images[0].copy())

    @hookimpl
    def on_postprocess(self, p, processed):
        self.outputs.append(np.asarray(processed.images[0].convert("RGB"), dtype=np.int16))


@pytest.fixture
def tiles(real_model, register):
    with loaded(str(SD_UPSCALE)):
        yield register(Tiles(), "tile-recorder")


@pytest.fixture
def client(tiles, api_client):
    return api_client


def _png(size=(64, 64)) -> str:
    x = np.linspace(0, 255, size[0], dtype=np.uint8)
    pixels = np.stack([np.tile(x, (size[1], 1)), np.tile(x[::-1], (size[1], 1)), np.full((size[1], size[0]), 90,
                                                                                          np.uint8)], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _upscale(client, *script_args, **body):
    return client.post("/sdapi/v1/img2img", json={
        "init_images": [_png()], "prompt": "a pebble", "steps": 1, "width": 64, "height": 64, "seed": 5,
        "denoising_strength": 0.5, "script_name": "SD upscale", "script_args": list(script_args), **body})


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_output_is_the_scaled_image_made_of_img2img_tiles(client, tiles, data_dir):
    r = _upscale(client, "", 16, "Lanczos", 2, save_images=True)
    assert r.status_code == 200, r.text
    images = r.json()["images"]
    assert len(images) == 1 and _image(images[0]).size == (128, 128)
    # 128 px in 64 px tiles overlapping by at least 16: 3 a side, each an img2img of a 64x64 cut
    assert len(tiles.inputs) == 9 and {t.size for t in tiles.inputs} == {(64, 64)}
    info = json.loads(r.json()["info"])
    text = info["infotexts"][0]
    assert "SD upscale overlap: 16, SD upscale upscaler: Lanczos" in text and "Size: 64x64" in text, text
    assert "Denoising strength: 0.5" in text and info["all_seeds"] == [5]
    assert _image(images[0]).info["parameters"] == text
    # The joined image is saved with its parameters, the tiles never are.
    [saved] = (data_dir / "outputs").rglob("*.png")
    assert Image.open(saved).size == (128, 128) and Image.open(saved).info["parameters"] == text


def test_tiles_for_an_overlap_and_seams_that_blend(client, tiles):
    r = _upscale(client, "", 0, "Nearest", 2)
    assert r.status_code == 200, r.text
    hard = np.asarray(_image(r.json()["images"][0]).convert("RGB"), dtype=np.int16)
    assert len(tiles.outputs) == 4  # no overlap: 2 x 2 tiles, pasted side by side
    assert (hard[:64, :64] == tiles.outputs[0]).all() and (hard[:64, 64:] == tiles.outputs[1]).all()

    tiles.inputs.clear(), tiles.outputs.clear()
    r = _upscale(client, "", 16, "Nearest", 2)
    blended = np.asarray(_image(r.json()["images"][0]).convert("RGB"), dtype=np.int16)
    first, second = tiles.outputs[0], tiles.outputs[1]  # the top row's tiles start at x 0 and 32
    assert len(tiles.outputs) == 9
    # Where the second tile starts (x 32..47) each pixel lies between the two tiles' pixels, moving from the
    # first's to the second's: a blend, not an edge. After that the second tile is pasted as it is, up to the third.
    region, left, right = blended[:32, 32:48], first[:32, 32:48], second[:32, :16]
    assert ((region >= np.minimum(left, right) - 1) & (region <= np.maximum(left, right) + 1)).all()
    assert np.abs(region[:, 0] - left[:, 0]).max() <= 1  # the ramp starts at the first tile
    assert (np.abs(region[:, -1] - right[:, -1]) < np.abs(region[:, -1] - left[:, -1]) + 1).all()
    differs = (left != right).any(axis=-1)
    between = ((region != left) & (region != right)).any(axis=-1)
    assert differs.any() and between[differs].mean() > 0.5
    assert (blended[:32, 48:64] == second[:32, 16:32]).all()


def test_upscaler_by_index_or_name_gives_the_same_image(client):
    listed = [u["name"] for u in client.get("/sdapi/v1/upscalers").json()]
    index = listed.index("Lanczos")
    by_index = _upscale(client, "", 0, index, 2)
    by_name = _upscale(client, "", 0, "lanczos", 2)
    assert by_index.status_code == by_name.status_code == 200, by_index.text
    assert by_index.json()["images"] == by_name.json()["images"]
    assert "SD upscale upscaler: Lanczos" in json.loads(by_index.json()["info"])["infotexts"][0]
    assert by_index.json()["images"] != _upscale(client, "", 0, "Nearest", 2).json()["images"]


def test_none_upscaler_keeps_the_size_as_a1111(client, tiles):
    r = _upscale(client, None, 32, 0, 2)  # A1111's defaults: upscaler 0 is "None", which does not upscale
    assert r.status_code == 200, r.text
    assert _image(r.json()["images"][0]).size == (64, 64) and len(tiles.inputs) == 1


@pytest.mark.parametrize("script_args, field, words", [
    (["", 16, 99, 2], "script_args[2] (Upscaler)", "not a position"),
    (["", 16, "No such upscaler", 2], "script_args[2] (Upscaler)", "Lanczos"),
    (["", 16, True, 2], "script_args[2] (Upscaler)", "position of a choice"),
    (["", 64, "Lanczos", 2], "script_args[1] (Tile overlap)", "64x64"),
    (["", 16, "Lanczos", 5], "script_args[3] (Scale Factor)", "maximum"),
    (["", 16, "Lanczos", 0.1], "script_args[3] (Scale Factor)", "at least 8"),
])
def test_bad_arguments_are_422_naming_them(client, tiles, script_args, field, words):
    r = _upscale(client, *script_args)
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert list(errors) == [field] and words in errors[field], errors
    assert tiles.inputs == []  # refused before anything ran


def test_a_mask_is_refused(client, tiles):
    r = _upscale(client, "", 16, "Lanczos", 2, mask=_png())
    assert r.status_code == 422 and "send no mask" in r.json()["errors"]["script_name"], r.text
    assert tiles.inputs == []


def test_the_ui_values_select_it_as_the_api_does(data_dir):
    from modules import scripts

    with loaded(str(SD_UPSCALE)):  # what the img2img tab's controls give: the note's HTML, floats from sliders
        run, errors = scripts.select("img2img", "SD upscale", ["<p>note</p>", 32.0, 2, 2.0])
        assert errors == {} and run.script.title == "SD upscale" and run.args == ("<p>note</p>", 32, 2, 2.0)
        assert run.script.upscaler(run.args[2]) == "Nearest"
        assert scripts.select("img2img", "SD upscale", ["", 32, "nearest"])[0].args[2] == 2
        assert scripts.select("txt2img", "SD upscale")[1].keys() == {"script_name"}


def test_listed_for_img2img_with_its_arguments(client):
    listing = client.get("/sdapi/v1/scripts").json()
    assert "sd upscale" in listing["img2img"] and "sd upscale" not in listing["txt2img"]
    info = [i for i in client.get("/sdapi/v1/script-info").json() if i["name"] == "sd upscale"]
    assert len(info) == 1 and info[0]["is_img2img"] and not info[0]["is_alwayson"]
    args = info[0]["args"]
    assert [a["label"] for a in args] == ["Info", "Tile overlap", "Upscaler", "Scale Factor"]
    assert (args[1]["value"], args[1]["minimum"], args[1]["maximum"], args[1]["step"]) == (64, 0, 256, 16)
    assert args[2]["value"] == "None" and args[2]["choices"][:3] == ["None", "Lanczos", "Nearest"]  # as A1111's
    assert (args[3]["value"], args[3]["minimum"], args[3]["maximum"]) == (2.0, 0, 4)
