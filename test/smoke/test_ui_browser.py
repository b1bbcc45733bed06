"""The web UI: its logic in-process, then the whole page in a real browser (Debian's Chromium via Playwright).

In-process tests (no browser) check what the events do: pasted parameters and the override settings field, the
settings page's all-or-nothing Apply, progress/interrupt through the shared queue, PNG Info, img2img masks,
extension tabs and the built page.

Browser tests start ``webui.py --port <free> --data-dir <tmp>`` as a process, wait for "Serena ready", and always
kill it at teardown. They cover: a txt2img generation (progress, image, seed in the info, ♻ reuse), Interrupt,
pasted parameters with a setting override (applied to that generation, never stored), the Hires fix section
(a second pass at twice the size, pasted back), an X/Y/Z plot from the Script dropdown (a Steps axis drawn as a
grid), PNG Info → Send to
txt2img/img2img (a Hires fix image's parameters fill the Hires section), a setting changed and applied on the Settings tab (checked in ``config.json``), an extension's tab
and option, the Extensions tab, the Extra networks panel (a LoRA card's click toggles its tag in the prompt), ``--freeze-settings``, screenshots of the main tabs in ``test-artifacts/``, and a
page of another origin calling the API (``--nowebui`` servers with and without ``--cors-allow-origins``).
Without ``/usr/bin/chromium`` they are skipped with a message naming ``apt-get install chromium``.

Set ``SERENA_UPDATE_DOCS_SCREENSHOT=1`` to also copy the txt2img screenshot to ``docs/images/txt2img.png``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.request
from pathlib import Path

import pytest

from modules import jobs, shared
from modules.hookspecs import hookimpl

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-quic", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts"
START_TIMEOUT = 180
GENERATE_TIMEOUT = 120_000  # ms


# ---------------------------------------------------------------------------------------------------------------
# In-process: the logic behind the events
# ---------------------------------------------------------------------------------------------------------------

def test_paste_fills_fields_and_lists_only_differing_settings(data_dir, fake_models):
    from modules import sd_models
    from modules.ui import paste

    beta = sd_models.resolve_checkpoint("beta")
    text = ("a cat\nNegative prompt: a dog\nSteps: 5, Sampler: Euler, CFG scale: 6.5, Seed: 12, Size: 64x96, "
            f"Clip skip: 2, ENSD: 0, Model hash: {beta.shorthash}")
    pasted = paste.from_infotext(text)
    assert pasted.fields == {"prompt": "a cat", "negative_prompt": "a dog", "steps": 5, "sampler": "Euler",
                             "scheduler": "Automatic", "cfg_scale": 6.5, "seed": 12, "width": 64, "height": 96}
    # ENSD 0 and the implied RNG "CPU" equal the current settings: not listed. The checkpoint is never pasted
    # (A1111's disable_weights_auto_swap, on by default), as in the API.
    assert pasted.overrides == ["Clip skip: 2"]
    assert pasted.rejected == []
    overrides = paste.overrides_from_entries(pasted.overrides)
    assert overrides == {"CLIP_stop_at_last_layers": 2}
    assert not shared.opts.check(overrides, for_override=True).errors
    # Pasting never stores anything.
    assert shared.opts.stored() == {}


def test_paste_rejects_what_cannot_apply(data_dir):
    from modules.ui import paste

    pasted = paste.from_infotext("x\nSteps: 5, Sampler: No Such Sampler, Seed: 1, Clip skip: 99, "
                                 "Model hash: 0123456789, VAE: missing.safetensors, ENSD: lots, Batch size: 3")
    assert "sampler" not in pasted.fields and pasted.fields["steps"] == 5 and pasted.fields["batch_size"] == 3
    assert any(r.startswith("Sampler:") for r in pasted.rejected)
    assert any(r.startswith("Clip skip: 99") and "maximum" in r for r in pasted.rejected), pasted.rejected
    assert any(r.startswith("VAE: missing.safetensors") for r in pasted.rejected), pasted.rejected
    assert any(r.startswith("ENSD: lots") for r in pasted.rejected), pasted.rejected
    assert not any(r.startswith("Model hash") for r in pasted.rejected), pasted.rejected  # never pasted
    assert pasted.overrides == []
    with pytest.raises(ValueError, match="not 'Setting: value'"):
        paste.overrides_from_entries(["Nonsense: 1"])
    assert paste.looks_like_infotext("a\nSteps: 20, Seed: 1") and not paste.looks_like_infotext("just a prompt")


def test_settings_apply_is_all_or_nothing_and_saves(data_dir):
    from modules.ui import settings

    keys = ["CLIP_stop_at_last_layers", "eta_noise_seed_delta", "samples_format"]
    changes, errors = settings.apply_values(keys, [2.0, -1, "jpg"])
    assert changes == {} and set(errors) == {"eta_noise_seed_delta"} and "minimum" in errors["eta_noise_seed_delta"]
    assert shared.opts.stored() == {} and not (data_dir / "config.json").exists()
    changes, errors = settings.apply_values(keys, [2.0, 7, "png"])
    assert errors == {} and changes == {"CLIP_stop_at_last_layers": (1, 2), "eta_noise_seed_delta": (0, 7)}
    assert json.loads((data_dir / "config.json").read_text()) == {"CLIP_stop_at_last_layers": 2,
                                                                   "eta_noise_seed_delta": 7}
    assert "Saved 2 changes" in settings.result_html(changes, errors)
    assert "Not applied" in settings.result_html({}, {"x": "bad"})
    # A page loaded before the API changed a setting does not write its stale value back: only edits count.
    shared.opts.set("eta_noise_seed_delta", 99)
    baseline = {"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 7, "samples_format": "png"}
    changes, errors = settings.apply_values(keys, [3, 7, "png"], baseline)
    assert changes == {"CLIP_stop_at_last_layers": (2, 3)} and shared.opts.eta_noise_seed_delta == 99
    # Showing the default checkpoint on an unset setting is not choosing it.
    assert settings.apply_values(["sd_model_checkpoint"], [settings.display_value("sd_model_checkpoint")]) == ({}, {})


def test_settings_frozen(data_dir, monkeypatch):
    from modules.ui import settings

    monkeypatch.setattr(shared.opts, "frozen", True)
    changes, errors = settings.apply_values(["CLIP_stop_at_last_layers"], [3])
    assert changes == {} and "frozen" in errors["CLIP_stop_at_last_layers"]
    shown, message = settings.set_quick("sd_vae", "sharp.safetensors")
    assert shown == "Automatic" and "frozen" in message


def test_quick_setting_is_validated_and_saved(data_dir, fake_models):
    from modules.ui import settings

    shown, message = settings.set_quick("sd_vae", "no-such-vae")
    assert shown == "Automatic" and "not changed" in message
    shown, message = settings.set_quick("sd_vae", "sharp.safetensors")
    assert shown == "sharp.safetensors" and "saved" in message
    assert json.loads((data_dir / "config.json").read_text()) == {"sd_vae": "sharp.safetensors"}
    assert "sharp.safetensors" in settings.quick_choices("sd_vae")


def test_setting_components_follow_option_info(data_dir, monkeypatch):
    import gradio as gr

    from modules.option_info import OptionInfo
    from modules.ui import settings

    cases = {
        "flag": (OptionInfo(True, "A flag"), gr.Checkbox),
        "count": (OptionInfo(3, "A count", "Number", {"minimum": 0, "maximum": 9}), gr.Number),
        "mode": (OptionInfo("a", "A mode", gr.Radio, lambda: {"choices": ["a", "b"]}), gr.Radio),
        "names": (OptionInfo([], "Some names"), gr.Textbox),
        "odd": (OptionInfo("x", "Odd args", "Textbox", {"no_such_argument": 1}), gr.Textbox),
    }
    with gr.Blocks():
        for key, (info, cls) in cases.items():
            monkeypatch.setitem(shared.opts.data_labels, key, info)
            comp = settings.make_component(key, info, interactive=True)
            assert isinstance(comp, cls), key
    assert settings.from_component_value("CLIP_stop_at_last_layers", shared.opts.data_labels[
        "CLIP_stop_at_last_layers"], 2.0) == 2
    assert settings.component_class(OptionInfo(0.5, "f")) is gr.Number


def test_progress_streams_interrupts_and_cancels(monkeypatch):
    from modules import scripts
    from modules.ui import progress

    # Each job's generation (``dispatch.run`` calls ``scripts.run(p)``) is the function ``p`` names here.
    monkeypatch.setattr(scripts, "run", lambda p: p())

    def work():
        state = jobs.state
        state.sampling_steps = 50
        for i in range(50):
            if state.interrupted:
                break
            state.sampling_step = i + 1
            state.current_image, state.current_image_step = f"preview {i}", i + 1
            time.sleep(0.01)
        return "result"

    key = ("test-session", "txt2img")
    stream = progress.run_streaming(key, "txt2img", work, poll=0.02)
    ticks = []
    try:
        while True:
            ticks.append(next(stream))
            if len(ticks) == 5:
                assert progress.interrupt(key) == "Interrupting..."
    except StopIteration as stop:
        job = stop.value
    assert job.result == "result" and job.interrupted and job.error is None
    assert any("step" in t.html for t in ticks) and any(t.preview for t in ticks)
    assert "Interrupted" in progress.finished_html(job, 0)
    assert progress.active_job(key) is None

    # A job waiting for the queue is cancelled before it starts.
    with jobs.queue_lock:
        stream = progress.run_streaming(key, "txt2img", work, poll=0.02)
        first = next(stream)
        assert "Waiting in queue" in first.html
        assert progress.skip(key).startswith("Nothing")
        assert progress.interrupt(key) == "Cancelled before it started"
    job = None
    for _ in range(1000):
        try:
            next(stream)
        except StopIteration as stop:
            job = stop.value
            break
    assert job is not None and job.result is None
    assert "Cancelled" in progress.finished_html(job, 0)

    # An error is shown with its reasons.
    def fail():
        from modules.options import OptionsRejected
        raise OptionsRejected({"CLIP_stop_at_last_layers": "99 is above the maximum 12"})

    stream = progress.run_streaming(key, "txt2img", fail, poll=0.02)
    job = None
    while job is None:
        try:
            next(stream)
        except StopIteration as stop:
            job = stop.value
    assert "99 is above the maximum 12" in progress.finished_html(job, 0)
    assert progress.interrupt(("nobody", "txt2img")) == "Nothing is running"


def test_png_info_reads_png_text_and_exif(tmp_path):
    from PIL import Image

    from modules import images
    from modules.ui import png_info

    image = Image.new("RGB", (8, 8))
    for fmt in ("png", "jpg", "webp"):
        path = tmp_path / f"x.{fmt}"
        images.encode_image(image, fmt, "a cat\nSteps: 3, Sampler: Euler, Seed: 7", str(path))
        text, html = png_info.describe(str(path))
        assert text.endswith("Seed: 7"), fmt
        assert "Sampler" in html
    plain = tmp_path / "plain.png"
    image.save(plain)
    assert png_info.describe(str(plain))[0] == ""
    (tmp_path / "junk.png").write_bytes(b"not an image")
    assert "Not an image" in png_info.describe(str(tmp_path / "junk.png"))[1]
    assert png_info.image_parameters.user_comment_text(b"UNICODE\x00" + "hi".encode("utf-16-be")) == "hi"


def test_img2img_inputs_and_masks():
    from PIL import Image

    from modules.ui import img2img

    base = Image.new("RGB", (16, 16), "red")
    layer = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    layer.putpixel((3, 4), (255, 255, 255, 255))
    init, mask = img2img.inputs_for_mode("inpaint", None, {"background": base, "layers": [layer]}, None, None)
    assert mask.getpixel((3, 4)) == 255 and mask.getpixel((0, 0)) == 0
    with pytest.raises(ValueError, match="paint the area"):
        img2img.inputs_for_mode("inpaint", None, {"background": base, "layers": []}, None, None)
    with pytest.raises(ValueError, match="upload an image"):
        img2img.inputs_for_mode("img2img", None, None, None, None)
    with pytest.raises(ValueError, match="both"):
        img2img.inputs_for_mode("inpaint_upload", None, None, base, None)
    init, mask = img2img.inputs_for_mode("inpaint_upload", None, None, base, Image.new("L", (16, 16), 255))
    assert mask.mode == "L" and init.mode == "RGB"
    init, mask = img2img.inputs_for_mode("img2img", base.convert("RGBA"), None, None, None)
    assert mask is None and init.mode == "RGB"


def test_default_size_is_the_checkpoints_native_size(data_dir):
    from modules import sd_models, sd_models_loader

    tiny = sd_models_loader.inspect_checkpoint(str(ROOT / "models" / "Stable-diffusion" / "serena-tiny-v1.safetensors"))
    assert tiny.native_size == 64
    # The fixture's checkpoints are not loadable files: the generation refuses them, the form starts at A1111's 512.
    assert sd_models.checkpoint_defaults() == sd_models.CheckpointDefaults(size=512, cfg_scale=7.0)


def test_generation_kwargs_are_typed(data_dir):
    from modules.ui import generation

    values = dict(prompt="p", negative_prompt=None, sampler="Euler a", scheduler="Automatic", steps=4.0,
                  cfg_scale=6, width=64.0, height=64.0, seed=-1.0, batch_count=2.0, batch_size=1.0,
                  denoising_strength=0.5, override_settings=["Clip skip: 2"])
    kwargs = generation.common_p_kwargs(values)
    assert kwargs["steps"] == 4 and isinstance(kwargs["steps"], int) and kwargs["n_iter"] == 2
    assert kwargs["negative_prompt"] == "" and kwargs["cfg_scale"] == 6.0
    assert kwargs["override_settings"] == {"CLIP_stop_at_last_layers": 2}
    assert kwargs["styles"] == [] and kwargs["tiling"] is None  # unticked: the "tiling" setting decides
    kwargs = generation.common_p_kwargs(dict(values, styles=["a", "b"], tiling=True))
    assert kwargs["styles"] == ["a", "b"] and kwargs["tiling"] is True


def test_styles_row_applies_styles_and_paste_finds_them(data_dir):
    from modules.ui import paste, prompt_styles

    (data_dir / "styles.csv").write_text('name,prompt,negative_prompt\nfilm,"film still of {prompt}",cartoon\n')
    assert prompt_styles.names() == ["film"]
    assert prompt_styles.apply_to_prompts("a cat", "dark", ["film", "gone"]) == ("film still of a cat",
                                                                               "dark, cartoon", [])
    pasted = paste.from_infotext("film still of a cat\nNegative prompt: dark, cartoon\nSteps: 5, Seed: 1, CFG scale: 7")
    assert pasted.styles == ["film"]
    assert (pasted.fields["prompt"], pasted.fields["negative_prompt"]) == ("a cat", "dark")


def test_create_ui_adds_extension_tabs_and_options(data_dir, register, monkeypatch):
    import gradio as gr

    from modules import extensions
    from modules.option_info import OptionInfo
    from modules.ui import create_ui, extensions_tab

    class Probe:
        @hookimpl
        def on_ui_tabs(self):
            with gr.Blocks() as tab:
                gr.Textbox(label="probe", elem_id="probe_box")
            return [(tab, "Probe", "probe")]

    register(Probe(), "ui-probe-inprocess")
    monkeypatch.setitem(shared.opts.data_labels, "probe_option",
                        OptionInfo(1, "Probe option", section=("probe", "Probe section")))
    fake = [types.SimpleNamespace(name="alpha", group="builtin", enabled=True, loaded=True, path="/x/alpha",
                                  problems=[]),
            types.SimpleNamespace(name="beta", group="user", enabled=False, loaded=False, path="/x/beta",
                                  problems=["needs gamma"])]
    monkeypatch.setattr(extensions, "extensions", lambda: list(fake))
    monkeypatch.setattr(extensions, "problems", lambda: ["beta: needs gamma"])
    blocks = create_ui()
    config = blocks.get_config_file()
    elem_ids = {c["props"].get("elem_id") for c in config["components"]}
    assert {"probe_box", "txt2img_generate", "img2img_generate", "extras_generate", "pnginfo_image",
            "settings_submit", "setting_probe_option", "setting_CLIP_stop_at_last_layers", "extensions_table",
            "quick_sd_model_checkpoint"} <= elem_ids
    assert "setting_disabled_extensions" not in elem_ids  # hidden section
    # The Extensions tab's Apply stores the unticked ones (and keeps names of extensions no longer installed).
    shared.opts.set("disabled_extensions", ["gone"])
    assert "Saved" in extensions_tab.apply_enabled(["alpha"])
    assert shared.opts.disabled_extensions == ["beta", "gone"]
    assert "Nothing changed" in extensions_tab.apply_enabled(["alpha"])
    assert "needs gamma" in extensions_tab.problems_html()
    assert any(row[0] == "on_ui_tabs" and "ui-probe-inprocess" in row[1] for row in extensions_tab.hook_rows())


# ---------------------------------------------------------------------------------------------------------------
# In a browser: Serena as a process, driven through Chromium
# ---------------------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A Serena process on a free port; its output is collected for failure messages."""

    def __init__(self, data_dir: Path, *extra: str):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        # --nowebui serves no page at /: readiness is the API answering.
        self.probe = self.url + ("sdapi/v1/progress" if "--nowebui" in extra else "")
        self.lines: list[str] = []
        self.ready = threading.Event()
        env = dict(os.environ, PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "webui.py"), "--port", str(self.port), "--data-dir", str(data_dir), *extra],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "Serena ready" in line:
                self.ready.set()

    def output(self, last: int = 40) -> str:
        return "\n".join([line for line in self.lines if "ResourceWarning" not in line][-last:])

    def wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Serena exited with {self.proc.returncode}:\n{self.output()}")
            if self.ready.wait(0.5):
                break
        else:
            raise RuntimeError(f"Serena was not ready after {START_TIMEOUT} s:\n{self.output()}")
        while time.monotonic() < deadline:  # the lifespan message comes just before the socket answers
            try:
                with urllib.request.urlopen(self.probe, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"GET {self.probe} never answered 200:\n{self.output()}")

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()

    def config(self) -> dict:
        path = self.data_dir / "config.json"
        return json.loads(path.read_text()) if path.exists() else {}


