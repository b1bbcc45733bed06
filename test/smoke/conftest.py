"""Smoke-test fixtures: real Serena server processes on 127.0.0.1.

``serena_server(data_dir, *extra_flags, script="webui.py")`` starts ``webui.py --nowebui`` (or ``launch.py``) on a free port with ``--data-dir data_dir``,
waits until ``GET /sdapi/v1/progress`` answers, and returns a ``ServerProcess`` (``.url``, ``.port``, ``.log()``,
``.stop()``). Every server a module started is stopped when the module's tests are done; a test that needs a
fresh process calls ``.stop()`` itself. The process helpers live in ``tools/server_process.py`` (shared with
``bench/soak.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from modules import paths, sd_models, shared
from tools.server_process import STARTUP_TIMEOUT, ServerProcess, start_server

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_MODEL = ROOT / "models" / "Stable-diffusion" / "serena-shapes-v1.safetensors"


@pytest.fixture(scope="module")
def serena_server():
    """A factory: ``serena_server(data_dir, *extra_flags) -> ServerProcess``; all are stopped after the module."""
    started: list[ServerProcess] = []

    def start(data_dir, *extra_flags, timeout: float = STARTUP_TIMEOUT, script: str = "webui.py") -> ServerProcess:
        server = start_server(data_dir, *extra_flags, timeout=timeout, script=script)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def embedded_model():
    """Skip when the embedded default checkpoint has not been built (``tools/train_default_model.py``, see docs/models.md)."""
    if not EMBEDDED_MODEL.exists():
        pytest.skip(f"{EMBEDDED_MODEL.relative_to(ROOT)} is missing; build it with tools/train_default_model.py (docs/models.md)")
    return EMBEDDED_MODEL


@pytest.fixture(scope="module")
def real_env(tmp_path_factory):
    """Shared handles pointed at a fresh data folder; the shipped checkpoints are found in Serena's models/.

    A fresh model cache that inspects files as the server's does: checkpoint defaults (native size, CFG) and the
    checks of overrides come from that inspection."""
    data = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shared, "data_paths", paths.Paths(str(data), str(data / "config.json")))
        mp.setattr(shared.opts, "filename", str(data / "config.json"))
        mp.setattr(sd_models, "model_manager", sd_models.LoadedModels(sd_models.load_from_disk,
                                                                      sd_models.inspect_on_disk))
        shared.opts.load()
        yield data
        shared.opts.load(str(data / "missing.json"))


@pytest.fixture(scope="module")
def real_client(real_env):
    """The API on the shipped checkpoints (Serena's models/), a fresh data folder, real model loads; the queue is
    free again when the module's tests are done."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from modules import jobs
    from modules.api.api import Api

    app = FastAPI()
    Api(app)
    with TestClient(app) as client:
        yield client
    assert not jobs.queue_lock.locked()
