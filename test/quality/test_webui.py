"""The composed app: API before the UI, extension routes not shadowed, --gradio-auth, CORS flags, --api-log, the
starting checkpoint loaded behind the generation queue while the server answers."""

from __future__ import annotations

import os
import re
import threading
import time
import types

import pytest
from fastapi.testclient import TestClient

import webui
from modules import cmd_args, jobs, sd_models


@pytest.fixture
def app_with_login(data_dir, fake_models):
    return webui.create_app(cmd_args.parse_args(["--gradio-auth", "ann:pa:ss", "--data-dir", str(data_dir)]))


def test_gradio_auth_protects_the_ui_not_the_api_flag(app_with_login):
    with TestClient(app_with_login) as client:
        assert client.get("/config").status_code == 401
        assert client.get("/sdapi/v1/progress").status_code == 200  # the API has its own --api-auth
        bad = client.post("/login", data={"username": "ann", "password": "pa"})
        assert bad.status_code >= 400
        good = client.post("/login", data={"username": "ann", "password": "pa:ss"})
        assert good.status_code == 200
        assert client.get("/config").status_code == 200


def test_malformed_gradio_auth_names_the_flag(data_dir):
    with pytest.raises(ValueError, match="--gradio-auth"):
        webui.create_app(cmd_args.parse_args(["--gradio-auth", ":nouser", "--data-dir", str(data_dir)]))


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc"])
def test_api_auth_protects_the_api_description(data_dir, fake_models, path):
    with TestClient(api_app(data_dir, "--api-auth", "ann:pa:ss")) as client:
        refused = client.get(path)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Basic"
        assert client.get(path, auth=("ann", "wrong")).status_code == 401
        allowed = client.get(path, auth=("ann", "pa:ss"))
        assert allowed.status_code == 200
        if path == "/openapi.json":
            assert "/sdapi/v1/txt2img" in allowed.json()["paths"]
            assert "/docs" not in allowed.json()["paths"]  # the description does not list itself
        else:
            assert "/openapi.json" in allowed.text


def test_api_description_is_open_without_api_auth(data_dir, fake_models):
    with TestClient(api_app(data_dir)) as client:
        assert client.get("/openapi.json").status_code == 200 and client.get("/docs").status_code == 200


def test_listen_without_gradio_auth_warns(data_dir, fake_models, caplog):
    with caplog.at_level("WARNING", logger="serena"):
        webui.create_app(cmd_args.parse_args(["--listen", "--data-dir", str(data_dir)]))
    assert "--listen without --gradio-auth" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="serena"):
        webui.create_app(cmd_args.parse_args(["--listen", "--gradio-auth", "a:b", "--data-dir", str(data_dir)]))
    assert "--gradio-auth" not in caplog.text


# -- CORS (off unless a flag names origins) and --api-log ------------------------------------------------------

PREFLIGHT = {"Origin": "http://paint.test:3000", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "content-type,authorization"}


def api_app(data_dir, *flags):
    return webui.create_app(cmd_args.parse_args(["--nowebui", "--data-dir", str(data_dir), *flags]))


def test_no_cors_without_the_flag(data_dir, fake_models):
    with TestClient(api_app(data_dir)) as client:
        assert client.options("/sdapi/v1/txt2img", headers=PREFLIGHT).status_code == 405
        r = client.get("/sdapi/v1/progress", headers={"Origin": "http://paint.test:3000"})
        assert r.status_code == 200 and not any(k.lower().startswith("access-control-") for k in r.headers)


def test_cors_allows_the_listed_origins_only(data_dir, fake_models):
    flags = ["--cors-allow-origins", "http://paint.test:3000,http://other.test", "--api-auth", "ann:secret"]
    with TestClient(api_app(data_dir, *flags)) as client:
        r = client.options("/sdapi/v1/txt2img", headers=PREFLIGHT)  # no credentials: browsers send none here
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "http://paint.test:3000"
        assert r.headers["access-control-allow-credentials"] == "true"
        assert "POST" in r.headers["access-control-allow-methods"]
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        simple = client.get("/sdapi/v1/progress", headers={"Origin": "http://other.test"}, auth=("ann", "secret"))
        assert simple.status_code == 200 and simple.headers["access-control-allow-origin"] == "http://other.test"
        # An origin not listed: the preflight is refused and no response tells the browser it may read it.
        denied = client.options("/sdapi/v1/txt2img", headers=dict(PREFLIGHT, Origin="http://evil.test"))
        assert denied.status_code == 400 and "access-control-allow-origin" not in denied.headers
        r = client.get("/sdapi/v1/progress", headers={"Origin": "http://evil.test"}, auth=("ann", "secret"))
        assert "access-control-allow-origin" not in r.headers