# A user extension that adds a tab (on_ui_tabs) and an option (on_ui_settings): both must appear in the page.
EXTENSION = '''
import gradio as gr

from modules.extensions_api import OptionInfo, hookimpl, opts


@hookimpl
def on_ui_settings():
    opts.add_option("ui_probe_greeting", OptionInfo("hello", "Greeting of the UI probe extension",
                                                    section=("ui-probe", "UI probe")))


@hookimpl
def on_ui_tabs():
    with gr.Blocks(analytics_enabled=False) as tab:
        box = gr.Textbox(label="Probe input", elem_id="ui_probe_input")
        out = gr.Textbox(label="Probe output", elem_id="ui_probe_output")
        gr.Button("Shout", elem_id="ui_probe_button").click(lambda t: t.upper(), inputs=[box], outputs=[out])
    return [(tab, "UI probe", "ui_probe")]
'''


def write_probe_extension(data_dir: Path):
    scripts = data_dir / "extensions" / "ui-probe" / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "ui_probe.py").write_text(EXTENSION)


def write_lora_card(data_dir: Path, name: str):
    """A LoRA file for the Extra networks panel: only listed and clicked, never applied, so a one-key file."""
    import torch
    from safetensors.torch import save_file

    folder = data_dir / "models" / "Lora"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_probe.alpha": torch.tensor(1.0)}, str(folder / f"{name}.safetensors"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("serena-ui-data")
    write_probe_extension(data_dir)
    write_lora_card(data_dir, "tiny-style")
    (data_dir / "styles.csv").write_text('name,prompt,negative_prompt\ngreen,"{prompt}, green",blurry\n')
    server = Server(data_dir)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"browser tests need Chromium at {CHROMIUM}: install it with `apt-get install chromium` "
                    "(.ci/run does this)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright package")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page(browser, server):  # browser first: without Chromium no server is started
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(30_000)
    page.goto(server.url)
    page.wait_for_selector("#txt2img_prompt textarea")
    yield page
    page.close()


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def open_tab(page, label: str):
    page.get_by_role("tab", name=label, exact=True).click()


