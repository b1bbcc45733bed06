"""Schemathesis against Serena's own OpenAPI schema on a real server: no 5xx, no hang, JSON for every 4xx.

Every operation the server publishes (all of ``/sdapi/v1`` and ``/serena/v1``) gets a bounded, seeded run of
positive (schema-valid) and negative (schema-violating) cases. The server starts with its ``api_max_*`` limits set
as low as they go, so whatever generation the fuzzer gets accepted is a 64x64, 2-step, 1-2 image job on the
embedded model (well under a second). Afterwards the server must still answer promptly, and its stored options may
differ only where an accepted request set them.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
import requests
import schemathesis
from schemathesis import GenerationMode

# As low as each limit goes (api_max_infotext_chars has a floor of 1024). A client cannot lift them through POST
# /options or override_settings (restrict_api), so they hold for the whole run.
LIMITS = {"api_max_width": 64, "api_max_height": 64, "api_max_steps": 2, "api_max_images": 2,
          "api_max_infotext_chars": 1024}
MAX_EXAMPLES = 15  # fuzzing-phase cases per operation and mode; the examples and coverage phases add their own
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
    return server


@pytest.fixture(scope="module")
def stored_changes():
    """Option keys that accepted requests were allowed to store (POST /options, or overrides kept afterwards)."""
    return set()


@pytest.fixture(scope="module")
def options_before(fuzz_server):
    return httpx.get(fuzz_server.url + OPTIONS_PATH, timeout=REQUEST_TIMEOUT).json()


@pytest.fixture(scope="module")
def api_schema(fuzz_server, options_before):
    config = schemathesis.Config(seed=SEED)  # no schemathesis.toml discovery: the run is defined here alone
    project = config.projects.get_default()
    project.update(base_url=fuzz_server.url, request_timeout=REQUEST_TIMEOUT)
    project.generation.update(modes=list(GenerationMode), max_examples=MAX_EXAMPLES, deterministic=True,
                              database="none")
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json", config=config,
                                           timeout=REQUEST_TIMEOUT)
    paths = {operation.ok().path for operation in schema.get_all_operations()}
    assert paths and all(path.startswith(("/sdapi/v1/", "/serena/v1/")) for path in paths), paths
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _schemathesis_node_id(request):
    """schemathesis 4.32.5's lazy schema reads and rewrites ``node._nodeid``, which pytest 9.2 renamed (``_id``)."""
    request.node._nodeid = request.node.nodeid


def _is_json(response) -> bool:
    try:
        response.json()
    except ValueError:
        return False
    return True


def _record_stored_change(case, response, stored_changes: set) -> None:
    if response.status_code != 200 or not isinstance(case.body, dict):
        return
    if case.method.upper() == "POST" and case.path == OPTIONS_PATH:
        stored_changes.update(case.body)
    elif case.body.get("override_settings_restore_afterwards") is False and isinstance(
            case.body.get("override_settings"), dict):
        stored_changes.update(case.body["override_settings"])


@schema.parametrize()
def test_api_fuzz(case, fuzz_server, stored_changes):
    log_offset = fuzz_server.log_path.stat().st_size
    started = time.monotonic()
    try:
        response = case.call(timeout=REQUEST_TIMEOUT)
    except requests.Timeout:
        pytest.fail(f"no response in {REQUEST_TIMEOUT} s:\n{case.as_curl_command()}\n{_log_since(fuzz_server, log_offset)}")
    elapsed = time.monotonic() - started
    assert response.status_code < 500, (f"{response.status_code} after {elapsed:.1f} s:\n{case.as_curl_command()}\n"
                                        f"{response.text[:2000]}\nserver log:\n{_log_since(fuzz_server, log_offset)}")
    if 400 <= response.status_code < 500:
        assert _is_json(response), (f"{response.status_code} without a JSON body:\n{case.as_curl_command()}\n"
                                    f"{response.text[:500]}")
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
    before = options_before
    changed = {key for key in set(before) | set(after) if before.get(key) != after.get(key)}
    assert changed <= stored_changes, {key: (before.get(key), after.get(key)) for key in changed - stored_changes}
    assert {key: after[key] for key in LIMITS} == LIMITS
