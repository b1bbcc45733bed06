"""Start a real Serena server (``webui.py --nowebui``) on a free 127.0.0.1 port with its own data folder.

Used by the smoke tests (``test/smoke/conftest.py``) and by benchmarks (``bench/soak.py``) so both drive the same
process the same way. Only the standard library and httpx: importing it loads no model.
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

ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = float(os.environ.get("SERENA_SMOKE_STARTUP_TIMEOUT", "180"))


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

    @property
    def pid(self) -> int:
        return self.process.pid

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


def start_server(data_dir, *extra_flags, timeout: float = STARTUP_TIMEOUT, script: str = "webui.py") -> ServerProcess:
    """Start ``script --nowebui`` (``webui.py``, or ``launch.py`` as users start it) on a free port with
    ``data_dir`` and wait until it answers."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = data_dir / f"serena-{port}.log"
    command = [sys.executable, script, "--nowebui", "--port", str(port), "--data-dir", str(data_dir),
               *map(str, extra_flags)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(port=port, process=process, log_path=log_path, flags=tuple(extra_flags))
    server.wait_ready(timeout)
    return server
