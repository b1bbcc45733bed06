"""Scripts (issue 15 item 4) and the built-in "Prompts from file or textbox" (item 5): selection and argument
checks before queueing, A1111's /scripts and /script-info shapes, run replacing the generation, per-line settings
nested inside the request's overrides, always-on scripts and their arguments.

No model runs here: ``sample_batch`` paints small images and records what each generation saw.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from modules import infotext, jobs, processing, scripts, shared
from modules.api.api import Api
from modules.extensions_api import Script, ScriptArg, hookimpl
from modules.extensions_api.testing import loaded
from ui_form import form_values

ROOT = Path(__file__).resolve().parents[2]
PROMPTS_FROM_FILE = ROOT / "extensions-builtin" / "prompts-from-file"


class _Seen(list):
    gate: dict


@pytest.fixture
def seen(monkeypatch):
    """What every generation saw (prompts, seeds, steps, effective clip skip and checkpoint); ``seen.gate["during"]``
    runs inside each generation."""
    record = _Seen()
    gate = {"during": None}

    def sample_batch(p, model, prompts, negative_prompts, seeds, subseeds):
        record.append({"prompts": list(prompts), "seeds": list(seeds), "steps": p.steps, "width": p.width,
                       "clip_skip": shared.opts.CLIP_stop_at_last_layers, "model": model.info.name})
        if gate["during"] is not None:
            gate["during"](p)
        return [Image.new("RGB", (p.width, p.height), (seed % 256, 0, 0)) for seed in seeds]

    monkeypatch.setattr(processing.StableDiffusionProcessing, "sample_batch", sample_batch)
    record.gate = gate
    return record


@pytest.fixture
def prompts_ext():
    with loaded(str(PROMPTS_FROM_FILE)) as ext:
        yield ext


@pytest.fixture
def client(data_dir, fake_models, seen):
    app = FastAPI()
    Api(app)
    with TestClient(app) as c:
        yield c
    assert not jobs.queue_lock.locked() and not jobs.state.busy


class Seeded(Script):
    """A selectable script with every kind of argument, for the schema checks."""

    title = "Seeded Test"
    tabs = ("txt2img",)
    args = (ScriptArg("Enabled", True), ScriptArg("Mode", "a", choices=("a", "b")),
            ScriptArg("Seed", 3, minimum=0, maximum=10, step=1), ScriptArg("Scale", 0.5, minimum=0.0, maximum=1.0))

    def run(self, p, enabled, mode, seed, scale):
        self.got = (enabled, mode, seed, scale)
        processed = scripts.process_item(p, seed=seed)
        processed.infotexts = [f"{t}, Mode: {mode}" for t in processed.infotexts]
        return processed


class Marker(Script):
    """An always-on script: records its arguments and marks each image's infotext."""

    title = "Marker"
    alwayson = True
    args = (ScriptArg("Enabled", False), ScriptArg("Label", "x"))

    def __init__(self):
        self.calls = []

    def before_process(self, p, enabled, label):
        self.calls.append(("before_process", enabled, label))

    def process(self, p, enabled, label):
        self.calls.append(("process", enabled, label, shared.opts.CLIP_stop_at_last_layers))
        if enabled:
            p.extra_generation_params["Marker"] = label

    def postprocess(self, p, processed, enabled, label):
        self.calls.append(("postprocess", enabled, label, len(processed.images)))


@pytest.fixture
def test_scripts(register):
    listed = {"seeded": Seeded(), "marker": Marker()}

    class Lister:
        @hookimpl
        def on_list_scripts(self):
            return list(listed.values())

    register(Lister(), "script-lister")
    return listed


def fields(text: str) -> dict:
    return infotext.parse_generation_parameters(text)


# -- the hook, listing, A1111's shapes ------------------------------------------------------------------------------