def set_number(page, elem_id: str, value):
    """Type into the number box of a gradio Slider or Number and commit it (blur)."""
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Tab")


def info_text(page, tab="txt2img") -> str:
    return page.locator(f"#{tab}_info textarea").input_value()


def finished_job(page, tab="txt2img") -> str | None:
    """The number of the UI job whose end the progress area shows (``data-job``), if any."""
    marker = page.locator(f"#{tab}_progress .serena-finished")
    return marker.first.get_attribute("data-job") if marker.count() else None


def wait_finished(page, tab, before):
    page.wait_for_function(
        """([sel, before]) => { const m = document.querySelector(sel);
                                return m && m.getAttribute('data-job') !== before; }""",
        arg=[f"#{tab}_progress .serena-finished", before], timeout=GENERATE_TIMEOUT)
    return page.locator(f"#{tab}_progress").inner_text()


def generate(page, tab="txt2img") -> str:
    """Click Generate, wait until this job's end is shown, and return the infotext."""
    before = finished_job(page, tab)
    page.click(f"#{tab}_generate")
    status = wait_finished(page, tab, before)
    assert "Done" in status, status
    return info_text(page, tab)


def wait_value(page, selector: str, value: str):
    """Wait until the input/textarea at ``selector`` exists and holds ``value`` (tabs render lazily)."""
    page.wait_for_function("([sel, v]) => { const e = document.querySelector(sel); return !!e && e.value === v; }",
                           arg=[selector, value])


