"""The API's infotext bound (``api_max_infotext_chars``) and parsing off the event loop.

The server test runs the real app on a real uvicorn server in a thread of this process (127.0.0.1, a free
port): the same event loop and worker thread pool as ``webui.py --nowebui``, without loading a model.
"""

from __future__ import annotations

import base64
import inspect
import io
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from PIL import Image, PngImagePlugin

from modules import infotext, shared
from modules.api.api import Api

LIMIT_KEY = "api_max_infotext_chars"


def png_with_parameters(text: str) -> str:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def client(data_dir, api_client):
    return api_client


def test_limit_is_a_restricted_api_option(client):
    assert shared.opts.get(LIMIT_KEY) == 65536
    r = client.post("/sdapi/v1/options", json={LIMIT_KEY: 10_000_000})
    assert r.status_code == 422 and "restricted" in r.json()["errors"][LIMIT_KEY]
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "override_settings": {LIMIT_KEY: 10_000_000}})
    assert r.status_code == 422 and LIMIT_KEY in r.json()["errors"]


def test_txt2img_infotext_over_the_limit_is_422_naming_it(client):
    shared.opts.set(LIMIT_KEY, 2000)
    text = "a cat\nSteps: 2, Seed: 1, CFG scale: 7, " + "x" * 2000
    for route in ("txt2img", "img2img"):
        r = client.post(f"/sdapi/v1/{route}", json={"prompt": "x", "infotext": text, "init_images": ["@@"]})
        assert r.status_code == 422, r.text
        message = r.json()["errors"]["infotext"]
        assert f"{len(text)} characters" in message and "limit of 2000" in message and LIMIT_KEY in message


def test_png_info_text_over_the_limit_is_422_and_at_the_limit_is_read(client):
    shared.opts.set(LIMIT_KEY, 1024)
    head = "a cat\nSteps: 20, Sampler: Euler a, Seed: 1, Prompt tag: "
    at_limit = head + "y" * (1024 - len(head))
    body = client.post("/sdapi/v1/png-info", json={"image": png_with_parameters(at_limit)}).json()
    assert body["parameters"]["Steps"] == "20" and body["info"] == at_limit
    r = client.post("/sdapi/v1/png-info", json={"image": png_with_parameters(at_limit + "y")})
    assert r.status_code == 422
    assert r.json()["errors"] == {
        "image": f"infotext of 1025 characters is above this server's limit of 1024 (option {LIMIT_KEY})"}


def test_routes_that_parse_infotext_run_in_the_thread_pool():
    # A plain ``def`` route runs in Starlette's worker threads; an ``async def`` one would parse on the event loop.
    for name in ("text2imgapi", "img2imgapi", "pnginfoapi"):
        assert not inspect.iscoroutinefunction(getattr(Api, name)), name


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_server(data_dir):
    app = FastAPI()
    Api(app)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(10)


def test_progress_answers_while_a_large_png_info_parse_runs(live_server, monkeypatch):
    # 20k characters without a ":" took A1111's regex about 5 s with the GIL held; 400k pairs after them keep
    # the linear parser busy long enough to poll /progress many times meanwhile.
    text = "a cat\n" + " word" * 4000 + ", " + "ab:," * 400_000
    shared.opts.set(LIMIT_KEY, 2_000_000)
    image = png_with_parameters(text)
    parses = []
    parse = infotext.parse_generation_parameters

    def timed_parse(*args, **kwargs):
        start = time.monotonic()
        try:
            return parse(*args, **kwargs)
        finally:
            parses.append((start, time.monotonic()))

    monkeypatch.setattr(infotext, "parse_generation_parameters", timed_parse)
    result = {}

    def post_png_info():
        result["response"] = httpx.post(f"{live_server}/sdapi/v1/png-info", json={"image": image}, timeout=120)

    poster = threading.Thread(target=post_png_info)
    polls = []
    with httpx.Client(base_url=live_server, timeout=60) as poller:
        poster.start()
        while poster.is_alive():
            sent = time.monotonic()
            assert poller.get("/sdapi/v1/progress").status_code == 200
            polls.append((sent, time.monotonic()))
        poster.join()

    assert result["response"].status_code == 200 and result["response"].json()["parameters"]["ab"] == ""
    [(parse_start, parse_end)] = parses
    during = [(sent, got) for sent, got in polls if parse_start <= sent and got <= parse_end]
    slowest = max(got - sent for sent, got in polls)
    # Workers switch the GIL every 5 ms; a parse holding it would stall a poll for the whole parse.
    assert len(during) >= 3, (len(during), parse_end - parse_start)
    assert slowest < 0.5, (slowest, parse_end - parse_start)