def test_scripts_and_script_info_in_a1111_shapes(client, test_scripts, prompts_ext):
    listing = client.get("/sdapi/v1/scripts").json()
    assert listing == {"txt2img": ["seeded test", "marker", "prompts from file or textbox"],
                       "img2img": ["marker", "prompts from file or textbox"]}
    info = client.get("/sdapi/v1/script-info").json()
    assert [(i["name"], i["is_alwayson"], i["is_img2img"]) for i in info] == [
        ("seeded test", False, False), ("marker", True, False), ("prompts from file or textbox", False, False),
        ("marker", True, True), ("prompts from file or textbox", False, True)]
    assert info[0]["args"][2] == {"label": "Seed", "value": 3, "minimum": 0, "maximum": 10, "step": 1,
                                  "choices": None}
    assert info[0]["args"][1]["choices"] == ["a", "b"]
    assert [a["label"] for a in info[2]["args"]] == ["Iterate seed every line", "Use same random seed for all lines",
                                                     "Insert prompts at the", "List of prompt inputs"]


def test_no_script_lists_empty(client):
    assert client.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}
    assert client.get("/sdapi/v1/script-info").json() == []


def test_a_second_script_with_the_same_title_is_ignored(test_scripts, register):
    class Again:
        @hookimpl
        def on_list_scripts(self):
            return Seeded()  # one Script, not a list, is fine too

    register(Again(), "again")
    assert [s.title for s in scripts.available("txt2img")] == ["Seeded Test", "Marker"]


def test_script_arg_refuses_a_default_outside_its_schema():
    with pytest.raises(ValueError, match="above the maximum"):
        ScriptArg("Steps", 200, maximum=150)
    with pytest.raises(TypeError, match="type must be one of"):
        ScriptArg("Anything", None)


# -- selection and checks before queueing ---------------------------------------------------------------------


def test_script_name_is_case_insensitive_and_run_replaces_the_generation(client, test_scripts, seen):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "cat", "steps": 2, "width": 64, "height": 64,
                                               "script_name": "SEEDED test", "script_args": [True, "b", 7]})
    assert r.status_code == 200, r.text
    assert test_scripts["seeded"].got == (True, "b", 7, 0.5)  # the missing argument is its default
    assert [s["seeds"] for s in seen] == [[7]]
    info = r.json()["info"]
    assert '"infotexts": ["cat\\nSteps: 2' in info and "Mode: b" in info


@pytest.mark.parametrize("body, field, message", [
    ({"script_name": "no such"}, "script_name", "no selectable txt2img script named 'no such'"),
    ({"script_name": "marker"}, "script_name", "no selectable txt2img script named 'marker'"),
    ({"script_name": "seeded test", "script_args": [True, "c"]}, "script_args[1] (Mode)", "not one of"),
    ({"script_name": "seeded test", "script_args": [True, "a", 11]}, "script_args[2] (Seed)",
     "above the maximum of 10"),
    ({"script_name": "seeded test", "script_args": [True, "a", 2.5]}, "script_args[2] (Seed)", "whole number"),
    ({"script_name": "seeded test", "script_args": ["yes"]}, "script_args[0] (Enabled)", "true or false"),
    ({"script_name": "seeded test", "script_args": [True, "a", 1, 0.1, 9]}, "script_args", "5 arguments given"),
    ({"script_args": [1]}, "script_args", "without `script_name`"),
    ({"alwayson_scripts": {"nope": {"args": []}}}, "alwayson_scripts.nope", "no always-on txt2img script"),
    ({"alwayson_scripts": {"Seeded Test": {"args": []}}}, "alwayson_scripts.Seeded Test", "selectable script"),
    ({"alwayson_scripts": {"marker": {"args": [True, 5]}}}, "alwayson_scripts.marker.args[1] (Label)",
     "expected a string"),
])
def test_bad_script_requests_are_422_naming_the_argument_and_nothing_runs(client, test_scripts, seen, body, field,
                                                                          message):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "cat", "steps": 2, "width": 64, "height": 64, **body})
    assert r.status_code == 422, r.text
    assert message in r.json()["errors"][field]
    assert seen == []


def test_an_img2img_only_tab_does_not_offer_a_txt2img_script(client, test_scripts):
    r = client.post("/sdapi/v1/img2img", json={"init_images": [_png()], "script_name": "seeded test"})
    assert r.status_code == 422 and "no selectable img2img script" in r.json()["errors"]["script_name"]