def seed_of(infotext: str) -> int:
    match = re.search(r"Seed: (\d+)", infotext)
    assert match, f"no seed in the generation info: {infotext!r}"
    return int(match.group(1))


def test_txt2img_generates_an_image_with_its_seed(page, server):
    page.fill("#txt2img_prompt textarea", "a red circle on a white background")
    set_number(page, "txt2img_steps", 6)
    set_number(page, "txt2img_batch_size", 4)
    text = generate(page)
    seed = seed_of(text)
    assert "a red circle on a white background" in text
    assert "Steps: 6" in text and "Size: 64x64" in text, text
    assert page.locator("#txt2img_gallery img").count() >= 4
    assert "Done: 4 images" in page.locator("#txt2img_progress").inner_text()
    # ♻ puts the seed of the shown image into the seed box; 🎲 goes back to random.
    page.click("#txt2img_reuse_seed")
    wait_value(page, "#txt2img_seed input", str(seed))
    # The same seed gives the same image parameters again.
    again = generate(page)
    assert seed_of(again) == seed
    page.click("#txt2img_random_seed")
    wait_value(page, "#txt2img_seed input", "-1")
    shot(page, "txt2img")
    if os.environ.get("SERENA_UPDATE_DOCS_SCREENSHOT") == "1":
        # The picture in the README: without this test's probe extension tab.
        page.evaluate("""() => { for (const b of document.querySelectorAll('button[role=tab]'))
                                    if (b.innerText.trim() === 'UI probe') b.style.display = 'none'; }""")
        path = shot(page, "txt2img-docs")
        page.evaluate("""() => { for (const b of document.querySelectorAll('button[role=tab]'))
                                    b.style.display = ''; }""")
        (ROOT / "docs" / "images").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, ROOT / "docs" / "images" / "txt2img.png")
    set_number(page, "txt2img_batch_size", 1)
    # Images were saved with their parameters (PNG Info reads them below).
    assert list((server.data_dir / "outputs").rglob("*.png"))


