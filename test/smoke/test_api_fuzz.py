"""Schemathesis against Serena's own OpenAPI schema on a real server: no 5xx, no hang, JSON for every 4xx.

Every operation the server publishes (all of ``/sdapi/v1`` and ``/serena/v1``) gets a bounded, seeded run of
positive (schema-valid) and negative (schema-violating) cases. The server starts with its ``api_max_*`` limits set
as low as they go, so whatever generation the fuzzer gets accepted is a 64x64, 2-step, 1-2 image job on the
embedded model (well under a second). Afterwards the server must still answer promptly, and its stored options may
differ only where an accepted request set them (POST /options, or overrides kept with
``override_settings_restore_afterwards: false``).

The schema the fuzzer reads is the server's own (``GET /openapi.json``), narrowed to what the handlers check on top
of it (``_narrow``) so that positive cases reach generation, upscaling and option storage instead of all being
refused at validation. No operation is left out and every mode runs on every one, long ones (reload-checkpoint,
refresh-checkpoints) included: the limits bound them.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import time

import httpx
import pytest
import requests
import schemathesis
from PIL import Image, PngImagePlugin
from schemathesis import GenerationMode

from modules.request_preparation import MAX_UPSCALED_SIDE

# As low as each limit goes (api_max_infotext_chars has a floor of 1024). A client cannot lift them through POST
# /options or override_settings (restrict_api), so they hold for the whole run.
LIMITS = {"api_max_width": 64, "api_max_height": 64, "api_max_steps": 2, "api_max_images": 2,
          "api_max_infotext_chars": 1024, "api_max_prompt_chars": 1000, "api_max_input_images": 2,
          "api_max_input_pixels": 1024 * 1024, "api_max_output_pixels": 1024 * 1024,
          "api_max_request_bytes": 1024 * 1024, "api_max_json_values": 1000}
MAX_EXAMPLES = 25  # fuzzing-phase cases per operation and mode; the examples and coverage phases add their own
SEED = 20261202  # fixed, and derandomized: CI sees the same cases on every run
REQUEST_TIMEOUT = 30  # seconds; any single request slower than this counts as a hang
OPTIONS_PATH = "/sdapi/v1/options"


@pytest.fixture(scope="module")
def fuzz_server(serena_server, embedded_model, tmp_path_factory):
    data = tmp_path_factory.mktemp("serena-fuzz")
    (data / "config.json").write_text(json.dumps(LIMITS), encoding="utf8")
    server = serena_server(data)
    options = httpx.get(server.url + OPTIONS_PATH, timeout=REQUEST_TIMEOUT).json()
    assert {key: options[key] for key in LIMITS} == LIMITS  # the limits took before the first fuzzed request
    assert {key for key in options if key.startswith("api_max_")} == set(LIMITS)  # a new limit is set low here too
    return server


@pytest.fixture(scope="module")
def stored_changes():
    """Option values accepted requests stored, last one wins (POST /options, or overrides kept afterwards)."""
    return {}


@pytest.fixture(scope="module")
def options_before(fuzz_server):
    return httpx.get(fuzz_server.url + OPTIONS_PATH, timeout=REQUEST_TIMEOUT).json()


def _png(size: int, colour: str, parameters: str | None = None) -> str:
    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _narrow(raw: dict, options: dict, samplers: list[str], schedulers: list[str], upscalers: list[str]) -> dict:
    """The server's schema, with what its handlers check beyond it written in, so positive cases get past
    validation and reach the code behind it; negative cases break these bounds as well as the published ones.

    Only narrowing: every positive case here is schema-valid for the published schema too. The schema says
    ``integer`` and ``string`` where the server needs steps within this run's limits, a real sampler, a decodable
    image, an option key; fuzzed at random those would be refused before anything else ran.
    """
    models = raw["components"]["schemas"]
    # Option keys with the JSON type of their current value: POST /options, overrides/validate, override_settings.
    # What a valid case stores stays cheap for the cases after it (the api_max_* limits and outdir_* cannot be set
    # by a client), so no operation needs its positive cases left out or the config reset between operations.
    json_types = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", type(None): "null"}
    option_body = {"type": "object", "additionalProperties": False,
                   "properties": {key: {"type": json_types[type(value)]} for key, value in options.items()}}
    for path in (OPTIONS_PATH, "/serena/v1/overrides/validate"):
        raw["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"] = option_body
    image = _png(64, "red")
    for name in ("StableDiffusionTxt2ImgProcessingAPI", "StableDiffusionImg2ImgProcessingAPI"):
        fields = models[name]["properties"]
        models[name]["required"] = ["steps"]  # the default (50) is above this run's api_max_steps
        fields["steps"].update(minimum=1, maximum=LIMITS["api_max_steps"])
        for side in ("width", "height"):
            fields[side]["anyOf"][0].update(minimum=8, maximum=LIMITS[f"api_max_{side}"], multipleOf=8)
        fields["batch_size"].update(minimum=1, maximum=LIMITS["api_max_images"])
        fields["n_iter"].update(minimum=1, maximum=1)
        fields["sampler_name"]["anyOf"][0]["enum"] = samplers
        fields["sampler_index"]["enum"] = samplers
        fields["scheduler"]["anyOf"][0]["enum"] = schedulers
        fields["styles"]["anyOf"][0]["maxItems"] = 0  # the fuzz data folder has no styles.csv (a name is a 422)
        fields["script_name"] = {"type": "null"}  # scripts are checked by test_scripts.py
        fields["script_args"]["maxItems"] = 0
        fields["alwayson_scripts"]["maxProperties"] = 0
        fields["override_settings"]["anyOf"][0] = option_body
        fields["infotext"]["anyOf"][0]["maxLength"] = LIMITS["api_max_infotext_chars"]
    models["StableDiffusionImg2ImgProcessingAPI"]["required"].append("init_images")
    models["ExtrasSingleImageRequest"]["required"] = ["image"]
    img2img = models["StableDiffusionImg2ImgProcessingAPI"]["properties"]
    img2img["init_images"]["anyOf"][0].update(items={"enum": [image, "data:image/png;base64," + image]},
                                              minItems=1)
    img2img["mask"]["anyOf"][0]["enum"] = [_png(64, "white")]
    img2img["resize_mode"].update(minimum=0, maximum=0)
    models["ExtrasSingleImageRequest"]["properties"]["image"]["enum"] = [_png(8, "blue")]
    models["FileData"]["properties"]["data"]["enum"] = [_png(8, "green")]
    models["PNGInfoRequest"]["properties"]["image"]["enum"] = [
        _png(8, "black", "a cat\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64"), _png(8, "black")]
    for name in ("ExtrasSingleImageRequest", "ExtrasBatchImagesRequest"):
        fields = models[name]["properties"]
        for side in ("upscaling_resize_w", "upscaling_resize_h"):
            fields[side]["maximum"] = MAX_UPSCALED_SIDE
        fields["upscaler_1"]["enum"] = fields["upscaler_2"]["enum"] = upscalers
    return raw


@pytest.fixture(scope="module")
def api_schema(fuzz_server, options_before):
    get = functools.partial(_get_json, fuzz_server)
    raw = _narrow(get("/openapi.json"), options_before, [s["name"] for s in get("/sdapi/v1/samplers")],
                  [s["label"] for s in get("/sdapi/v1/schedulers")], [u["name"] for u in get("/sdapi/v1/upscalers")])
    # An explicit config: no schemathesis.toml discovery, so the run is defined here alone.
    schema = schemathesis.openapi.from_dict(raw, config=schemathesis.Config(seed=SEED))
    schema.config.update(base_url=fuzz_server.url)
    schema.config.generation.update(modes=list(GenerationMode), max_examples=MAX_EXAMPLES, deterministic=True,
                                    database="none")
    paths = {operation.ok().path for operation in schema.get_all_operations()}
    assert paths and all(path.startswith(("/sdapi/v1/", "/serena/v1/")) for path in paths), paths
    return schema


def _get_json(server, path: str):
    response = httpx.get(server.url + path, timeout=REQUEST_TIMEOUT)
    response.raise_for_status()
    return response.json()


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _schemathesis_node_id(request):
    """schemathesis 4.32.5's lazy schema reads and rewrites ``node._nodeid``, which pytest 9.2 renamed (``_id``)."""
    request.node._nodeid = request.node.nodeid