@settings(max_examples=40, deadline=None)
@given(value=st.one_of(st.integers(-1000, 1000), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                       st.text(max_size=3), st.none()))
def test_a_number_argument_accepts_exactly_the_whole_numbers_in_bounds(value):
    arg = ScriptArg("Seed", 3, minimum=0, maximum=10)
    fits = (not isinstance(value, bool) and isinstance(value, (int, float)) and value == value
            and value not in (float("inf"), float("-inf")) and value == int(value) and 0 <= value <= 10)
    if fits:
        assert arg.check(value) == int(value)
    else:
        with pytest.raises(ValueError):
            arg.check(value)


# -- always-on scripts ---------------------------------------------------------------------------------------------


def test_an_always_on_script_gets_its_args_at_each_point(client, test_scripts, seen):
    marker = test_scripts["marker"]
    r = client.post("/sdapi/v1/txt2img", json={
        "prompt": "cat", "steps": 2, "width": 64, "height": 64, "batch_size": 2,
        "override_settings": {"CLIP_stop_at_last_layers": 2},
        "alwayson_scripts": {"MARKER": {"args": [True, "hello"]}}})
    assert r.status_code == 200, r.text
    assert marker.calls == [("before_process", True, "hello"), ("process", True, "hello", 2),
                            ("postprocess", True, "hello", 2)]
    assert fields(r.json()["info"].split('"infotexts": ["')[1].split('"')[0].replace("\\n", "\n"))["Marker"] == \
        "hello"


def test_an_always_on_script_not_named_runs_with_its_defaults(client, test_scripts):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "cat", "steps": 2, "width": 64, "height": 64})
    assert r.status_code == 200, r.text
    assert test_scripts["marker"].calls[1][:3] == ("process", False, "x")
    assert "Marker" not in r.json()["info"]


def test_always_on_scripts_run_for_each_item_of_a_selected_script(client, test_scripts, prompts_ext):
    r = client.post("/sdapi/v1/txt2img", json={
        "steps": 2, "width": 64, "height": 64, "script_name": "prompts from file or textbox",
        "script_args": [False, False, "start", "a\nb"], "alwayson_scripts": {"marker": {"args": [True, "m"]}}})
    assert r.status_code == 200, r.text
    assert [c[0] for c in test_scripts["marker"].calls] == ["before_process", "process", "postprocess"] * 2


# -- prompts from file or textbox ----------------------------------------------------------------------------------


def _run_prompts(client, text, **body):
    request = {"prompt": "", "steps": 3, "width": 64, "height": 64, "seed": 100,
               "script_name": "Prompts from file or textbox", "script_args": [False, False, "start", text], **body}
    return client.post("/sdapi/v1/txt2img", json=request)


def _infotexts(response) -> list[dict]:
    import json
    return [fields(t) for t in json.loads(response.json()["info"])["infotexts"]]


def test_prompts_per_line_settings_apply_to_that_line_only(client, prompts_ext, seen):
    text = ('a red cat\n'
            '\n'
            '--prompt "a blue dog" --steps 5 --seed 7 --width 128 --batch_size 2\n'
            '--prompt a green bird --cfg_scale 4.5 --sd_model beta\n'
            'a plain line')
    r = _run_prompts(client, text, override_settings={"CLIP_stop_at_last_layers": 2})
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 5
    info = _infotexts(r)
    assert [i["Prompt"] for i in info] == ["a red cat", "a blue dog", "a blue dog", "a green bird", "a plain line"]
    assert [i["Steps"] for i in info] == ["3", "5", "5", "3", "3"]
    assert [i["Seed"] for i in info] == ["100", "7", "8", "100", "100"]
    assert [i["Size-1"] for i in info] == ["64", "128", "128", "64", "64"]
    assert [i["CFG scale"] for i in info] == ["7.0", "7.0", "7.0", "4.5", "7.0"]
    # The request's override holds for every line; the line's checkpoint for that line only.
    assert [s["clip_skip"] for s in seen] == [2, 2, 2, 2]
    assert [s["model"] for s in seen] == ["alpha.safetensors", "alpha.safetensors", "beta.safetensors",
                                          "alpha.safetensors"]
    assert shared.opts.CLIP_stop_at_last_layers == 1 and shared.opts.stored() == {}


