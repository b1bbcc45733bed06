"""Smoke-test fixtures: real Serena server processes on 127.0.0.1.

``serena_server(data_dir, *extra_flags)`` starts ``webui.py --nowebui`` on a free port with ``--data-dir data_dir``,
waits until ``GET /sdapi/v1/progress`` answers, and returns a ``ServerProcess`` (``.url``, ``.port``, ``.log()``,
``.stop()``). Every server a module started is stopped when the module's tests are done; a test that needs a
fresh process calls ``.stop()`` itself.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from modules import paths, sd_models, shared

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = float(os.environ.get("SERENA_SMOKE_STARTUP_TIMEOUT", "180"))
EMBEDDED_MODEL = ROOT / "models" / "Stable-diffusion" / "serena-shapes-v1.safetensors"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """One running ``webui.py`` process and where its output goes."""

    port: int
    process: subprocess.Popen
    log_path: Path
    flags: tuple = field(default_factory=tuple)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf8", errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Until ``GET /sdapi/v1/progress`` answers at all (401 counts: the server is up behind --api-auth)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode} before it was ready:\n"
                                   f"{self.log()[-4000:]}")
            try:
                httpx.get(f"{self.url}/sdapi/v1/progress", timeout=2)
                return
            except httpx.TransportError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        """Terminate this process (only this one, by its id); kill it if it does not exit in 15 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_server(data_dir, *extra_flags, timeout: float = STARTUP_TIMEOUT) -> ServerProcess:
    """Start ``webui.py --nowebui`` on a free port with ``data_dir`` and wait until it answers."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = data_dir / f"serena-{port}.log"
    command = [sys.executable, "webui.py", "--nowebui", "--port", str(port), "--data-dir", str(data_dir),
               *map(str, extra_flags)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(port=port, process=process, log_path=log_path, flags=tuple(extra_flags))
    server.wait_ready(timeout)
    return server


@pytest.fixture(scope="module")
def serena_server():
    """A factory: ``serena_server(data_dir, *extra_flags) -> ServerProcess``; all are stopped after the module."""
    started: list[ServerProcess] = []

    def start(data_dir, *extra_flags, timeout: float = STARTUP_TIMEOUT) -> ServerProcess:
        server = start_server(data_dir, *extra_flags, timeout=timeout)
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
    """Shared handles pointed at a fresh data folder; the shipped checkpoints are found in Serena's models/."""
    data = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shared, "data_paths", paths.Paths(str(data), str(data / "config.json")))
        mp.setattr(shared.opts, "filename", str(data / "config.json"))
        mp.setattr(sd_models, "_checkpoints", None)
        mp.setattr(sd_models, "model_manager", sd_models.LoadedModels(sd_models._load_from_disk))
        shared.opts.load()
        yield data
        shared.opts.load(str(data / "missing.json"))
