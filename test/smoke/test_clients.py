"""Real A1111 API client packages, unchanged, against a real Serena server (uvicorn on 127.0.0.1, embedded model).

Each client is driven the way its users drive it: list models, samplers, schedulers and upscalers with its own
calls, generate with its OWN defaults (only a prompt), watch progress while that runs, switch the checkpoint, and
upscale. The one thing the default generations pass is the image size: the clients default to 512 px, the embedded
model is 64 px, and a 512 px image takes minutes on a CPU (and says nothing more about compatibility). The
generations after a model switch also pass 4 steps, to keep the module near 30 s plus the server's start.

- ``webuiapi`` (mix1009/sdwebuiapi): the most used Python client; requests, dicts back.
- ``sd-backend-client`` (IntraPaint's backend, extracted): requests + pydantic models that validate every response
  field by field, a client-side job queue that polls ``/progress``, shared (ComfyUI) sampler/scheduler names.
- ``aaa1111`` (Bing-su, the ADetailer author): httpx, sync and async; sends only the fields a user set, so the
  server's own defaults are used; beartype-checked dataclasses for every response.
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings

import pytest
import webuiapi
from beartype.roar import BeartypeDecorHintPep585DeprecationWarning
from PIL import Image
from sd_backend_client import A1111Webservice, DiffusionParams, GenerationStatus, connect_to_backend

with warnings.catch_warnings():  # aaa1111's typing.Dict hints: one warning per decorated method, none about Serena
    warnings.simplefilter("ignore", BeartypeDecorHintPep585DeprecationWarning)
    from aaa1111 import AAA1111
    from aaa1111.types.extras import ExtrasSingleImage
    from aaa1111.types.toimg import TXT2IMG

SIZE = 64  # not the clients' 512 px default: the embedded model is 64 px and a 512 px image takes minutes on a CPU
ALT = "serena-shapes-alt"
DEFAULT = "serena-shapes-v1"
PROGRESS_STATE = {"skipped": bool, "interrupted": bool, "stopping_generation": bool, "job": str, "job_count": int,
                  "job_timestamp": str, "job_no": int, "sampling_step": int, "sampling_steps": int}


@pytest.fixture(scope="module")
def server(serena_server, embedded_model, tmp_path_factory):
    return serena_server(tmp_path_factory.mktemp("serena-clients"))


def check_state(state: dict) -> None:
    """A1111 1.10's ``/progress`` ``state``: exactly these keys, of these types."""
    assert set(state) == set(PROGRESS_STATE), state
    for key, kind in PROGRESS_STATE.items():
        assert type(state[key]) is kind, (key, state[key])


def check_progress(progress: float, eta: float, state: dict, current_image, textinfo) -> None:
    assert type(progress) is float and 0.0 <= progress <= 1.0
    assert type(eta) is float and eta >= 0.0
    check_state(state)
    assert current_image is None or isinstance(current_image, (str, Image.Image))
    assert textinfo is None or isinstance(textinfo, str)


def params(infotext: str) -> set[str]:
    """The ``Key: value`` items of an infotext's last line (the order of the keys is not what a user checks)."""
    return set(infotext.splitlines()[-1].split(", "))


def run_while_polling(generate, poll, interval=0.05):
    """Run ``generate()`` in a thread, calling ``poll()`` until it ends; (its result, what ``poll`` returned)."""
    outcome = {}

    def target():
        try:
            outcome["result"] = generate()
        except BaseException as e:  # re-raised below, in the test's thread
            outcome["error"] = e

    worker = threading.Thread(target=target)
    worker.start()
    seen = []
    try:
        while worker.is_alive():
            seen.append(poll())
            time.sleep(interval)
    finally:
        worker.join(300)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"], seen


def check_png(image: Image.Image, size=(SIZE, SIZE)) -> str:
    """A decoded PNG of ``size`` whose ``parameters`` chunk is the infotext; returns the infotext."""
    assert image.format == "PNG" and image.size == size
    image.load()
    return image.info["parameters"]


# -- webuiapi -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def webui(server):
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port)  # its defaults: Euler a, automatic, 20 steps