def test_prompts_from_file_on_img2img_keeps_the_init_image_and_denoising(client, prompts_ext, seen):
    r = client.post("/sdapi/v1/img2img", json={
        "init_images": [_png()], "denoising_strength": 0.4, "steps": 2, "width": 64, "height": 64, "seed": 3,
        "script_name": "prompts from file or textbox", "script_args": [False, False, "start", "a\n--prompt b --seed 9"]})
    assert r.status_code == 200, r.text
    info = _infotexts(r)
    assert [(i["Prompt"], i["Seed"], i["Denoising strength"]) for i in info] == [("a", "3", "0.4"), ("b", "9", "0.4")]


def test_prompts_are_put_before_or_after_the_request_prompt(client, prompts_ext):
    for position, expected in (("start", "cat, tabby"), ("end", "tabby cat,")):  # A1111 joins with a space
        r = _run_prompts(client, "cat,", prompt="tabby", script_args=[False, False, position, "cat,"])
        assert r.status_code == 200, r.text
        assert _infotexts(r)[0]["Prompt"] == expected


def test_prompts_iterate_seed_every_line(client, prompts_ext):
    r = _run_prompts(client, "a\nb\nc", n_iter=2, script_args=[True, False, "start", "a\nb\nc"])
    assert [i["Seed"] for i in _infotexts(r)] == ["100", "101", "102", "103", "104", "105"]


def test_prompts_same_random_seed_for_all_lines(client, prompts_ext):
    r = _run_prompts(client, "a\nb", seed=-1, script_args=[False, True, "start", "a\nb"])
    seeds = [i["Seed"] for i in _infotexts(r)]
    assert len(seeds) == 2 and seeds[0] == seeds[1]


@pytest.mark.parametrize("text, message", [
    ("a cat\n--steps ten", "line 2 ('--steps ten'): --steps: invalid literal"),
    ("--colour red", "line 1 ('--colour red'): unknown option --colour"),
    ("ok\n\n--steps", "line 3 ('--steps'): missing value for --steps"),
    ('--prompt "unclosed', "line 1 ('--prompt \"unclosed'): No closing quotation"),
    ("--prompt a --width 100", "line 1 ('--prompt a --width 100'): width: `width` must be a positive multiple"),
    ("--prompt a --sampler_name Nope",
     "line 1 ('--prompt a --sampler_name Nope'): sampler_name: unknown sampler 'Nope'"),
    ("--prompt a --sd_model gamma",
     "line 1 ('--prompt a --sd_model gamma'): invalid override settings: sd_model_checkpoint: no checkpoint named"),
    ("--tiling yes --prompt a", "line 1 ('--tiling yes --prompt a'): --tiling: expected true or false"),
    # The API's limits hold for every line, not only for the request's own fields.
    ("--prompt a --width 4096", "line 1 ('--prompt a --width 4096'): width: 4096 is above this server's limit"),
    ("--prompt a --steps 151", "line 1 ('--prompt a --steps 151'): steps: 151 is above this server's limit"),
    ("\n".join(["--prompt a --batch_size 8"] * 20), "the lines make 160 images, above this server's limit"),
])
def test_a_bad_line_is_a_422_naming_the_line_and_nothing_runs(client, prompts_ext, seen, text, message):
    r = _run_prompts(client, text)
    assert r.status_code == 422, r.text
    assert message in r.json()["errors"]["script_args[3] (List of prompt inputs)"]
    assert seen == []


