"""Hostile requests: bodies a fuzzer, a buggy client or an attacker sends. None may be a 500, hold the server, or
read back a secret (issue 13).

In-process (``TestClient``) where the app decides; on a real uvicorn server (a thread of this process, 127.0.0.1)
where the server's byte handling matters (raw invalid UTF-8, ``Content-Length``, chunked bodies); and one real
``webui.py`` process, started with both credential flags, for what the API and the logs show.
"""

from __future__ import annotations

import base64
import gc
import json
import math
import socket
import struct
import subprocess
import sys
import time
import typing
import zlib
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modules import shared
from modules.api import models
from modules.api.api import Api
from modules.option_info import OptionInfo
# Fixtures shared with the API's main tests (importing them is how pytest shares fixtures between modules here).
from test_api import TXT, client, fake_sampling, gate, png_b64  # noqa: F401
from test_infotext_api_limits import _free_port, live_server  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def post_raw(client, path: str, body: bytes | str):
    """POST ``body`` as it is (no encoder in between), as JSON."""
    return client.post(path, content=body, headers={"content-type": "application/json"})


def locs(response) -> list[list]:
    """The ``loc`` of every error of a FastAPI 422."""
    assert response.status_code == 422, response.text
    return [error["loc"] for error in response.json()["detail"]]


def with_literal(base: dict, field: str, literal: str) -> str:
    """``base`` with ``field`` set to a JSON literal no encoder writes for us (``NaN``, ``Infinity``...)."""
    return json.dumps({**base, field: "__LITERAL__"}).replace('"__LITERAL__"', literal)


# -- 2. non-finite numbers -------------------------------------------------------------------------------------

ROUTES = {  # route -> (request model, the smallest body it accepts)
    "txt2img": (models.StableDiffusionTxt2ImgProcessingAPI, TXT),
    "img2img": (models.StableDiffusionImg2ImgProcessingAPI, dict(TXT, init_images=[png_b64((8, 8))])),
    "extra-single-image": (models.ExtrasSingleImageRequest, {"image": png_b64((8, 8))}),
    "extra-batch-images": (models.ExtrasBatchImagesRequest, {"imageList": [{"data": png_b64((8, 8)), "name": "a"}]}),
}


def _number_fields(model) -> list[str]:
    def types(annotation):
        return {annotation, *typing.get_args(annotation)}

    return [name for name, info in model.model_fields.items() if {int, float} & types(info.annotation)]


NUMBER_FIELDS = [(route, name) for route, (model, _) in ROUTES.items() for name in _number_fields(model)]
NON_FINITE = ["NaN", "Infinity", "-Infinity"]


def test_every_float_field_is_covered():
    fields = {name for _, name in NUMBER_FIELDS}
    assert {"cfg_scale", "subseed_strength", "denoising_strength", "eta", "s_churn", "s_tmax", "s_tmin", "s_noise",
            "s_min_uncond", "image_cfg_scale", "hr_scale", "refiner_switch_at", "initial_noise_multiplier",
            "upscaling_resize", "extras_upscaler_2_visibility", "width", "steps", "seed", "batch_size"} <= fields


@pytest.mark.parametrize("literal", NON_FINITE)
@pytest.mark.parametrize("route,field", NUMBER_FIELDS)
def test_non_finite_number_in_any_number_field_is_422_naming_it(client, route, field, literal):
    # Before: a 500 in int fields (the 422 could not encode its input), a black image in float fields.
    r = post_raw(client, f"/sdapi/v1/{route}", with_literal(ROUTES[route][1], field, literal))
    assert ["body", field] in locs(r)
    assert r.json()["detail"][0]["input"] == literal  # echoed as the literal it was, in valid JSON


