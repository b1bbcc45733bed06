"""Scale-out on real Ray Serve: ``launch.py --nowebui --workers 2`` on 127.0.0.1 (a local Ray cluster of two CPUs,
two replicas of one CPU each), against a single-process server on the same machine."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import os
import signal
import time

import httpx
import pytest

ALT = "serena-tiny-alt"


def request(i: int) -> dict:
    """Eight different generations; the odd ones run on another checkpoint through an override."""
    body = {"prompt": f"a red circle {i}", "seed": 1000 + i, "steps": 3, "width": 64, "height": 64}
    if i % 2:
        body["override_settings"] = {"sd_model_checkpoint": ALT}
    return body


def image_digest(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text[:500]
    return hashlib.sha256(base64.b64decode(response.json()["images"][0])).hexdigest()


def post_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: httpx.post(f"{url}/sdapi/v1/txt2img", json=b, timeout=300), bodies))


@pytest.fixture(scope="module")
def single_digests(serena_server, tmp_path_factory, embedded_model):
    """What one process (no Ray) makes of the eight requests, one after another."""
    server = serena_server(tmp_path_factory.mktemp("single"))
    digests = [image_digest(httpx.post(f"{server.url}/sdapi/v1/txt2img", json=request(i), timeout=300))
               for i in range(8)]
    server.stop()  # its CPU is the workers' now
    return digests


@pytest.fixture(scope="module")
def workers_server(serena_server, tmp_path_factory, single_digests):
    return serena_server(tmp_path_factory.mktemp("workers"), "--workers", "2", script="launch.py", timeout=300)


def workers(url: str) -> list[dict]:
    return httpx.get(f"{url}/serena/v1/workers", timeout=10).json()


def test_two_workers_serve_concurrent_requests_with_the_single_process_bytes(workers_server, single_digests):
    url = workers_server.url
    listed = workers(url)
    assert len(listed) == 2 and len({w["pid"] for w in listed}) == 2
    # Extensions in the same resolved order on every replica as in the front.
    front_order = httpx.get(f"{url}/serena/v1/hooks", timeout=10).json()
    digest = hashlib.sha256(json.dumps(front_order, sort_keys=True).encode()).hexdigest()[:16]
    assert {w["hook_order"] for w in listed} == {digest}

    responses = post_all(url, [request(i) for i in range(8)])
    assert [image_digest(r) for r in responses] == single_digests
    served = {r.headers["x-serena-worker"] for r in responses}
    assert served == {w["name"] for w in listed}, served
    # Checkpoint-affine: one request at a time, alternating the two checkpoints, each goes to the replica that
    # holds its model (one model each at sd_checkpoints_limit 1): at most one more load while they settle, where
    # routing blind to the model would switch on about every other request.
    loads = sum(w["loads"] for w in workers(url))
    for i in range(6):
        assert httpx.post(f"{url}/sdapi/v1/txt2img", json=request(i), timeout=300).status_code == 200
    assert sum(w["loads"] for w in workers(url)) - loads <= 1
    assert len({tuple(w["models"]) for w in workers(url)}) == 2  # one replica per checkpoint
    # What the front answers itself is marked too.
    assert httpx.get(f"{url}/sdapi/v1/options", timeout=10).headers["x-serena-worker"] == "front"


def test_a_settings_change_reaches_every_replica_and_overrides_stay_per_request(workers_server):
    url = workers_server.url
    assert httpx.post(f"{url}/sdapi/v1/options", json={"eta_noise_seed_delta": 31337}, timeout=30).status_code == 200
    seen: dict[str, list[str]] = {}
    for _ in range(4):  # until both replicas have served after the change
        for r in post_all(url, [dict(request(0), seed=s) for s in range(4)]):
            assert r.status_code == 200, r.text[:300]
            seen.setdefault(r.headers["x-serena-worker"], []).append(r.json()["info"])
        if len(seen) == 2:
            break
    assert len(seen) == 2
    assert all("ENSD: 31337" in info for infos in seen.values() for info in infos)
    one = httpx.post(f"{url}/sdapi/v1/txt2img", timeout=120,
                     json=dict(request(0), override_settings={"eta_noise_seed_delta": 7})).json()["info"]
    assert "ENSD: 7" in one
    assert httpx.get(f"{url}/sdapi/v1/options", timeout=10).json()["eta_noise_seed_delta"] == 31337


def test_a_script_and_its_extension_run_on_a_worker(workers_server):
    body = dict(request(0), script_name="prompts from file or textbox",
                script_args=[False, False, "start", "a red circle\n--prompt \"a blue square\" --steps 2"])
    response = httpx.post(f"{workers_server.url}/sdapi/v1/txt2img", json=body, timeout=300)
    assert response.status_code == 200, response.text[:300]
    assert len(response.json()["images"]) == 2
    assert response.headers["x-serena-worker"] != "front"
    info = json.loads(response.json()["info"])
    # Each line's prompt goes before the request's ("start"), a --prompt line's too (A1111's rule).
    assert info["all_prompts"] == ["a red circle a red circle 0", "a blue square a red circle 0"]


def test_progress_shows_a_workers_job_and_interrupt_reaches_it(workers_server):
    url = workers_server.url
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        long_job = pool.submit(httpx.post, f"{url}/sdapi/v1/txt2img", timeout=300,
                               json={"prompt": "a long job", "steps": 150, "width": 64, "height": 64})
        deadline, progress = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            progress = httpx.get(f"{url}/sdapi/v1/progress", timeout=10).json()
            # The board may still show the previous job for one report interval: wait for this one.
            if progress["state"]["sampling_steps"] == 150 and progress["state"]["sampling_step"] > 0:
                break
            time.sleep(0.1)
        assert progress["state"]["job"] == "txt2img" and progress["state"]["sampling_steps"] == 150
        assert 0 < progress["progress"] < 1
        assert httpx.post(f"{url}/sdapi/v1/interrupt", timeout=10).status_code == 200
        response = long_job.result()
    assert response.status_code == 200
    # Stopped early (A1111 returns what was made so far): the replica is free again by its next report, and the
    # front's progress mirror, which reads the board on its own tick, clears by its next one.
    def running_job():
        return httpx.get(f"{url}/sdapi/v1/progress", timeout=10).json()["state"]["job"]

    deadline = time.monotonic() + 5
    while (any(w["busy"] for w in workers(url)) or running_job()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(w["busy"] for w in workers(url))
    assert running_job() == ""


def test_a_replica_killed_mid_job_is_one_503_and_the_next_requests_succeed(workers_server):
    url = workers_server.url
    assert httpx.post(f"{url}/sdapi/v1/options", json={"eta_noise_seed_delta": 4242}, timeout=30).status_code == 200
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        long_job = pool.submit(httpx.post, f"{url}/sdapi/v1/txt2img", timeout=300,
                               json={"prompt": "a long job", "steps": 150, "width": 64, "height": 64})
        deadline = time.monotonic() + 60
        busy = []
        while not busy and time.monotonic() < deadline:
            busy = [w for w in workers(url) if w["busy"]]
            time.sleep(0.1)
        assert busy, "no replica became busy"
        os.kill(busy[0]["pid"], signal.SIGKILL)
        response = long_job.result()
    assert response.status_code == 503, response.text[:300]
    assert "worker" in response.json()["detail"]
    for r in post_all(url, [request(0), request(2)]):
        assert r.status_code == 200, r.text[:300]
    # No settings were lost with the replica.
    assert httpx.get(f"{url}/sdapi/v1/options", timeout=10).json()["eta_noise_seed_delta"] == 4242