def test_progress_and_interrupt(page):
    set_number(page, "txt2img_steps", 150)
    set_number(page, "txt2img_batch_count", 20)
    before = finished_job(page)
    page.click("#txt2img_generate")
    page.wait_for_function("() => /step \\d+\\/\\d+/.test(document.querySelector('#txt2img_progress').innerText)",
                           timeout=GENERATE_TIMEOUT)
    assert "%" in page.locator("#txt2img_progress").inner_text()
    page.click("#txt2img_interrupt")
    status = wait_finished(page, "txt2img", before)
    assert "Interrupted" in status, status
    set_number(page, "txt2img_steps", 6)
    set_number(page, "txt2img_batch_count", 1)


def test_pasted_override_applies_to_one_generation_only(page, server):
    stored_before = server.config().get("CLIP_stop_at_last_layers")
    pasted = "a blue square on a black background\nSteps: 5, Sampler: Euler, CFG scale: 6, Seed: 1234, " \
             "Size: 64x64, Clip skip: 2"
    page.fill("#txt2img_prompt textarea", pasted)
    page.click("#txt2img_paste")
    dropdown = page.locator("#txt2img_override_settings")
    dropdown.wait_for(state="visible")
    assert "Clip skip: 2" in dropdown.inner_text()
    assert page.locator("#txt2img_prompt textarea").input_value() == "a blue square on a black background"
    text = generate(page)
    assert seed_of(text) == 1234 and "Clip skip: 2" in text and "Steps: 5" in text, text
    # The setting itself never changed: neither config.json nor the settings page.
    assert server.config().get("CLIP_stop_at_last_layers") == stored_before
    # Removing the entry: the next generation runs with the stored value again.
    dropdown.locator("[aria-label^='Remove'], .token-remove, button.remove-all").first.click()
    page.wait_for_function("() => !document.querySelector('#txt2img_override_settings')"
                           " || !document.querySelector('#txt2img_override_settings').innerText.includes('Clip skip')")
    text = generate(page)
    assert "Clip skip" not in text, text


