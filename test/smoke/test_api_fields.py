"""Every /sdapi/v1 response has A1111 1.10's fields with A1111's JSON types (``test/quality/a1111_api_fields.json``).

The app runs in-process with the real embedded model (64 px, two steps): generations, extras and PNG info return
what a client really gets. A missing field, a ``null`` where A1111 sends a number, a string where it sends an
integer: each fails, naming the route and the field's path.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re

import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
with open(os.path.join(ROOT, "test", "quality", "a1111_api_fields.json"), encoding="utf8") as f:
    TABLE = json.load(f)["routes"]
DOCS = os.path.join(ROOT, "docs", "api.md")

JSON_TYPES = {"string": str, "boolean": bool, "object": dict, "array": list, "null": type(None)}


def type_ok(value, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, JSON_TYPES[name])


def mismatches(value, shape, where: str, skip: set) -> list[str]:
    """Every place where ``value`` does not have ``shape`` (the table's little language), as 'path: why'."""
    if where in skip:
        return []
    if isinstance(shape, (str, list)):
        names = [shape] if isinstance(shape, str) else shape
        if any(type_ok(value, n) for n in names):
            return []
        return [f"{where}: {json.dumps(value)[:60]} is not {' or '.join(names)}"]
    (kind, inner), = shape.items()
    if kind == "json":
        if not isinstance(value, str):
            return [f"{where}: not a JSON string"]
        return mismatches(json.loads(value), inner, where, skip)
    if kind == "array":
        if not isinstance(value, list):
            return [f"{where}: {json.dumps(value)[:60]} is not an array"]
        return [m for i, item in enumerate(value) for m in mismatches(item, inner, f"{where}[{i}]", skip)]
    if not isinstance(value, dict):
        return [f"{where}: {json.dumps(value)[:60]} is not an object"]
    found = []
    for field, sub in inner.items():
        path = f"{where}.{field}" if where else field
        if field not in value:
            found.append(f"{path}: missing")
        else:
            found.extend(mismatches(value[field], sub, path, skip))
    return found


def check(route: str, body) -> list[str]:
    entry = TABLE[route]
    skip = set(entry.get("serena_differs", {}))
    return mismatches(body, entry["shape"], "", skip)


def png_b64(size=(64, 64), color=(200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


SMALL = {"prompt": "a red square", "steps": 2, "seed": 5}


def requests_for(client) -> dict:
    """One real request per route of the table: (method, path) -> response."""
    image = png_b64()
    calls = {
        "POST /sdapi/v1/txt2img": SMALL,
        "POST /sdapi/v1/img2img": dict(SMALL, init_images=[image], denoising_strength=0.5),
        "POST /sdapi/v1/extra-single-image": {"image": image, "upscaler_1": "Lanczos", "upscaling_resize": 2},
        "POST /sdapi/v1/extra-batch-images": {"imageList": [{"data": image, "name": "a.png"}],
                                              "upscaler_1": "Nearest", "upscaling_resize": 1.5},
        "POST /sdapi/v1/options": {},
    }
    responses = {}
    for route in TABLE:
        method, path = route.split(" ", 1)
        if route == "POST /sdapi/v1/png-info":
            generated = responses["POST /sdapi/v1/txt2img"].json()["images"][0]
            responses[route] = client.post(path, json={"image": generated})
        elif method == "GET":
            responses[route] = client.get(path)
        else:
            responses[route] = client.post(path, json=calls.get(route)) if route in calls else client.post(path)
    return responses


def test_table_covers_every_sdapi_route_served(real_client):
    served = {f"{method} {route.path}" for route in real_client.app.routes
              if route.path.startswith("/sdapi/v1/") for method in getattr(route, "methods", ())}
    assert served == set(TABLE), f"served but not in the table: {served - set(TABLE)}; " \
                                 f"in the table but not served: {set(TABLE) - served}"


def test_every_response_has_a1111s_fields_and_types(real_client):
    responses = requests_for(real_client)
    failures = []
    for route, response in responses.items():
        if response.status_code != 200:
            failures.append(f"{route}: status {response.status_code}: {response.text[:200]}")
            continue
        failures.extend(f"{route} {m}" for m in check(route, response.json()))
    assert not failures, "\n".join(failures)


def test_generation_without_a_size_uses_the_checkpoints_native_size(real_client):
    body = real_client.post("/sdapi/v1/txt2img", json=SMALL).json()
    info = json.loads(body["info"])
    assert (body["parameters"]["width"], body["parameters"]["height"]) == (64, 64) == (info["width"], info["height"])
    assert Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).size == (64, 64)


@pytest.mark.parametrize("bad,expected", [
    ({"progress": None, "eta_relative": 0, "state": {}, "current_image": None, "textinfo": None},
     ["progress: null is not number", "state.skipped: missing"]),
    ({"progress": 0, "eta_relative": "1", "current_image": None, "textinfo": None,
      "state": {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
                "job_timestamp": "0", "job_no": True, "sampling_step": 0, "sampling_steps": 1.5}},
     ["eta_relative: \"1\" is not number", "state.job_no: true is not integer",
      "state.sampling_steps: 1.5 is not integer"]),
])
def test_the_checker_catches_missing_fields_and_wrong_types(bad, expected):
    found = check("GET /sdapi/v1/progress", bad)
    assert all(any(m.startswith(e.split(":")[0]) for m in found) for e in expected), found
    assert len(found) >= len(expected)


def test_upscaler_with_null_scale_is_caught():
    assert check("GET /sdapi/v1/upscalers", [{"name": "None", "model_name": None, "model_path": None,
                                              "model_url": None, "scale": None}]) == [
        "[0].scale: null is not number"]


def test_every_deliberate_difference_is_documented():
    docs = open(DOCS, encoding="utf8").read()
    for route, entry in TABLE.items():
        for field in entry.get("serena_differs", {}):
            assert re.search(rf"`{re.escape(field)}`", docs), f"docs/api.md does not mention {route} `{field}`"