def _is_error_json(response) -> bool:
    """A1111's error shape (``{"error", "detail", "body", "errors"}``) or FastAPI's (``{"detail": ...}``)."""
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and "detail" in body


def _record_stored_change(case, response, stored_changes: dict) -> None:
    if response.status_code != 200:
        return
    if case.method.upper() == "POST" and case.path == OPTIONS_PATH:
        stored_changes.update(case.body)
    elif case.path.endswith("2img"):
        # The echoed request holds the overrides as applied, those read from an ``infotext`` included.
        parameters = response.json()["parameters"]
        if parameters["override_settings_restore_afterwards"] is False:
            stored_changes.update(parameters["override_settings"] or {})


@schema.parametrize()
def test_api_fuzz(case, fuzz_server, stored_changes):
    log_offset = fuzz_server.log_path.stat().st_size
    started = time.monotonic()
    try:
        response = case.call(timeout=REQUEST_TIMEOUT)
    except requests.Timeout:
        pytest.fail(f"no response in {REQUEST_TIMEOUT} s:\n{case.as_curl_command()}\n"
                    f"server log:\n{_log_since(fuzz_server, log_offset)}")
    elapsed = time.monotonic() - started
    assert response.status_code < 500, (f"{response.status_code} after {elapsed:.1f} s:\n{case.as_curl_command()}\n"
                                        f"{response.text[:2000]}\nserver log:\n{_log_since(fuzz_server, log_offset)}")
    if 400 <= response.status_code < 500:
        assert _is_error_json(response), (f"{response.status_code} without a JSON error body:\n"
                                          f"{case.as_curl_command()}\n{response.text[:500]}")
    _record_stored_change(case, response, stored_changes)


def _log_since(server, offset: int) -> str:
    with open(server.log_path, "rb") as log:
        log.seek(offset)
        return log.read(8000).decode("utf8", errors="replace")


def test_server_sound_after_fuzzing(fuzz_server, options_before, stored_changes):
    """Runs after test_api_fuzz (file order): the server still answers, and only accepted requests changed options."""
    started = time.monotonic()
    progress = httpx.get(fuzz_server.url + "/sdapi/v1/progress", timeout=REQUEST_TIMEOUT)
    assert progress.status_code == 200 and time.monotonic() - started < 2
    after = httpx.get(fuzz_server.url + OPTIONS_PATH, timeout=REQUEST_TIMEOUT).json()
    expected = dict(options_before, **stored_changes)
    assert after == expected, {key: (options_before.get(key), expected.get(key), after.get(key))
                               for key in set(expected) | set(after) if expected.get(key) != after.get(key)}
    assert {key: after[key] for key in LIMITS} == LIMITS