def test_non_finite_number_in_infotext_is_422_naming_it(client):
    # An infotext reaches the float fields as text: pydantic reads "nan" as a float unless told not to.
    r = client.post("/sdapi/v1/txt2img", json={"infotext": "a cat\nSteps: 2, CFG scale: nan, Seed: 1, Size: 64x64"})
    assert r.status_code == 422 and "infotext" in r.json()["errors"], r.text


@pytest.fixture
def float_option(data_dir):
    """A float option, as an extension registers one (Serena's core has none)."""
    shared.opts.add_option("test_hostile_strength", OptionInfo(0.5, "A strength", "Slider",
                                                               {"minimum": 0.0, "maximum": 1.0}))
    yield "test_hostile_strength"
    shared.opts.unset("test_hostile_strength")
    del shared.opts.data_labels["test_hostile_strength"]


@pytest.mark.parametrize("literal", NON_FINITE)
def test_non_finite_option_values_are_422_naming_the_key(client, float_option, literal):
    for key in (float_option, "CLIP_stop_at_last_layers"):
        r = post_raw(client, "/sdapi/v1/options", with_literal({}, key, literal))
        assert locs(r) == [["body", key]]
        r = post_raw(client, "/serena/v1/overrides/validate", with_literal({}, key, literal))
        assert locs(r) == [["body", key]]
        body = with_literal(TXT, "override_settings", with_literal({}, key, literal))
        assert locs(post_raw(client, "/sdapi/v1/txt2img", body)) == [["body", "override_settings", key]]
    assert shared.opts.test_hostile_strength == 0.5 and not shared.opts.is_stored(float_option)
    # The options store itself refuses them too (the settings page and extensions call it directly).
    for value in (math.nan, math.inf, -math.inf):
        assert "finite" in shared.opts.check({float_option: value}).errors[float_option]


def json_documents(bad: bool):
    """JSON values; with ``bad``, floats include NaN and the infinities and text includes lone surrogates."""
    # Hypothesis leaves surrogates (category Cs) out of text unless they are asked for by name.
    text = st.text(st.characters() | st.characters(categories=["Cs"]) if bad else st.characters(), max_size=8)
    leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=bad, allow_infinity=bad) | text
    return st.recursive(leaves, lambda children: st.lists(children, max_size=4)
                        | st.dictionaries(text, children, max_size=4), max_leaves=20)


def is_json_text(document) -> bool:
    try:
        json.dumps(document, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return False
    return True


@HYPOTHESIS
@given(document=st.dictionaries(st.text(st.characters() | st.characters(categories=["Cs"]), max_size=12),
                                json_documents(bad=True), max_size=5))
def test_any_body_is_answered_in_valid_json_never_500(client, document):
    # Python's json writes NaN and escapes lone surrogates: what a Python client can send.
    r = post_raw(client, "/serena/v1/overrides/validate", json.dumps(document))
    assert r.status_code == (200 if is_json_text(document) else 422), r.text
    json.loads(r.content.decode("utf-8"), parse_constant=lambda c: pytest.fail(f"{c} in a response"))
    if r.status_code == 422:
        assert {e["type"] for e in r.json()["detail"]} <= {"finite_number", "string_unicode"}


@HYPOTHESIS
@given(document=json_documents(bad=False), data=st.data())
def test_non_finite_number_anywhere_is_named_by_its_place(client, document, data):
    # Put NaN/Infinity at a random place inside `comments` (typed Any): the 422's loc is exactly that place.
    comments = {"x": document}
    path, node = [], comments
    while True:
        key = data.draw(st.sampled_from(list(node) if isinstance(node, dict) else list(range(len(node)))))
        path.append(key)
        if not isinstance(node[key], (dict, list)) or not node[key] or data.draw(st.booleans()):
            break
        node = node[key]
    node[key] = "__LITERAL__"
    literal = data.draw(st.sampled_from(NON_FINITE))
    body = json.dumps(dict(TXT, comments=comments)).replace('"__LITERAL__"', literal)
    assert locs(post_raw(client, "/sdapi/v1/txt2img", body)) == [["body", "comments", *path]]


def test_validation_error_about_deeply_nested_input_is_encodable(client):
    # 900 levels parse (under the parser's recursion limit) but FastAPI's encoder recursed on the echo.
    r = post_raw(client, "/sdapi/v1/txt2img", '{"width": ' + "[" * 900 + "]" * 900 + "}")
    assert locs(r) == [["body", "width"]]
    r = client.post("/sdapi/v1/txt2img", json={"steps": "x" * 1_000_000})  # and does not echo a megabyte
    assert locs(r) == [["body", "steps"]] and len(r.content) < 2000


def test_extension_routes_get_the_json_safe_422_too(data_dir):
    app = FastAPI()
    Api(app)

    @app.post("/my-extension/run")  # a plain FastAPI route, as an extension adds in on_app_started
    def run(body: dict[str, int]):
        return body

    with TestClient(app) as c:
        r = post_raw(c, "/my-extension/run", '{"steps": NaN}')
    assert locs(r) == [["body", "steps"]] and r.json()["detail"][0]["input"] == "NaN"


# -- 3. unparseable bodies -------------------------------------------------------------------------------------

UNPARSEABLE = {
    "invalid UTF-8": b'{"prompt": "\xff\xfe a cat"}',
    "truncated UTF-8": b'{"prompt": "caf\xc3"}',
    "arrays 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "objects 100,000 deep": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "an integer of 5,000 digits": b'{"seed": ' + b"7" * 5000 + b"}",
    "a syntax error": b'{"prompt": ',
}


