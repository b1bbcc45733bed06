"""Extensions that misbehave, in a real server process: one raises in every hook (``RuntimeError``,
``SystemExit``, ``KeyboardInterrupt`` in turn), one sleeps in ``on_process``, one writes options it does not own
from a thread of its own. The server must start, answer, generate, restore every override and store nothing the
user did not ask for; each misdeed is reported naming the extension (issue 13's fault tests).

The server runs with lenient hooks, as users run it: strict mode (``--strict-hooks``, the test suite's default)
turns the first hook error into a failed call, which ``test/quality/test_hooks.py`` covers.
"""

from __future__ import annotations

import json
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from modules import hookspecs, plugins

SMALL = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 2, "sampler_name": "Euler a", "seed": 3}
EXCEPTIONS = ("RuntimeError", "SystemExit", "KeyboardInterrupt")


def raising_extension() -> str:
    """Every hook of the spec, each raising one of ``EXCEPTIONS`` in turn, with the spec's own arguments."""
    lines = ["from modules.extensions_api import hookimpl", ""]
    for i, name in enumerate(plugins.hook_names(plugins.pm)):
        spec = getattr(hookspecs, name)
        args = ", ".join(a for a in spec.__code__.co_varnames[:spec.__code__.co_argcount])
        lines += ["@hookimpl", f"def {name}({args}):", f"    raise {EXCEPTIONS[i % len(EXCEPTIONS)]}('{name}')", ""]
    return "\n".join(lines)


SLEEPER = '''
import time
from modules.extensions_api import hookimpl


@hookimpl
def on_process(p):
    time.sleep(4)
'''

WRITER = '''
import threading
import time
from modules.extensions_api import opts


def _write_forever():
    # Not this extension's options: every attempt must be refused.
    while True:
        for write in (lambda: setattr(opts, "samples_format", "jpg"),
                      lambda: opts.set("CLIP_stop_at_last_layers", 2)):
            try:
                write()
            except Exception:
                pass
        time.sleep(0.1)


threading.Thread(target=_write_forever, daemon=True).start()
'''


def write_ext(root: Path, folder: str, source: str) -> None:
    (root / folder / "scripts").mkdir(parents=True)
    (root / folder / "scripts" / f"{folder}.py").write_text(textwrap.dedent(source))


@pytest.fixture(scope="module")
def server(tmp_path_factory, serena_server):
    data = tmp_path_factory.mktemp("hostile")
    for folder, source in (("raiser", raising_extension()), ("sleeper", SLEEPER), ("writer", WRITER)):
        write_ext(data / "extensions", folder, source)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SERENA_STRICT_HOOKS", "0")
        return serena_server(data)


def problems(server) -> dict[str, list[str]]:
    listed = httpx.get(f"{server.url}/sdapi/v1/extensions", timeout=30).json()
    return {e["name"]: e["problems"] for e in listed}


def test_every_hook_raising_is_contained_and_named(server):
    before = httpx.get(f"{server.url}/sdapi/v1/options", timeout=30).json()
    body = dict(SMALL, override_settings={"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 7})
    r = httpx.post(f"{server.url}/sdapi/v1/txt2img", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 1
    warnings = " ".join(r.json()["warnings"])
    for hook in ("on_before_process", "on_opts_override_enter", "on_process", "on_postprocess"):
        assert "raiser" in warnings and hook in warnings, (hook, warnings)
    # Every override was restored although every exit hook raised.
    after = httpx.get(f"{server.url}/sdapi/v1/options", timeout=30).json()
    assert after == before
    assert httpx.get(f"{server.url}/serena/v1/overrides/active", timeout=30).json()["overrides"] == []
    assert server.process.poll() is None  # SystemExit and KeyboardInterrupt did not end the server
    assert problems(server)["raiser"], "the extension's failures are not reported"


def test_a_sleeping_hook_does_not_freeze_progress_or_interrupt(server):
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        r=httpx.post(f"{server.url}/sdapi/v1/txt2img", json=dict(SMALL, n_iter=2), timeout=120)))
    worker.start()
    deadline = time.monotonic() + 60
    while httpx.get(f"{server.url}/sdapi/v1/progress", timeout=30).json()["state"]["job"] == "":
        assert time.monotonic() < deadline, "the generation never started"
        time.sleep(0.05)
    started = time.monotonic()
    r = httpx.get(f"{server.url}/sdapi/v1/progress", timeout=30)
    assert r.status_code == 200 and time.monotonic() - started < 2.0  # answered while on_process sleeps
    assert httpx.post(f"{server.url}/sdapi/v1/interrupt", timeout=30).status_code == 200
    worker.join(120)
    assert result["r"].status_code == 200, result["r"].text
    # on_process runs before the first batch: the interrupt sent while it slept stopped both batches.
    assert result["r"].json()["images"] == []


def test_writes_from_an_extensions_thread_are_refused_and_never_saved(server, tmp_path):
    time.sleep(0.5)  # the writer has tried many times by now
    options = httpx.get(f"{server.url}/sdapi/v1/options", timeout=30).json()
    assert options["samples_format"] == "png" and options["CLIP_stop_at_last_layers"] == 1
    # An unrelated save persists only what the user asked for.
    assert httpx.post(f"{server.url}/sdapi/v1/options", json={"samples_save": False}, timeout=30).status_code == 200
    stored = json.loads((Path(server.log_path).parent / "config.json").read_text())
    assert stored == {"samples_save": False}
    assert any("samples_format" in p or "CLIP_stop_at_last_layers" in p for p in problems(server)["writer"])
