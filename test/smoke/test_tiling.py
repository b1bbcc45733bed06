"""Seamless tiling end to end through the API on the embedded model (real safetensors, real model loads).

The image must wrap: the difference across the left/right (and top/bottom) seam is measured with and without
tiling, on the same seeds, and must be much smaller with it. The padding is state of the shared model, so the next
request without tiling must be byte-identical to a fresh run, and a generation that fails or is interrupted
mid-sampling must leave every ``Conv2d`` as it found it.
"""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from modules import jobs, sd_models, tiling
from modules.hookspecs import hookimpl

# A shape on a plain background: its sharp edges show any seam. 8 seeds: one seam is 64 pixel pairs per image,
# and a shape's edge lying on it moves a single image's measure a lot.
REQUEST = {"prompt": "a green square on a yellow background", "steps": 6, "width": 64, "height": 64,
           "sampler_name": "Euler a"}
SEEDS = range(8)


@pytest.fixture(scope="module")
def client(real_client):
    return real_client


def txt2img(client, **fields):
    r = client.post("/sdapi/v1/txt2img", json=dict(REQUEST, **fields))
    assert r.status_code == 200, r.text
    return r.json()


def pixels(body) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).convert("RGB"), dtype=np.float32)


def seams(image: np.ndarray) -> tuple[float, float]:
    """Mean absolute difference between the first and last column, and between the first and last row."""
    return float(np.abs(image[:, 0] - image[:, -1]).mean()), float(np.abs(image[0] - image[-1]).mean())


def padding_modes() -> set:
    return {conv.padding_mode for conv in tiling.convolutions(sd_models.current_model())}


def test_tiled_images_wrap_left_right_and_top_bottom(client):
    plain = np.mean([seams(pixels(txt2img(client, seed=s))) for s in SEEDS], axis=0)
    tiled = np.mean([seams(pixels(txt2img(client, seed=s, tiling=True))) for s in SEEDS], axis=0)
    # Measured here: plain 12.2 / 11.3, tiled 5.5 / 5.9 (8-bit levels; a neighbouring column differs by ~3).
    assert tiled[0] < 0.7 * plain[0], (plain, tiled)
    assert tiled[1] < 0.7 * plain[1], (plain, tiled)


def test_infotext_records_tiling_and_pasting_it_tiles_again(client):
    body = txt2img(client, seed=3, tiling=True)
    text = json.loads(body["info"])["infotexts"][0]
    assert "Tiling: True" in text
    assert "Tiling" not in json.loads(txt2img(client, seed=3)["info"])["infotexts"][0]
    pasted = txt2img(client, infotext=text)
    assert json.loads(pasted["info"])["infotexts"][0] == text and pasted["images"] == body["images"]


def test_the_tiling_setting_is_the_default_and_the_request_field_wins(client):
    tiled = txt2img(client, seed=4, tiling=True)["images"]
    assert txt2img(client, seed=4, override_settings={"tiling": True})["images"] == tiled
    assert txt2img(client, seed=4, tiling=False, override_settings={"tiling": True})["images"] != tiled


def test_the_next_request_without_tiling_is_byte_identical_to_a_fresh_run(client):
    fresh = txt2img(client, seed=11)["images"]
    txt2img(client, seed=11, tiling=True)
    assert padding_modes() == {"zeros"}
    assert txt2img(client, seed=11)["images"] == fresh


def test_img2img_tiles_too_and_restores(client):
    init = txt2img(client, seed=2)["images"][0]
    r = client.post("/sdapi/v1/img2img", json=dict(REQUEST, seed=2, init_images=[init], denoising_strength=0.6,
                                                    tiling=True))
    assert r.status_code == 200, r.text
    assert "Tiling: True" in json.loads(r.json()["info"])["infotexts"][0] and padding_modes() == {"zeros"}


def test_concurrent_tiled_and_untiled_requests_queue_and_each_gets_its_own_padding(client):
    """Two clients at once: the queue runs one generation at a time, so each image is what it is alone."""
    alone = {tiled: txt2img(client, seed=6, tiling=tiled)["images"] for tiled in (True, False)}
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [(tiled, pool.submit(txt2img, client, seed=6, tiling=tiled)) for tiled in (True, False) * 2]
        for tiled, future in futures:
            assert future.result()["images"] == alone[tiled]
    assert padding_modes() == {"zeros"}


class Fails:
    """Fails (or interrupts) the generation at its second step, after checking that the model tiles then."""

    def __init__(self, interrupt: bool):
        self.interrupt, self.seen = interrupt, []

    @hookimpl
    def on_sampling_step(self, step):
        self.seen.append(padding_modes())
        if step == 1:
            if self.interrupt:
                jobs.state.interrupt()
            else:
                raise RuntimeError("boom mid-sampling")


def test_an_exception_mid_sampling_restores_every_padding_mode(client, register):
    failing = register(Fails(interrupt=False), "fails-mid-sampling")
    r = client.post("/sdapi/v1/txt2img", json=dict(REQUEST, seed=1, tiling=True))
    assert r.status_code == 500 and "boom mid-sampling" in r.text
    assert failing.seen == [{"circular"}, {"circular"}]
    assert padding_modes() == {"zeros"}


def test_an_interrupt_mid_sampling_restores_every_padding_mode(client, register):
    interrupting = register(Fails(interrupt=True), "interrupts-mid-sampling")
    txt2img(client, seed=1, tiling=True)
    assert interrupting.seen[0] == {"circular"} and padding_modes() == {"zeros"}


def test_a_nested_untiled_generation_does_not_tile_and_the_outer_one_still_does(client):
    model = sd_models.current_model()
    with tiling.padding_for(model, True):
        with tiling.padding_for(model, False):
            assert padding_modes() == {"zeros"}
        assert padding_modes() == {"circular"}
        with tiling.padding_for(model, True):
            assert padding_modes() == {"circular"}
        assert padding_modes() == {"circular"}
    assert padding_modes() == {"zeros"} and not tiling._untiled_modes