def assert_json_invalid(response):
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["type"] == "json_invalid" and error["loc"][0] == "body"


@pytest.mark.parametrize("name", sorted(UNPARSEABLE))
def test_unparseable_body_is_422_json_invalid(client, name):
    for path in ("/sdapi/v1/txt2img", "/sdapi/v1/options", "/serena/v1/overrides/validate", "/sdapi/v1/png-info"):
        assert_json_invalid(post_raw(client, path, UNPARSEABLE[name]))


@HYPOTHESIS
@given(body=st.binary(max_size=300))
def test_any_bytes_are_answered_never_500(client, body):
    r = post_raw(client, "/sdapi/v1/png-info", body)
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], list)


def test_unparseable_bodies_on_a_real_server(live_server):  # noqa: F811
    with httpx.Client(base_url=live_server, timeout=30) as http:
        for name, body in UNPARSEABLE.items():
            assert_json_invalid(http.post("/sdapi/v1/txt2img", content=body,
                                          headers={"content-type": "application/json"}))
        # UTF-8 bytes of a surrogate (Python's json decodes them with "surrogatepass"): not text either.
        r = http.post("/sdapi/v1/txt2img", content=b'{"prompt": "\xed\xa0\x80"}',
                      headers={"content-type": "application/json"})
        assert locs(r) == [["body", "prompt"]]


# -- 4. lone surrogates ----------------------------------------------------------------------------------------


def test_lone_surrogate_in_a_prompt_is_422_naming_it(client):
    for field in ("prompt", "negative_prompt", "hr_prompt"):
        r = post_raw(client, "/sdapi/v1/txt2img", json.dumps(dict(TXT, **{field: "a cat \ud800"})))
        assert locs(r) == [["body", field]] and r.json()["detail"][0]["input"] == "a cat \\ud800"


@pytest.mark.parametrize("surrogate", ["\ud800", "\udfff", "x\udc00y"])
def test_lone_surrogate_option_key_is_422_naming_it(client, surrogate):
    escaped = surrogate.encode("utf-8", "backslashreplace").decode()
    body = json.dumps({surrogate: 1})
    for path in ("/sdapi/v1/options", "/serena/v1/overrides/validate"):
        assert locs(post_raw(client, path, body)) == [["body", escaped]]
    r = post_raw(client, "/sdapi/v1/txt2img", json.dumps(dict(TXT, override_settings={surrogate: 1})))
    assert locs(r) == [["body", "override_settings", escaped]]


