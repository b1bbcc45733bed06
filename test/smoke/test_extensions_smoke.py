"""Extensions in a real server process: third-party-style folders and an installed package in a temporary data
dir — good ones, one broken at import, a Before/After cycle, a disabled one, an entry-point package — then which
loaded, the resolved order (``GET /serena/v1/hooks``), the reported problems (``GET /sdapi/v1/extensions``), and a
generation with overrides firing their hooks in that order.

Each test extension appends ``<hook> <name>`` to the file named by ``SERENA_SMOKE_EVENTS``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler a", "seed": 1}

RECORDER = '''
import os
from modules.extensions_api import hookimpl

NAME = {name!r}


def _record(hook):
    with open(os.environ["SERENA_SMOKE_EVENTS"], "a", encoding="utf-8") as f:
        f.write(f"{{hook}} {{NAME}}\\n")


@hookimpl
def on_opts_override_enter(overrides):
    _record("enter")


@hookimpl
def on_opts_override_exit(overrides):
    _record("exit")


@hookimpl
def on_process(p):
    _record("process")
'''


def write_ext(root: Path, folder: str, source: str, metadata: str | None = None) -> None:
    (root / folder / "scripts").mkdir(parents=True)
    (root / folder / "scripts" / f"{folder.replace('-', '_')}.py").write_text(textwrap.dedent(source))
    if metadata:
        (root / folder / "metadata.ini").write_text(textwrap.dedent(metadata))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The data dir (extensions + config.json), an installed-looking package, and the events file."""
    base = tmp_path_factory.mktemp("ext-smoke")
    data, site = base / "data", base / "site"
    exts = data / "extensions"
    write_ext(exts, "alpha-good", RECORDER.format(name="alpha-good"), "[hooks/on_process]\nAfter = beta-good\n")
    write_ext(exts, "beta-good", RECORDER.format(name="beta-good"))
    write_ext(exts, "broken-import", "raise ZeroDivisionError('broken at import')\n")
    write_ext(exts, "cycle-one", RECORDER.format(name="cycle-one"), "[Extension]\nBefore = cycle-two\n")
    write_ext(exts, "cycle-two", RECORDER.format(name="cycle-two"), "[Extension]\nBefore = cycle-one\n")
    write_ext(exts, "disabled-one", "import os\nopen(os.environ['SERENA_SMOKE_EVENTS'] + '.imported', 'w').close()\n")
    (data / "config.json").write_text(json.dumps({"disabled_extensions": ["disabled-one"]}))
    (site / "smoke_pkg").mkdir(parents=True)
    (site / "smoke_pkg" / "__init__.py").write_text(RECORDER.format(name="smoke-pkg"))
    info = site / "smoke_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: smoke_pkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[serena]\nsmoke-pkg = smoke_pkg\n")
    events = base / "events.log"
    return {"data": data, "site": site, "events": events}


@pytest.fixture(scope="module")
def server(serena_server, embedded_model, setup):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SERENA_SMOKE_EVENTS", str(setup["events"]))
        mp.setenv("PYTHONPATH", str(setup["site"]))
        return serena_server(setup["data"])


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def events(setup) -> list[tuple[str, str]]:
    path = setup["events"]
    return [tuple(line.split()) for line in path.read_text().splitlines()] if path.exists() else []


OURS = {"alpha-good", "beta-good", "cycle-one", "cycle-two", "smoke-pkg"}


def test_which_extensions_loaded_and_the_problems(http, setup):
    listed = {e["name"]: e for e in http.get("/sdapi/v1/extensions").json()}
    loaded = {name for name, e in listed.items() if e["loaded"]}
    assert loaded == {"clip-skip-cache", "Lora", "override-infotext", "override-inspector", "prompts-from-file",
                      "sd-upscale",
                      "xyz-grid", "alpha-good", "beta-good", "cycle-one", "cycle-two", "smoke-pkg"}
    assert listed["smoke-pkg"]["group"] == "package" and listed["alpha-good"]["group"] == "user"
    broken = listed["broken-import"]
    assert not broken["loaded"] and broken["enabled"]
    assert broken["problems"] == ["not loaded: importing scripts/broken_import.py raised ZeroDivisionError: "
                                  "broken at import"]
    for name in ("cycle-one", "cycle-two"):
        [problem] = listed[name]["problems"]
        assert "cycle between 'cycle-one', 'cycle-two'" in problem and "name order" in problem
    disabled = listed["disabled-one"]
    assert not disabled["enabled"] and not disabled["loaded"] and disabled["problems"] == []
    assert not Path(str(setup["events"]) + ".imported").exists()  # a disabled extension is never imported
    assert all(listed[n]["problems"] == [] for n in ("alpha-good", "beta-good", "smoke-pkg", "clip-skip-cache",
                                                      "override-infotext"))


def test_resolved_order(http):
    hooks = http.get("/serena/v1/hooks").json()
    # core, built-in, user folders by name (the cycle puts the user group in name order), then packages
    assert hooks["on_opts_override_enter"] == ["serena.core", "clip-skip-cache", "override-infotext", "alpha-good",
                                               "beta-good", "cycle-one", "cycle-two", "smoke-pkg"]
    # [hooks/on_process] After = beta-good moves alpha-good for that hook only
    assert hooks["on_process"] == ["serena.core", "beta-good", "alpha-good", "cycle-one", "cycle-two", "smoke-pkg"]


def test_generation_with_overrides_fires_hooks_in_that_order(http, setup):
    hooks = http.get("/serena/v1/hooks").json()
    setup["events"].write_text("")
    r = http.post("/sdapi/v1/txt2img", json=dict(SMALL, prompt="a red square",
                                                 override_settings={"CLIP_stop_at_last_layers": 2}))
    assert r.status_code == 200, r.text
    enter = [n for n in hooks["on_opts_override_enter"] if n in OURS]
    assert events(setup) == ([("enter", n) for n in enter]
                             + [("process", n) for n in hooks["on_process"] if n in OURS]
                             + [("exit", n) for n in reversed(enter)])
    info = json.loads(r.json()["info"])
    assert "Override settings: CLIP_stop_at_last_layers=2" in info["infotexts"][0]  # the built-in extension

    setup["events"].write_text("")
    r = http.post("/sdapi/v1/txt2img", json=dict(SMALL, prompt="a red square"))
    assert r.status_code == 200, r.text
    assert [e for e in events(setup) if e[0] != "process"] == []  # no overrides: no enter/exit
    assert "Override settings" not in json.loads(r.json()["info"])["infotexts"][0]


def test_list_hooks_prints_the_same_order(setup):
    env_cmd = [sys.executable, "webui.py", "--list-hooks", "--data-dir", str(setup["data"])]
    out = subprocess.run(env_cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "SERENA_SMOKE_EVENTS": str(setup["events"]),
                              "PYTHONPATH": str(setup["site"])})
    assert out.returncode == 0, out.stderr
    section = out.stdout.split("on_opts_override_enter\n")[1].split("\non_")[0]
    assert [line.split()[1] for line in section.splitlines()] == [
        "serena.core", "clip-skip-cache", "override-infotext", "alpha-good", "beta-good", "cycle-one", "cycle-two",
        "smoke-pkg"]
    assert "smoke-pkg  [user]" in out.stdout