def test_cors_origin_regex(data_dir, fake_models):
    with TestClient(api_app(data_dir, "--cors-allow-origins-regex", r"https?://localhost(:\d+)?")) as client:
        ok = client.options("/sdapi/v1/txt2img", headers=dict(PREFLIGHT, Origin="http://localhost:5173"))
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://localhost:5173"
        assert client.options("/sdapi/v1/txt2img",
                              headers=dict(PREFLIGHT, Origin="http://localhost.evil.test")).status_code == 400


def test_api_log_logs_method_path_status_and_time(data_dir, fake_models, caplog):
    caplog.set_level("INFO", logger="serena.api.requests")
    with TestClient(api_app(data_dir, "--api-log")) as client:
        client.get("/sdapi/v1/progress")
        client.post("/sdapi/v1/options", json={"no_such_option": 1})
        client.get("/openapi.json")  # not an API call: not logged, as in A1111
    lines = [r.getMessage() for r in caplog.records if r.name == "serena.api.requests"]
    assert len(lines) == 2, lines
    assert re.fullmatch(r"API GET /sdapi/v1/progress 200 \S+ \d+\.\d{4}", lines[0]), lines[0]
    assert lines[1].startswith("API POST /sdapi/v1/options 422 ")


def test_no_api_log_without_the_flag(data_dir, fake_models, caplog):
    caplog.set_level("INFO", logger="serena.api.requests")
    with TestClient(api_app(data_dir)) as client:
        r = client.get("/sdapi/v1/progress")
    assert not [r for r in caplog.records if r.name == "serena.api.requests"]
    assert float(r.headers["x-process-time"]) >= 0  # A1111's header, with or without --api-log


def test_settings_page_offers_the_checkpoints_and_vaes_the_model_layer_lists(data_dir):
    # The choices are attached by the model layer (modules.model_options); the page reads them from the option.
    from modules import sd_models
    from modules.ui import settings
    titles = [c.title for c in sd_models.list_checkpoints()]
    assert [t.split(" [")[0] for t in titles] == ["alpha.safetensors", "beta.safetensors"]
    assert settings.quick_choices("sd_model_checkpoint") == [(t, t) for t in titles]  # unreadable: not marked
    assert settings.quick_choices("sd_vae") == ["Automatic", "None", "sharp.safetensors"]


# -- the starting checkpoint loads while the server answers ----------------------------------------------------

@pytest.fixture
def slow_models(data_dir, monkeypatch):
    """A loaded-models cache whose loads wait for ``release`` (set it to let a load finish); ``inspected`` lists
    the files checked, in order."""
    release, loaded, inspected = threading.Event(), [], []

    def load(info):
        release.wait(30)
        loaded.append(info.name)
        return types.SimpleNamespace(info=info, vae_name=None)

    def inspect(kind, path):
        inspected.append(os.path.basename(path))
        return types.SimpleNamespace(text_encoder_layers=2, latent_channels=4)

    manager = sd_models.LoadedModels(load, inspect)
    manager.release, manager.loaded_names, manager.inspected = release, loaded, inspected
    monkeypatch.setattr(sd_models, "model_manager", manager)
    yield manager
    release.set()


def test_app_is_built_without_loading_a_model(data_dir, fake_models):
    webui.create_app(cmd_args.parse_args(["--data-dir", str(data_dir)]))  # API and web UI
    assert fake_models.loads == 0 and fake_models.current is None


def test_requests_that_need_the_model_wait_for_the_starting_load(data_dir, slow_models):
    with TestClient(api_app(data_dir)) as client:
        loader = webui.load_starting_model(time.perf_counter())
        assert slow_models.inspected == ["alpha.safetensors"]  # checked before serving; only the weights load late
        assert jobs.queue_lock.locked()  # taken before the first request can queue
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("alpha")
        assert client.get("/sdapi/v1/progress").status_code == 200  # the server answers meanwhile
        answered = []
        reload = threading.Thread(target=lambda: answered.append(client.post("/sdapi/v1/reload-checkpoint")))
        reload.start()
        reload.join(0.5)
        assert not answered  # queued behind the load, not failed
        slow_models.release.set()
        loader.join(10)
        reload.join(10)
    assert answered[0].status_code == 200
    assert slow_models.loaded_names == ["alpha.safetensors"]  # the reload found the starting model, loaded once
    assert slow_models.current.name == "alpha.safetensors" and not jobs.queue_lock.locked()


def test_starting_model_that_cannot_load_is_logged_and_frees_the_queue(data_dir, monkeypatch, caplog):
    def broken(info):
        raise ValueError(f"{info.name}: truncated")

    monkeypatch.setattr(sd_models, "model_manager", sd_models.LoadedModels(broken))
    with caplog.at_level("INFO", logger="serena"):
        webui.load_starting_model(time.perf_counter()).join(10)
    assert not jobs.queue_lock.locked()
    assert "no model loaded at start-up" in caplog.text and "truncated" in caplog.text
    assert "start-up took" in caplog.text and "(checkpoint: None)" in caplog.text