def test_styles_and_tiling_reach_the_generation(page):
    open_tab(page, "txt2img")
    page.fill("#txt2img_prompt textarea", "a square")
    page.fill("#txt2img_neg_prompt textarea", "")
    page.locator("#txt2img_styles input").first.click()
    page.get_by_role("option", name="green").click()
    page.locator("#txt2img_tiling input[type=checkbox]").check()
    text = generate(page)
    assert text.startswith("a square, green\nNegative prompt: blurry\n") and "Tiling: True" in text, text
    # 📋 writes the styles into the prompt boxes and clears the selection: the same prompts, no style applied twice
    page.click("#txt2img_styles_apply")
    wait_value(page, "#txt2img_prompt textarea", "a square, green")
    page.locator("#txt2img_tiling input[type=checkbox]").uncheck()
    text = generate(page)
    assert text.startswith("a square, green\nNegative prompt: blurry\n") and "Tiling" not in text, text


def test_extra_networks_card_click_toggles_the_lora_tag(page):
    open_tab(page, "txt2img")
    page.fill("#txt2img_prompt textarea", "a circle")
    page.click("#txt2img_extra_networks_button")
    panel = page.locator("#txt2img_extra_networks")
    panel.wait_for(state="visible")
    panel.get_by_role("tab", name="Lora", exact=True).click()
    card = page.locator("#txt2img_extra_lora_cards .thumbnail-lg", has_text="tiny-style")
    card.click()
    wait_value(page, "#txt2img_prompt textarea", "a circle <lora:tiny-style:1>")
    shot(page, "extra-networks")
    card.click()  # a second click takes it out again (A1111)
    wait_value(page, "#txt2img_prompt textarea", "a circle")
    page.fill("#txt2img_extra_search input", "no such network")
    card.wait_for(state="detached")
    page.fill("#txt2img_extra_search input", "")
    page.click("#txt2img_extra_networks_button")
    panel.wait_for(state="hidden")


def test_hires_fix_section_generates_the_second_pass_and_pastes_back(page):
    open_tab(page, "txt2img")
    page.fill("#txt2img_prompt textarea", "a circle")
    page.locator("#txt2img_hr").get_by_text("Hires. fix").first.click()  # open the accordion
    page.locator("#txt2img_enable_hr input[type=checkbox]").check()
    set_number(page, "txt2img_hires_steps", 2)
    text = generate(page)
    assert "Hires upscale: 2" in text and "Hires steps: 2" in text and "Denoising strength: 0.7" in text, text
    size = page.wait_for_function("() => { const i = document.querySelector('#txt2img_gallery img');"
                                  " return i && i.naturalWidth && [i.naturalWidth, i.naturalHeight]; }",
                                  timeout=GENERATE_TIMEOUT).json_value()
    assert size == [128, 128], size
    # The section turned off, then a paste of that infotext turns it on again with its values.
    page.locator("#txt2img_enable_hr input[type=checkbox]").uncheck()
    set_number(page, "txt2img_hires_steps", 0)
    page.fill("#txt2img_prompt textarea", text)
    page.click("#txt2img_paste")
    page.wait_for_function("() => document.querySelector('#txt2img_enable_hr input[type=checkbox]').checked")
    wait_value(page, "#txt2img_hires_steps input[type=number]", "2")
    page.locator("#txt2img_enable_hr input[type=checkbox]").uncheck()


def choose(page, elem_id: str, option: str):
    """Pick ``option`` in the gradio Dropdown ``elem_id``."""
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=option, exact=True).click()


def test_xyz_plot_from_the_script_dropdown_draws_a_grid(page):
    open_tab(page, "txt2img")
    page.fill("#txt2img_prompt textarea", "a square")
    choose(page, "txt2img_script", "X/Y/Z plot")
    # The chosen script's controls are the group that became visible (its number is its place in the list).
    group = page.wait_for_function(
        """() => { for (const g of document.querySelectorAll('[id^=txt2img_script_]'))
                     if (/^txt2img_script_\\d+$/.test(g.id) && g.offsetParent !== null) return g.id; }""").json_value()
    choose(page, f"{group}_arg_0", "Steps")
    page.locator(f"#{group}_arg_1 textarea, #{group}_arg_1 input").first.fill("1, 2")
    text = generate(page)
    assert "X Type: Steps" in text and 'X Values: "1, 2"' in text, text
    assert "Done: 1 image" in page.locator("#txt2img_progress").inner_text()
    width = page.wait_for_function("() => { const i = document.querySelector('#txt2img_gallery img');"
                                   " return i && i.naturalWidth; }", timeout=GENERATE_TIMEOUT).json_value()
    assert width >= 2 * 64, width  # two 64 px cells side by side (and the legend)
    choose(page, "txt2img_script", "None")