def test_webuiapi_lists(webui):
    assert f"{ALT}.safetensors" in [title.split(" [")[0] for title in webui.util_get_model_names()]
    assert {"Euler a", "Euler", "DPM++ 2M"} <= set(webui.util_get_sampler_names())
    assert {"automatic", "karras"} <= set(webui.util_get_scheduler_names())
    assert "Lanczos" in [u["name"] for u in webui.get_upscalers()]


def test_webuiapi_defaults_and_progress(webui):
    result, seen = run_while_polling(lambda: webui.txt2img(prompt="a red square", width=SIZE, height=SIZE),
                                     webui.get_progress)
    infotext = check_png(result.image)
    assert infotext == result.info["infotexts"][0]
    assert {"Steps: 20", "Sampler: Euler a", f"Model: {DEFAULT}"} <= params(infotext)
    busy = [p for p in seen if p["state"]["sampling_step"] >= 1]
    assert busy, seen
    for p in busy:
        check_progress(p["progress"], p["eta_relative"], p["state"], p["current_image"], p["textinfo"])
        assert p["state"]["job"] and p["state"]["job_count"] >= 1 and p["state"]["sampling_steps"] == 20
    assert max(p["progress"] for p in busy) > 0.0
    webui.util_wait_for_ready(check_interval=0.1)


def test_webuiapi_switch_model_and_upscale(webui):
    webui.util_set_model(ALT)  # webuiapi picks the closest title and POSTs it to /options
    try:
        assert webui.util_get_current_model().startswith(ALT)
        result = webui.txt2img(prompt="a blue circle", width=SIZE, height=SIZE, steps=4)
        assert f"Model: {ALT}" in params(check_png(result.image)) and result.info["sd_model_name"] == ALT
    finally:
        webui.util_set_model(DEFAULT)
    assert webui.util_get_current_model().startswith(DEFAULT)
    upscaled = webui.extra_single_image(result.image, upscaler_1="Lanczos", upscaling_resize=2)
    assert upscaled.image.size == (2 * SIZE, 2 * SIZE) and upscaled.image.format == "PNG"


# -- sd-backend-client ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backend(server):
    client = connect_to_backend(server.url)  # probes ComfyUI's /system_stats, then /sdapi/v1/options
    yield client
    client.disconnect()


def test_sd_backend_client_lists(backend):
    assert isinstance(backend, A1111Webservice)
    assert f"{ALT}.safetensors" in [o.name for o in backend.list_checkpoints()]
    samplers = {o.name: o.display_name for o in backend.list_samplers()}  # shared names -> A1111's
    assert samplers["euler_ancestral"] == "Euler a" and samplers["dpmpp_2m"] == "DPM++ 2M"
    assert {"automatic", "karras"} <= {o.name for o in backend.list_schedulers()}
    assert backend.get_capabilities().scheduler
    assert "Lanczos" in [o.name for o in backend.list_upscalers()]  # validates every /upscalers item


def test_sd_backend_client_defaults_and_progress(backend):
    # Its defaults: Euler a with scheduler "normal", 30 steps, CFG 7, random seed.
    handle = backend.submit_txt2img(DiffusionParams(prompt="a red square", width=SIZE, height=SIZE))
    result, seen = run_while_polling(lambda: handle.wait(timeout=240),
                                     lambda: (handle.poll(), backend.progress_check()))
    assert result.images[0].size == (SIZE, SIZE) and len(result.seeds) == 1
    info = result.raw_info  # GenerationInfoData: every field A1111 returns, validated
    assert info.width == SIZE and info.sampler_name == "Euler a" and info.sd_model_name == DEFAULT
    assert {"Steps: 30", "Sampler: Euler a", "Schedule type: Normal", "CFG scale: 7.0"} <= params(info.infotexts[0])
    busy = [(poll, body) for poll, body in seen if body.state.sampling_step >= 1]
    assert busy, seen
    for poll, body in busy:
        check_progress(body.progress, body.eta_relative, body.state.model_dump(), body.current_image, body.textinfo)
    # the handle's own progress, as a progress bar shows it, comes from the same /progress
    active = [poll for poll, _ in busy if poll.status is GenerationStatus.ACTIVE and poll.progress is not None]
    assert active and max(poll.progress for poll in active) > 0.0