def test_a_valid_surrogate_pair_is_text(client):
    r = post_raw(client, "/sdapi/v1/txt2img", json.dumps(dict(TXT, prompt="a cat \U0001F408")))  # "\ud83d\udc08"
    assert r.status_code == 200 and r.json()["parameters"]["prompt"] == "a cat \U0001F408"


# -- 6. size limits --------------------------------------------------------------------------------------------

NEW_LIMITS = {"api_max_prompt_chars": 20000, "api_max_input_images": 16, "api_max_input_pixels": 64 * 1024 * 1024,
              "api_max_request_bytes": 128 * 1024 * 1024, "api_max_json_values": 200_000}


def test_limits_are_restricted_options_with_generous_defaults(client):
    for key, default in NEW_LIMITS.items():
        assert shared.opts.get(key) == default
        r = client.post("/sdapi/v1/options", json={key: default * 2})
        assert r.status_code == 422 and "restricted" in r.json()["errors"][key]
        r = client.post("/sdapi/v1/txt2img", json=dict(TXT, override_settings={key: default * 2}))
        assert r.status_code == 422 and key in r.json()["errors"]
    # A long A1111 prompt (many BREAK chunks) is well inside the default.
    long_prompt = " BREAK ".join(["a detailed painting of a cat, masterpiece, best quality"] * 300)[:20000]
    assert client.post("/sdapi/v1/txt2img", json=dict(TXT, prompt=long_prompt)).status_code == 200


@pytest.mark.parametrize("route,field", [("txt2img", f) for f in ("prompt", "negative_prompt", "hr_prompt",
                                                                   "hr_negative_prompt")]
                         + [("img2img", f) for f in ("prompt", "negative_prompt")])
def test_prompt_over_the_limit_is_422_naming_it(client, route, field):
    shared.opts.set("api_max_prompt_chars", 1000)
    base = ROUTES[route][1]
    assert client.post(f"/sdapi/v1/{route}", json=dict(base, **{field: "x" * 1000})).status_code == 200
    r = client.post(f"/sdapi/v1/{route}", json=dict(base, **{field: "x" * 1001}))
    assert r.status_code == 422 and r.json()["errors"] == {
        field: "1001 characters are above this server's limit of 1000 (option api_max_prompt_chars)"}


def test_prompt_from_an_infotext_is_bounded_too(client):
    shared.opts.set("api_max_prompt_chars", 1000)
    r = client.post("/sdapi/v1/txt2img", json={"infotext": "x" * 1500 + "\nSteps: 2, Seed: 1, Size: 64x64"})
    assert r.status_code == 422 and "api_max_prompt_chars" in r.json()["errors"]["prompt"]