def test_png_info_sends_parameters_to_txt2img(page, server):
    saved = sorted((server.data_dir / "outputs").rglob("*.png"))[0]
    open_tab(page, "PNG Info")
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(saved))
    page.wait_for_function("() => document.querySelector('#pnginfo_parameters textarea').value.includes('Seed:')")
    params = page.locator("#pnginfo_parameters textarea").input_value()
    shot(page, "pnginfo")
    page.click("#pnginfo_send_txt2img")
    page.locator("#txt2img_prompt textarea").wait_for(state="visible")  # the send switched tabs
    wait_value(page, "#txt2img_prompt textarea", params.splitlines()[0])
    wait_value(page, "#txt2img_seed input", str(seed_of(params)))
    # Send to img2img: fields and the image; then an img2img generation from it.
    open_tab(page, "PNG Info")
    page.click("#pnginfo_send_img2img")
    page.locator("#img2img_prompt textarea").wait_for(state="visible")
    wait_value(page, "#img2img_prompt textarea", params.splitlines()[0])
    page.locator("#img2img_image img").wait_for(state="visible")
    set_number(page, "img2img_steps", 6)
    text = generate(page, "img2img")
    assert "Denoising strength: 0.75" in text and "Steps: 6" in text, text


def test_png_info_sends_hires_fix_to_txt2img(page, server):
    from PIL import Image

    # The Hires fix image made above: its parameters turn the section on, with their values.
    [saved] = [path for path in sorted((server.data_dir / "outputs").rglob("*.png"))
               if "Hires upscale: 2" in Image.open(path).info.get("parameters", "")][-1:]
    open_tab(page, "txt2img")
    set_number(page, "txt2img_hires_steps", 0)  # the section off and at its defaults before the send
    open_tab(page, "PNG Info")
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(saved))
    page.wait_for_function("() => document.querySelector('#pnginfo_parameters textarea').value"
                           ".includes('Hires upscale')")
    page.click("#pnginfo_send_txt2img")
    page.locator("#txt2img_prompt textarea").wait_for(state="visible")
    page.wait_for_function("() => document.querySelector('#txt2img_enable_hr input[type=checkbox]').checked")
    wait_value(page, "#txt2img_hires_steps input[type=number]", "2")
    wait_value(page, "#txt2img_hr_denoising_strength input[type=number]", "0.7")
    page.locator("#txt2img_enable_hr input[type=checkbox]").uncheck()
    set_number(page, "txt2img_hires_steps", 0)


def test_settings_apply_writes_config(page, server):
    open_tab(page, "Settings")
    page.locator("#setting_CLIP_stop_at_last_layers").wait_for(state="visible")
    # The embedded model's text encoder has 2 layers: a deeper clip skip is refused naming that limit.
    set_number(page, "setting_CLIP_stop_at_last_layers", 3)
    page.click("#settings_submit")
    page.wait_for_function("() => document.querySelector('#settings_result').innerText.includes('Not applied')")
    assert "2 layers" in page.locator("#settings_result").inner_text()
    assert "CLIP_stop_at_last_layers" not in server.config()
    set_number(page, "setting_CLIP_stop_at_last_layers", 2)
    set_number(page, "setting_eta_noise_seed_delta", 31337)
    page.click("#settings_submit")
    page.wait_for_function("() => document.querySelector('#settings_result').innerText.includes('Saved')")
    result = page.locator("#settings_result").inner_text()
    assert "Saved 2 changes" in result, result
    config = server.config()
    assert config["CLIP_stop_at_last_layers"] == 2 and config["eta_noise_seed_delta"] == 31337, config
    # A value out of range is refused with its reason, and nothing is stored.
    set_number(page, "setting_eta_noise_seed_delta", -5)
    page.click("#settings_submit")
    page.wait_for_function("() => document.querySelector('#settings_result').innerText.includes('Not applied')")
    assert "below the minimum" in page.locator("#settings_result").inner_text()
    assert server.config()["eta_noise_seed_delta"] == 31337
    # The refused value stays in its box to be fixed; Reload shows the stored values again.
    assert page.locator("#setting_eta_noise_seed_delta input").first.input_value() == "-5"
    page.click("#settings_reload")
    wait_value(page, "#setting_eta_noise_seed_delta input", "31337")
    # Search hides what does not match.
    page.fill("#settings_search textarea, #settings_search input", "clip skip")
    page.locator("#setting_eta_noise_seed_delta").wait_for(state="hidden")
    assert page.locator("#setting_CLIP_stop_at_last_layers").is_visible()
    page.fill("#settings_search textarea, #settings_search input", "")
    page.locator("#setting_eta_noise_seed_delta").wait_for(state="visible")
    shot(page, "settings")


