"""The composed app: API before the UI, extension routes not shadowed, --gradio-auth protecting the UI."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

import webui
from modules import cmd_args


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