def header_only_png(width: int, height: int) -> str:
    """A PNG that declares ``width`` x ``height`` and holds no pixels: decoding it fails, reading its header works.

    A request refused for its size with this image was refused before any pixel was decoded.
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")).decode()


def test_init_image_count_is_checked_before_any_image_is_read(client):
    r = client.post("/sdapi/v1/img2img", json=dict(TXT, init_images=["@@"] * 17))
    assert r.status_code == 422 and r.json()["errors"] == {
        "init_images": "17 images are above this server's limit of 16 (option api_max_input_images)"}
    r = client.post("/sdapi/v1/extra-batch-images", json={"imageList": [{"data": "@@", "name": "a"}] * 17})
    assert r.status_code == 422 and list(r.json()["errors"]) == ["imageList"]
    shared.opts.set("api_max_input_images", 20)
    assert client.post("/sdapi/v1/img2img", json=dict(TXT, init_images=[png_b64((8, 8))] * 17)).status_code == 200


IMAGE_ROUTES = {  # route -> (body with one image, the field it is in)
    "img2img": (lambda image: dict(TXT, init_images=[image]), "init_images[0]"),
    "extra-single-image": (lambda image: {"image": image}, "image"),
    "extra-batch-images": (lambda image: {"imageList": [{"data": image, "name": "a"}]}, "imageList[0].data"),
    "png-info": (lambda image: {"image": image}, "image"),
}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's own, at 89 Mpx
@pytest.mark.parametrize("route", sorted(IMAGE_ROUTES))
def test_huge_image_is_refused_from_its_header(client, route):
    # 13,000 x 13,000: 27 KB of base64 as a one-colour PNG, 565 MB once decoded; this one has no pixels at all.
    body, field = IMAGE_ROUTES[route]
    r = client.post(f"/sdapi/v1/{route}", json=body(header_only_png(13_000, 13_000)))
    assert r.status_code == 422 and list(r.json()["errors"]) == [field], r.text
    assert r.json()["errors"][field] == (f"the images up to this one hold 169000000 pixels, above this server's limit "
                                         f"of {64 * 1024 * 1024} for one request (option api_max_input_pixels)")
    r = client.post(f"/sdapi/v1/{route}", json=body(header_only_png(64, 64)))  # within the limit: it is read
    assert r.status_code == 422 and "not a readable image" in r.json()["errors"][field]


def test_pixel_limit_is_for_all_images_of_a_request_together(client):
    shared.opts.set("api_max_input_pixels", 1024 * 1024)
    half = png_b64((1024, 512))
    assert client.post("/sdapi/v1/img2img", json=dict(TXT, init_images=[half, half])).status_code == 200
    r = client.post("/sdapi/v1/img2img", json=dict(TXT, init_images=[half, half, header_only_png(1, 1)]))
    assert list(r.json()["errors"]) == ["init_images[2]"] and "1048577 pixels" in r.json()["errors"]["init_images[2]"]
    r = client.post("/sdapi/v1/img2img", json=dict(TXT, init_images=[half, half], mask=png_b64((1, 1))))
    assert list(r.json()["errors"]) == ["mask"]
    r = client.post("/sdapi/v1/extra-batch-images", json={"imageList": [{"data": half, "name": n} for n in "abc"]})
    assert list(r.json()["errors"]) == ["imageList[2].data"]


def test_extras_output_pixels_are_bounded_for_the_whole_request(client):
    """16 tiny images each upscaled to 8192 x 8192 took half a minute of Lanczos (found by the API fuzz test)."""
    tiny = [{"data": png_b64((8, 8)), "name": str(i)} for i in range(16)]
    body = {"imageList": tiny, "resize_mode": 1, "upscaling_resize_w": 8192, "upscaling_resize_h": 8192,
            "upscaler_1": "Lanczos"}
    started = time.perf_counter()
    r = client.post("/sdapi/v1/extra-batch-images", json=body)
    assert r.status_code == 422 and r.json()["errors"] == {"upscaling_resize_w": (
        f"the results would hold {16 * 8192 * 8192} pixels together, above this server's limit of "
        f"{64 * 1024 * 1024} for one request (option api_max_output_pixels)")}
    assert time.perf_counter() - started < 5  # refused before any upscaling
    r = client.post("/sdapi/v1/extra-batch-images", json=dict(body, imageList=tiny[:1]))  # one is within it
    assert r.status_code == 200 and len(r.json()["images"]) == 1
    shared.opts.set("api_max_output_pixels", 1024 * 1024)
    r = client.post("/sdapi/v1/extra-single-image", json={"image": png_b64((8, 8)), "upscaling_resize": 8,
                                                           "upscaler_1": "Nearest"})
    assert r.status_code == 200  # 64 x 64
    r = client.post("/sdapi/v1/extra-single-image", json={"image": png_b64((512, 512)), "upscaling_resize": 4,
                                                           "upscaler_1": "Nearest"})
    assert r.status_code == 422 and "api_max_output_pixels" in r.json()["errors"]["upscaling_resize"]


def test_body_over_the_limit_is_413_naming_it(client):
    shared.opts.set("api_max_request_bytes", 1024 * 1024)
    body = json.dumps(dict(TXT, prompt="x"))
    r = post_raw(client, "/sdapi/v1/txt2img", body + " " * (1024 * 1024 - len(body)))
    assert r.status_code == 200  # exactly at the limit
    r = post_raw(client, "/sdapi/v1/txt2img", body + " " * (1024 * 1024 + 1 - len(body)))
    assert r.status_code == 413 and r.json() == {
        "error": "RequestTooLarge", "body": "",
        "detail": "body: a body of 1048577 bytes is above this server's limit of 1048576 bytes "
                  "(option api_max_request_bytes)",
        "errors": {"body": "a body of 1048577 bytes is above this server's limit of 1048576 bytes "
                           "(option api_max_request_bytes)"}}


def test_body_of_too_many_values_is_413_before_validation(client):
    # A million wrongly typed items were a million validation errors: 9 s and 1.2 GB for a 2 MB body.
    body = '{"styles": [' + ",".join(["0"] * 1_000_000) + "]}"
    started = time.perf_counter()
    r = post_raw(client, "/sdapi/v1/txt2img", body)
    assert r.status_code == 413 and r.json()["errors"] == {
        "body": "more than 200000 JSON values are above this server's limit (option api_max_json_values)"}
    assert time.perf_counter() - started < 2
    # Below the limit, the errors are listed up to 100, then counted.
    r = post_raw(client, "/sdapi/v1/txt2img", '{"styles": [' + ",".join(["0"] * 1000) + "]}")
    detail = r.json()["detail"]
    assert r.status_code == 422 and len(detail) == 101 and detail[0]["loc"] == ["body", "styles", 0]
    assert detail[-1] == {"type": "too_many_errors", "loc": ["body"], "input": None, "msg": "900 more errors not listed"}


def raw_http(url: str, head: bytes, chunks=(), timeout: float = 20) -> tuple[int, dict]:
    """Send ``head`` (request line and headers) and ``chunks`` on a plain socket; the response's status and JSON."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head)
        for chunk in chunks:
            try:
                s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed: read what it said
        response = b""
        while b"\r\n\r\n" not in response or len(response.partition(b"\r\n\r\n")[2]) < _length(response):
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            response += data
    status = int(response.split(b" ", 2)[1])
    return status, json.loads(response.partition(b"\r\n\r\n")[2])