def test_extension_tab_and_option(page, server):
    open_tab(page, "UI probe")
    page.fill("#ui_probe_input textarea", "quiet")
    page.click("#ui_probe_button")
    page.wait_for_function("() => document.querySelector('#ui_probe_output textarea').value === 'QUIET'")
    open_tab(page, "Settings")
    page.locator("#setting_ui_probe_greeting").wait_for(state="visible")
    page.fill("#setting_ui_probe_greeting textarea", "good evening")
    page.click("#settings_submit")
    page.wait_for_function("() => document.querySelector('#settings_result').innerText.includes('Saved 1 change')")
    assert server.config()["ui_probe_greeting"] == "good evening"


def test_other_tabs_render(page, server):
    open_tab(page, "img2img")
    page.locator("#img2img_generate").wait_for(state="visible")
    assert page.locator("#img2img_denoising_strength").is_visible()
    shot(page, "img2img")
    open_tab(page, "Extensions")
    page.locator("#extensions_table").wait_for(state="visible")
    assert "override-infotext" in page.locator("#extensions_table").inner_text()
    page.get_by_text("Resolved hook order").click()
    page.locator("#extensions_hooks_table").wait_for(state="visible")
    hooks = page.locator("#extensions_hooks_table").inner_text()
    assert "on_opts_override_enter" in hooks and "ui-probe" in hooks, hooks
    shot(page, "extensions")
    # Unticking an extension and applying stores disabled_extensions (it takes effect after a restart).
    page.locator("#extensions_enabled label", has_text="ui-probe").click()
    page.click("#extensions_apply")
    page.wait_for_function("() => document.querySelector('#extensions_status').innerText.includes('Saved')")
    assert "restart" in page.locator("#extensions_status").inner_text().lower()
    assert server.config()["disabled_extensions"] == ["ui-probe"]


def test_quick_setting_switches_the_checkpoint(page, server):
    from modules import sd_models

    alt = next(c for c in sd_models.list_checkpoints() if c.name == "serena-shapes-alt.safetensors")
    open_tab(page, "txt2img")
    page.locator("#quick_sd_model_checkpoint input").first.click()
    page.get_by_role("option", name=alt.title).click()
    page.wait_for_function("() => document.querySelector('#quicksettings_status').innerText.includes('saved')")
    assert server.config()["sd_model_checkpoint"] == alt.title
    page.fill("#txt2img_prompt textarea", "a green triangle")
    text = generate(page)
    assert f"Model hash: {alt.shorthash}" in text, text


def test_frozen_settings_are_read_only(browser, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"CLIP_stop_at_last_layers": 2}))
    server = Server(tmp_path, "--freeze-settings")
    try:
        server.wait_ready()
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server.url)
        open_tab(page, "Settings")
        assert "frozen" in page.locator("#settings_frozen_note").inner_text()
        assert page.locator("#settings_submit").is_disabled()
        assert page.locator("#setting_CLIP_stop_at_last_layers input[type=number]").first.is_disabled()
        assert page.locator("#quick_sd_model_checkpoint input").first.is_disabled()
        page.close()
    finally:
        server.stop()
    assert json.loads((tmp_path / "config.json").read_text()) == {"CLIP_stop_at_last_layers": 2}


# A page of another origin (its own server, another port) that calls Serena's API as a browser client would: a
# simple GET, and a JSON POST (which makes the browser send a CORS preflight first).
CORS_PAGE = """<!doctype html><title>client</title><script>
async function probe(api) {
  const out = {};
  try { out.get = (await (await fetch(api + "sdapi/v1/progress")).json()).state.job_count; }
  catch (e) { out.get = "blocked: " + e.message; }
  try {
    const r = await fetch(api + "sdapi/v1/png-info", {method: "POST", headers: {"Content-Type": "application/json"},
                                                       body: JSON.stringify({image: IMAGE})});
    out.post = (await r.json()).info;
  } catch (e) { out.post = "blocked: " + e.message; }
  return out;
}
const IMAGE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";
</script>"""


@pytest.fixture
def other_origin(tmp_path):
    """``http://127.0.0.1:<other port>/``: a plain static server holding ``CORS_PAGE``."""
    import functools
    import http.server

    (tmp_path / "index.html").write_text(CORS_PAGE)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_browser_on_another_origin_reaches_the_api_only_with_cors(browser, other_origin, tmp_path):
    allowed = Server(tmp_path / "allowed", "--nowebui", "--cors-allow-origins", f"http://localhost:1,{other_origin}")
    closed = Server(tmp_path / "closed", "--nowebui")
    try:
        allowed.wait_ready()
        closed.wait_ready()
        page = browser.new_page()
        page.goto(other_origin + "/index.html")
        assert page.evaluate("api => probe(api)", allowed.url) == {"get": 0, "post": ""}
        blocked = page.evaluate("api => probe(api)", closed.url)
        assert blocked["get"].startswith("blocked") and blocked["post"].startswith("blocked"), blocked
        page.close()
    finally:
        allowed.stop()
        closed.stop()