def test_sd_backend_client_model_override_and_upscale(backend):
    # sd_model_name goes out as override_settings.sd_model_checkpoint: a per-request switch that /options never shows.
    request = DiffusionParams(prompt="a blue circle", width=SIZE, height=SIZE, steps=4,
                              sd_model_name=f"{ALT}.safetensors")
    result = backend.submit_txt2img(request).wait(timeout=240)
    assert result.raw_info.sd_model_name == ALT and f"Model: {ALT}" in params(result.raw_info.infotexts[0])
    assert backend.get_config()["sd_model_checkpoint"].startswith(DEFAULT)
    upscaled = backend.upscale(result.images[0], 2 * SIZE, 2 * SIZE)  # the first upscaler that is not "None"
    assert upscaled["images"][0].size == (2 * SIZE, 2 * SIZE)


# -- aaa1111 --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aaa(server):
    client = AAA1111(base_url=server.url)
    yield client
    client.client.close()  # its AsyncClient is closed by the async test, inside the event loop that used it


def test_aaa1111_lists(aaa):
    assert f"{ALT}.safetensors" in [m.filename.rsplit("/", 1)[-1] for m in aaa.sd_models()]
    assert {"Euler a", "Euler", "DPM++ 2M"} <= {s.name for s in aaa.samplers()}  # options: dict[str, str]
    assert "Lanczos" in [u.name for u in aaa.upscalers()]
    # aaa1111 predates /schedulers (A1111 1.9) and has no call for it


def test_aaa1111_async_defaults_and_progress(aaa):
    async def generate_while_polling():
        # TXT2IMG sends only fields that differ from its defaults: here prompt, width, height. The server's own
        # defaults (A1111: Euler, 50 steps, CFG 7) do the rest.
        try:
            job = asyncio.create_task(aaa.atxt2img(TXT2IMG(prompt="a red square", width=SIZE, height=SIZE)))
            seen = []
            while not job.done():
                # skip_current_image: aaa1111 type-checks current_image as a PIL image before decoding the base64
                # string it gets, so with a live preview (A1111's default too) its progress call raises.
                seen.append(await aaa.aprogress(skip_current_image=True))
                await asyncio.sleep(0.05)
            return await job, seen
        finally:
            await aaa.aclient.aclose()

    result, seen = asyncio.run(generate_while_polling())
    infotext = check_png(result.images[0])
    assert infotext == result.info["infotexts"][0]
    assert {"Steps: 50", "Sampler: Euler", "CFG scale: 7.0", f"Model: {DEFAULT}"} <= params(infotext)
    busy = [p for p in seen if p.state["sampling_step"] >= 1]
    assert busy, seen
    for p in busy:
        check_progress(p.progress, p.eta_relative, p.state, p.current_image, p.textinfo)
    assert max(p.progress for p in busy) > 0.0


def test_aaa1111_switch_model_and_upscale(aaa):
    aaa.set_options(sd_model_checkpoint=ALT)
    try:
        assert aaa.get_options()["sd_model_checkpoint"].startswith(ALT)
        result = aaa.txt2img({"prompt": "a blue circle", "width": SIZE, "height": SIZE, "steps": 4})
        assert f"Model: {ALT}" in params(check_png(result.images[0])) and result.info["sd_model_name"] == ALT
    finally:
        aaa.set_options(sd_model_checkpoint=DEFAULT)
    assert aaa.get_options()["sd_model_checkpoint"].startswith(DEFAULT)
    # ExtrasSingleImage sends the image and upscaler_1 only: the server's upscaling_resize default (2) applies.
    upscaled = aaa.extra_single_image(ExtrasSingleImage(image=result.images[0], upscaler_1="Lanczos"))
    assert upscaled.image.size == (2 * SIZE, 2 * SIZE) and upscaled.image.format == "PNG"