def _length(response: bytes) -> int:
    for line in response.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 1 << 30


def test_body_size_limit_on_a_real_server(live_server):  # noqa: F811
    shared.opts.set("api_max_request_bytes", 1024 * 1024)
    # A Content-Length over the limit is answered at once: the server does not wait for (or read) the body.
    head = (b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000000\r\n\r\n")
    status, body = raw_http(live_server, head)
    assert status == 413 and "1000000000000 bytes" in body["errors"]["body"] and "1048576" in body["errors"]["body"]
    # A chunked body (no Content-Length) is counted as it streams in.
    head = (b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    status, body = raw_http(live_server, head, [b'2\r\n{"\r\n'] + [chunk] * 40)
    assert status == 413 and "api_max_request_bytes" in body["errors"]["body"]
    # Under the limit, chunked is read as usual.
    payload = json.dumps({"image": png_b64((8, 8))}).encode()
    status, body = raw_http(live_server, head.replace(b"txt2img", b"png-info"),
                            [b"%x\r\n%s\r\n" % (len(payload), payload), b"0\r\n\r\n"])
    assert status == 200 and body["info"] == ""


# -- small fix: unknown keys -----------------------------------------------------------------------------------


def test_100k_unknown_keys_are_answered_quickly(client):
    keys = {f"samples_format_{i}": 1 for i in range(100_000)}
    body = json.dumps(keys)
    gc.collect()  # earlier tests' garbage is not this request's time
    started = time.perf_counter()
    r = post_raw(client, "/serena/v1/overrides/validate", body)
    elapsed = time.perf_counter() - started
    errors = r.json()["errors"]
    assert r.status_code == 200 and len(errors) == 100_000
    hinted = [key for key, reason in errors.items() if "did you mean samples_format" in reason]
    assert hinted == list(keys)[:20]  # the first few still get a hint
    assert elapsed < 2, elapsed  # difflib for each of them took tens of seconds


# -- 8. secrets ------------------------------------------------------------------------------------------------

API_PASSWORD, UI_PASSWORD = "api-pw:Zq81x", "ui-pw-Kp27y"


def test_cmd_flags_hide_every_credential(client, monkeypatch):
    monkeypatch.setattr(shared.cmd_opts, "api_auth", f"alice:{API_PASSWORD}")
    monkeypatch.setattr(shared.cmd_opts, "gradio_auth", f"bob:{UI_PASSWORD}")
    flags = client.get("/sdapi/v1/cmd-flags").json()
    assert flags["api_auth"] == flags["gradio_auth"] == "<hidden>"
    assert API_PASSWORD not in json.dumps(flags) and UI_PASSWORD not in json.dumps(flags)


def gradio_get_routes() -> list[str]:
    """Every GET route of gradio's app without a path parameter (``/logout`` last: it ends the session)."""
    import gradio as gr
    from gradio.routes import App

    with gr.Blocks() as blocks:
        gr.Textbox()
    paths = {r.path for r in App.create_app(blocks).routes
             if "GET" in (getattr(r, "methods", None) or ()) and "{" not in r.path}
    return sorted(paths - {"/logout"}) + ["/logout"]


def test_no_route_and_no_log_line_shows_a_password(tmp_path):
    port = _free_port()
    log_path = tmp_path / "server.log"
    command = [sys.executable, "webui.py", "--port", str(port), "--data-dir", str(tmp_path), "--api-log",
               "--api-auth", f"alice:{API_PASSWORD}", "--gradio-auth", f"bob:{UI_PASSWORD}"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_answering(url, process, log_path)
        seen = {}
        with httpx.Client(base_url=url, timeout=60, auth=("alice", API_PASSWORD)) as api:
            schema = api.get("/openapi.json").json()
            api_gets = [p for p, methods in schema["paths"].items() if "get" in methods and "{" not in p]
            assert "/sdapi/v1/cmd-flags" in api_gets and "/sdapi/v1/options" in api_gets
            for path in api_gets:
                r = api.get(path)
                assert r.status_code == 200, (path, r.text)
                seen[path] = r.text
            assert json.loads(seen["/sdapi/v1/cmd-flags"])["gradio_auth"] == "<hidden>"
            assert api.get("/sdapi/v1/options", auth=("alice", UI_PASSWORD)).status_code == 401  # a wrong one
        with httpx.Client(base_url=url, timeout=60) as ui:
            assert ui.post("/login", data={"username": "bob", "password": UI_PASSWORD}).status_code == 200
            for path in gradio_get_routes():
                seen[f"ui {path}"] = ui.get(path).text
            assert "Serena" in seen["ui /config"]  # logged in: the UI's config was served
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    seen["server log"] = log_path.read_text(encoding="utf8", errors="replace")
    assert "Serena ready" in seen["server log"]
    leaks = [where for where, text in seen.items() if API_PASSWORD in text or UI_PASSWORD in text]
    assert not leaks, leaks


def _wait_until_answering(url, process, log_path, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text(errors="replace")[-4000:]
        try:
            if httpx.get(f"{url}/sdapi/v1/progress", timeout=2).status_code == 401:  # up, behind --api-auth
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"server not ready after {timeout} s:\n{log_path.read_text(errors='replace')[-4000:]}")
