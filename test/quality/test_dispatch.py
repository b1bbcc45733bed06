"""Where a generation runs (``modules.dispatch``) and the scale-out pieces that need no Ray cluster
(``modules.scale_out``): the real Ray Serve path is ``test/smoke/test_scale_out.py``."""

from __future__ import annotations

import subprocess
import sys

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import launch
from modules import cmd_args, dispatch, jobs, scale_out, scripts, sd_models, shared

BODY = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64}


@pytest.fixture
def remote():
    """A stand-in for the workers: records what reaches it, answers with what the test sets."""
    calls = []
    answer = {}

    def runner(name, p):
        calls.append((name, p, jobs.queue_lock.locked()))
        if "error" in answer:
            raise answer["error"]
        return answer["value"]

    dispatch.use_remote(runner)
    yield calls, answer
    dispatch.use_remote(None)


def test_run_here_holds_the_queue_and_calls_wrap_in_the_jobs_turn(monkeypatch):
    seen = []
    monkeypatch.setattr(scripts, "run", lambda p: seen.append(("run", p, jobs.state.job)) or "processed")

    def wrap(generate):
        seen.append(("wrap", jobs.queue_lock.locked()))
        return generate()

    assert not dispatch.is_remote()
    assert dispatch.run("txt2img", "p", wrap=wrap) == "processed"
    assert seen == [("wrap", True), ("run", "p", "txt2img")]
    assert not jobs.queue_lock.locked() and not jobs.state.busy


def test_a_remote_runner_gets_checked_requests_outside_this_process_queue(data_dir, fake_models, api_client,
                                                                         remote):
    calls, answer = remote
    answer["error"] = dispatch.WorkerUnavailable("the worker running this generation stopped: killed")
    response = api_client.post("/sdapi/v1/txt2img", json=BODY)
    assert response.status_code == 503
    assert response.json()["error"] == "WorkerUnavailable" and "killed" in response.json()["detail"]
    [(name, p, locked)] = calls
    assert name == "txt2img" and p.prompt == "a cat" and not locked  # workers run side by side

    # A request the front refuses never reaches a worker.
    bad = api_client.post("/sdapi/v1/txt2img", json=dict(BODY, override_settings={"CLIP_stop_at_last_layers": 99}))
    assert bad.status_code == 422 and "CLIP_stop_at_last_layers" in bad.text
    assert len(calls) == 1


@pytest.mark.parametrize("argv, expected", [
    (["--workers", "2", "--port", "7000", "--data-dir", "d"], ["--data-dir", "d", "--nowebui"]),
    (["--workers=2", "--ray-address", "auto", "--api-log"], ["--api-log", "--nowebui"]),
    (["--nowebui", "--port=1", "--workers", "3"], ["--nowebui", "--nowebui"]),
])
def test_replicas_start_with_the_fronts_flags_less_serving_and_scaling(argv, expected):
    assert scale_out.worker_argv(argv) == expected
    cmd_args.parse_args(scale_out.worker_argv(argv))  # a replica's flags parse


def test_the_routing_key_is_the_effective_checkpoint(data_dir, fake_models):
    from types import SimpleNamespace

    alpha, beta = (sd_models.resolve_checkpoint(name).title for name in ("alpha", "beta"))
    shared.opts.set("sd_model_checkpoint", "alpha.safetensors")
    assert scale_out.effective_model_id(SimpleNamespace(override_settings={})) == alpha
    assert scale_out.effective_model_id(SimpleNamespace(override_settings={"sd_model_checkpoint": "beta"})) == beta


def test_every_response_names_the_worker_that_served_it():
    def generated(request):
        scale_out.served_by.get()["worker"] = "replica-7"  # what the front's runner does with a worker's answer
        return PlainTextResponse("image")

    async def answered_here(request):
        return PlainTextResponse("options")

    app = Starlette(routes=[Route("/gen", generated), Route("/opts", answered_here)])
    client = TestClient(scale_out.WorkerHeader(app))
    assert client.get("/gen").headers["x-serena-worker"] == "replica-7"  # set in the handler's thread
    assert client.get("/opts").headers["x-serena-worker"] == scale_out.FRONT


def test_scaling_out_is_opt_in_for_flags_and_installs():
    assert launch.SCALE_OUT_REQUIREMENTS not in launch.requirement_files(cmd_args.parse_args([]))
    assert launch.SCALE_OUT_REQUIREMENTS in launch.requirement_files(cmd_args.parse_args(["--workers", "2"]))
    assert launch.SCALE_OUT_REQUIREMENTS in launch.requirement_files(cmd_args.parse_args(["--ray-address", "auto"]))
    assert launch.SCALE_OUT_REQUIREMENTS in launch.requirement_files(cmd_args.parse_args([]), with_tests=True)
    with pytest.raises(SystemExit):
        cmd_args.parse_args(["--workers", "0"])


def test_one_process_never_imports_ray():
    code = ("import sys, webui, modules.api.api, modules.ui, modules.scale_out, modules.dispatch; "
            "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))")
    subprocess.run([sys.executable, "-c", code], cwd=launch.ROOT, check=True, timeout=120)


@pytest.mark.parametrize("env, expected", [({"OMP_NUM_THREADS": "3"}, 3), ({"OMP_NUM_THREADS": "x"}, None), ({}, None)])
def test_workers_use_the_thread_count_of_a_single_process(monkeypatch, env, expected):
    import os

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert scale_out.single_process_threads() == (expected or os.cpu_count())