def test_options_during_a_script_show_stored_values(client, prompts_ext, seen):
    during = []

    def look(p):  # from another thread, as another client: it must see the stored values only
        def get():
            during.append((client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"],
                           [layer["keys"] for layer in client.get("/serena/v1/overrides/active").json()["overrides"]]))
        thread = threading.Thread(target=get)
        thread.start()
        thread.join(10)

    seen.gate["during"] = look
    r = _run_prompts(client, "a\n--prompt b --sd_model beta", override_settings={"CLIP_stop_at_last_layers": 3})
    assert r.status_code == 200, r.text
    assert [s["clip_skip"] for s in seen] == [3, 3]
    assert [d[0] for d in during] == [1, 1]  # the stored value, while 3 is in effect for the generation
    # The request's layer, then the second line's checkpoint nested inside it.
    assert during[0][1] == [["CLIP_stop_at_last_layers"]]
    assert during[1][1] == [["CLIP_stop_at_last_layers"], ["sd_model_checkpoint"]]


def test_a_failing_line_restores_everything(client, prompts_ext, seen, monkeypatch):
    def boom(p):
        if p.prompt == "b":
            raise RuntimeError("boom")
    seen.gate["during"] = boom
    with TestClient(client.app, raise_server_exceptions=False) as c:
        r = _run_prompts(c, "a\n--prompt b --sd_model beta\nc", override_settings={"CLIP_stop_at_last_layers": 2})
    assert r.status_code == 500
    assert shared.opts.CLIP_stop_at_last_layers == 1 and shared.opts.stored() == {}
    assert shared.opts.layers() == ()


def _png() -> str:
    import base64
    import io
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# -- the UI: the Script dropdown and the chosen script's controls --------------------------------------------------


def test_ui_script_dropdown_shows_the_chosen_scripts_controls(data_dir, fake_models, test_scripts, prompts_ext):
    import gradio as gr

    from modules.ui import generation, txt2img

    with gr.Blocks():
        form = txt2img.create_tab()
    assert form.script.choices == [("None", "None"), ("Seeded Test", "Seeded Test"),
                                   ("Prompts from file or textbox", "Prompts from file or textbox")]
    (title, controls), (_, prompt_controls) = form.script_controls
    assert title == "Seeded Test"
    assert [type(c).__name__ for c in controls] == ["Checkbox", "Radio", "Slider", "Slider"]
    assert (controls[2].minimum, controls[2].maximum, controls[2].step, controls[2].value) == (0, 10, 1, 3)
    assert [c.label for c in prompt_controls] == ["Iterate seed every line", "Use same random seed for all lines",
                                                  "Insert prompts at the", "List of prompt inputs"]
    assert prompt_controls[3].lines == 7
    # Choosing a script shows its group only; "None" hides them all.
    titles = [t for t, _ in form.script_controls]
    assert [u["visible"] for u in generation.visible_groups(titles, "Prompts from file or textbox")] == [False, True]
    assert [u["visible"] for u in generation.visible_groups(titles, "None")] == [False, False]


def test_ui_runs_the_chosen_script_with_its_controls_values(data_dir, fake_models, seen, prompts_ext):
    import gradio as gr

    from modules.ui import generation, txt2img

    with gr.Blocks():
        form = txt2img.create_tab()
    title, args = generation.script_values(form, "Prompts from file or textbox",
                                           [False, False, "start", "--prompt a --steps 4\nb"])
    events = list(generation.run_generation(txt2img.make_p, ("session", "txt2img"), "txt2img", [],
                                            form_values(prompt="", script=("txt2img", title, args))))
    gallery, info = events[-1][0], events[-1][1]
    assert len(gallery) == 2 and info.startswith("a\nSteps: 4")
    assert [s["steps"] for s in seen] == [4, 2]


def test_ui_refuses_a_bad_line_with_the_apis_message(data_dir, fake_models, seen, prompts_ext):
    from modules.ui import generation, txt2img

    [event] = generation.run_generation(txt2img.make_p, ("session", "txt2img"), "txt2img", [],
                                        form_values(prompt="", script=("txt2img", "Prompts from file or textbox",
                                                             [False, False, "start", "--steps x"])))
    assert "script_args[3] (List of prompt inputs): line 1 (&#x27;--steps x&#x27;)" in event[3]
    assert seen == []
