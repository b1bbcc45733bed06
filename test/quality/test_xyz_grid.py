"""The built-in "X/Y/Z plot" (issue 15 item 5): A1111's argument order and axis indices, value syntax, every value
checked before queueing (422 naming the argument), one nested-override generation per cell, the costliest axis
outermost, a labelled grid first, a failing cell marked while the others complete.

Generations run on the real tiny model (64x64, one step); each checkpoint is a copy of it with its own identity,
so the model cache counts real switches without reading weights twice.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import sys
import threading
import base64
from base64 import b64decode
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from modules import infotext, processing, scripts, sd_models, shared
from modules.extensions_api import Script, ScriptArg, hookimpl
from modules.extensions_api.testing import loaded

XYZ = Path(__file__).resolve().parents[2] / "extensions-builtin" / "xyz-grid"
BASE = {"prompt": "a red cat", "negative_prompt": "blurry", "steps": 1, "width": 64, "height": 64, "seed": 5,
        "cfg_scale": 5}
# Indices of A1111 1.10's txt2img list.
SEED, STEPS, CFG, PROMPT_SR, PROMPT_ORDER, SAMPLER, CHECKPOINT, CLIP_SKIP = 1, 4, 6, 7, 8, 9, 11, 24


@pytest.fixture(scope="module")
def xyz():
    """The extension's script module on its own, for its parsing functions (no host: nothing registered)."""
    spec = importlib.util.spec_from_file_location("xyz_grid_under_test", XYZ / "scripts" / "xyz_grid.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.fixture
def xyz_ext():
    with loaded(str(XYZ)) as ext:
        yield ext


@pytest.fixture
def models(data_dir, tiny_model, monkeypatch):
    """The model cache, each checkpoint of the data folder a copy of the tiny model named after it."""
    def load(info):
        model = copy.copy(tiny_model)
        model.info, model.vae_name = info, None
        return model

    manager = sd_models.LoadedModels(load)
    monkeypatch.setattr(sd_models, "model_manager", manager)
    return manager


@pytest.fixture
def client(models, xyz_ext, api_client):
    return api_client


def args(x_type=STEPS, x_values="1, 2", y_type=0, y_values="", z_type=0, z_values="", *, lone=True, legend=True,
         dropdowns=([], [], []), sub_grids=False, no_fixed_seeds=False, margin=0, csv_mode=False):
    return [x_type, x_values, dropdowns[0], y_type, y_values, dropdowns[1], z_type, z_values, dropdowns[2], legend,
            lone, sub_grids, no_fixed_seeds, False, False, False, margin, csv_mode]


def run(client, script_args, **body):
    return client.post("/sdapi/v1/txt2img", json={**BASE, **body, "script_name": "x/y/z plot",
                                                  "script_args": script_args})


def images(response) -> list[Image.Image]:
    return [Image.open(io.BytesIO(b64decode(i))) for i in response.json()["images"]]


def info(response) -> dict:
    import json
    return json.loads(response.json()["info"])


# -- values ---------------------------------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(start=st.integers(-50, 50), length=st.integers(0, 40), step=st.integers(1, 7), down=st.booleans())
def test_int_ranges_with_a_step_include_both_ends_reached(xyz, start, length, step, down):
    end = start - length if down else start + length
    sign = -1 if down else 1
    text = f"{start}-{end} ({'-' if down else '+'}{step})"
    assert xyz.int_values(text) == list(range(start, end + sign, sign * step))


@settings(max_examples=80, deadline=None)
@given(start=st.integers(-100, 100), end=st.integers(-100, 100), count=st.integers(1, 30))
def test_int_count_ranges_have_the_count_and_the_ends(xyz, start, end, count):
    values = xyz.int_values(f"{start}-{end} [{count}]")
    assert len(values) == count and values[0] == start
    assert count == 1 or values[-1] == end


@settings(max_examples=80, deadline=None)
@given(start=st.integers(0, 400), length=st.integers(0, 400), step=st.sampled_from([0.05, 0.1, 0.25, 0.3, 0.5, 1.5]))
def test_float_ranges_stay_within_the_ends_one_step_apart(xyz, start, length, step):
    lo, hi = start / 100, (start + length) / 100
    values = xyz.float_values(f"{lo}-{hi} (+{step})")
    assert values[0] == lo and all(lo <= v <= hi + 1e-9 for v in values)
    assert all(abs(b - a - step) < 1e-6 for a, b in zip(values, values[1:]))
    assert values[-1] + step > hi + 1e-9  # nothing left out before the end (A1111's arange could overshoot it)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(st.sampled_from('ab ,"\'-1é'), min_size=1)
                .map(str.strip).filter(bool), min_size=1, max_size=5))
def test_comma_lists_read_back_with_csv_quoting(xyz, values):
    assert xyz.split_values(xyz.to_csv(values)) == values


def test_value_syntax(xyz):
    assert xyz.split_values('"a, b", c,d') == ["a, b", "c", "d"]
    assert xyz.int_values("1-5") == [1, 2, 3, 4, 5]
    assert xyz.int_values("1-10 (+3)") == [1, 4, 7, 10]
    assert xyz.int_values("1-10 [4]") == [1, 4, 7, 10]
    assert xyz.float_values("1-2 [3]") == [1.0, 1.5, 2.0]
    assert xyz.float_values("0-1 (+0.3)") == [0.0, 0.3, 0.6, 0.9]
    axes = xyz.axes_for("txt2img")
    assert xyz.parse_values(axes[PROMPT_ORDER], ["a", "b", "c"])[:2] == [("a", "b", "c"), ("a", "c", "b")]
    assert len(xyz.parse_values(axes[PROMPT_ORDER], ["a", "b", "c"])) == 6
    assert xyz.reorder_prompt("a cat, in a hat, at noon", ("at noon", "a cat", "in a hat")) == \
        "at noon, a cat, in a hat"
    for bad in ("1-", "abc", "1-5 (+0)", "1-100000"):
        with pytest.raises(ValueError):
            xyz.int_values(bad)


def test_axes_keep_a1111s_indices_per_tab_and_are_found_by_name(xyz):
    txt, img = xyz.axes_for("txt2img"), xyz.axes_for("img2img")
    assert [a.label for a in txt[:12]] == ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps",
                                           "CFG Scale", "Prompt S/R", "Prompt order", "Sampler", "Hires sampler",
                                           "Checkpoint name"]
    assert txt[CLIP_SKIP].label == "Clip skip" and txt[41].label == "Size"
    # img2img has no Hires axes but an Image CFG Scale, so its indices differ (as in A1111)
    assert [a.label for a in img[4:11]] == ["Steps", "CFG Scale", "Image CFG Scale", "Prompt S/R", "Prompt order",
                                            "Sampler", "Checkpoint name"]
    assert img[40].label == "Size"
    # then every registered option, in registration order; the fixed axis keeps a shared label
    ensd = xyz.find_axis(txt, "ENSD")
    assert ensd >= 42 and txt[ensd].target == "eta_noise_seed_delta"
    assert xyz.find_axis(txt, "eta noise seed delta") == xyz.find_axis(txt, "ETA_NOISE_SEED_DELTA") == ensd
    assert xyz.find_axis(txt, "clip skip") == CLIP_SKIP
    assert txt[xyz.find_axis(txt, "CLIP_stop_at_last_layers")].label == "Clip skip (CLIP_stop_at_last_layers)"
    assert not any(a.target.startswith("api_max") for a in txt)  # restricted options cannot be overridden


# -- the script through the API ----------------------------------------------------------------------------------


def test_listed_for_both_tabs_with_a1111s_arguments(client):
    assert "x/y/z plot" in client.get("/sdapi/v1/scripts").json()["txt2img"]
    assert "x/y/z plot" in client.get("/sdapi/v1/scripts").json()["img2img"]
    listed = [s for s in client.get("/sdapi/v1/script-info").json() if s["name"] == "x/y/z plot"]
    assert [s["is_img2img"] for s in listed] == [False, True]
    labels = [a["label"] for a in listed[0]["args"]]
    assert labels == ["X type", "X values", "X values", "Y type", "Y values", "Y values", "Z type", "Z values",
                      "Z values", "Draw legend", "Include Sub Images", "Include Sub Grids", "Keep -1 for seeds",
                      "Vary seeds for X", "Vary seeds for Y", "Vary seeds for Z", "Grid margins (px)",
                      "Use text inputs instead of dropdowns"]
    assert listed[0]["args"][0]["value"] == "Seed" and listed[0]["args"][0]["choices"][5] == "Hires steps"
    assert listed[1]["args"][0]["choices"][5] == "CFG Scale"


def test_a_2x2_grid_is_a_labelled_grid_then_the_cells(client):
    r = run(client, args(STEPS, "1-2", CFG, "3, 7"))
    assert r.status_code == 200, r.text
    grid, *cells = images(r)
    assert len(cells) == 4 and all(c.size == (64, 64) for c in cells)
    assert grid.width > 128 and grid.height > 128  # the legend's margins: labels above and left of the tiles
    texts = info(r)["infotexts"]
    assert len(texts) == 5
    params = [infotext.parse_generation_parameters(t) for t in texts]
    assert [(p["Steps"], p["CFG scale"]) for p in params[1:]] == [("1", "3.0"), ("2", "3.0"), ("1", "7.0"),
                                                                  ("2", "7.0")]  # X fastest, as A1111
    assert params[0]["Script"] == "X/Y/Z plot" and params[0]["X Type"] == "Steps" and params[0]["X Values"] == "1-2"
    assert params[0]["Y Type"] == "CFG Scale" and "Script" not in params[1]
    # the tiles are the cells, in place; without a legend the grid is the tiles only
    left, top = grid.width - 128, grid.height - 128
    assert grid.crop((left + 64, top + 64, left + 128, top + 128)).tobytes() == cells[3].tobytes()
    plain = run(client, args(STEPS, "1-2", CFG, "3, 7", legend=False, lone=False))
    assert [i.size for i in images(plain)] == [(128, 128)]
    assert images(plain)[0].tobytes() == grid.crop((left, top, left + 128, top + 128)).tobytes()  # deterministic
    # the legend has text in its margins
    assert grid.crop((0, 0, grid.width, top)).getextrema() != ((255, 255),) * 3


def test_axes_by_name_match_axes_by_index(client):
    by_index = run(client, args(SAMPLER, "Euler, DDIM", lone=False))
    by_name = run(client, args("sampler", "Euler, DDIM", lone=False))
    assert by_index.status_code == by_name.status_code == 200
    assert images(by_index)[0].tobytes() == images(by_name)[0].tobytes()


def test_a_z_axis_and_sub_grids(client):
    r = run(client, args(STEPS, "1", SEED, "1, 2", CFG, "3, 5", lone=False, sub_grids=True, legend=False))
    assert r.status_code == 200, r.text
    main, *subs = images(r)
    assert [s.size for s in subs] == [(64, 128), (64, 128)] and main.size == (128, 128)
    texts = info(r)["infotexts"]
    assert "Z Type: CFG Scale" in texts[0] and "Z Type" not in texts[1] and "Y Type: Seed" in texts[1]


def test_settings_axes_are_each_cells_nested_override(client, monkeypatch):
    during = []
    inner = processing.StableDiffusionProcessing.sample_batch

    def sample_batch(p, *a):  # another client asks for the options while a cell runs
        thread = threading.Thread(target=lambda: during.append(
            (client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"], shared.opts.CLIP_stop_at_last_layers)))
        thread.start()
        thread.join(10)
        return inner(p, *a)

    monkeypatch.setattr(processing.StableDiffusionProcessing, "sample_batch", sample_batch)
    r = run(client, args(CLIP_SKIP, "1, 2", STEPS, "1"), override_settings={"eta_noise_seed_delta": 31337})
    assert r.status_code == 200, r.text
    texts = info(r)["infotexts"][1:]
    assert "Clip skip" not in texts[0] and "Clip skip: 2" in texts[1]  # recorded while the cell's override is on
    assert all("ENSD: 31337" in t for t in texts)  # the request's own overrides hold for every cell
    assert during == [(1, 1), (1, 1)]  # other threads see stored values; the job thread outside any layer too
    assert shared.opts.stored() == {} and shared.opts.layers() == ()


def test_an_option_axis_by_name(client):
    r = run(client, args("Eta noise seed delta", "0, 7"))
    assert r.status_code == 200, r.text
    texts = info(r)["infotexts"]
    assert "ENSD" not in texts[1] and "ENSD: 7" in texts[2]
    assert "X Type: Eta noise seed delta" in texts[0]


def test_a_failing_cell_is_marked_and_the_others_complete(client, monkeypatch):
    inner = processing.StableDiffusionProcessing.sample_batch

    def sample_batch(p, *a):
        if p.cfg_scale == 7 and p.steps == 2:
            raise RuntimeError("boom in the sampler")
        return inner(p, *a)

    monkeypatch.setattr(processing.StableDiffusionProcessing, "sample_batch", sample_batch)
    r = run(client, args(STEPS, "1, 2", CFG, "3, 7", CLIP_SKIP, "2"))
    assert r.status_code == 200, r.text
    grid, *cells = images(r)
    warnings = info(r)["warnings"]
    assert any("cell X=Steps: 2, Y=CFG Scale: 7.0, Z=Clip skip: 2 failed: RuntimeError: boom" in w
               for w in warnings), warnings
    assert cells[0].tobytes() != cells[3].tobytes() and cells[3].getpixel((32, 32)) == (200, 0, 0)  # the red cross
    assert [bool(t) for t in info(r)["infotexts"][1:]] == [True, True, True, False]
    assert shared.opts.stored() == {} and shared.opts.layers() == ()
    assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1


def test_a_checkpoint_axis_loads_each_checkpoint_once(client, models):
    r = run(client, args(CHECKPOINT, "alpha, beta, alpha", CLIP_SKIP, "1, 2"))
    assert r.status_code == 200, r.text
    assert models.loads == 2  # alpha for its four cells, then beta: not alpha, beta, alpha, beta, alpha, beta
    texts = [infotext.parse_generation_parameters(t) for t in info(r)["infotexts"][1:]]
    assert [(t["Model"], t.get("Clip skip", "1")) for t in texts] == [
        ("alpha", "1"), ("beta", "1"), ("alpha", "1"), ("alpha", "2"), ("beta", "2"), ("alpha", "2")]  # as asked
    assert shared.opts.stored() == {}


@pytest.mark.parametrize("script_args, field, message", [
    (args(999), "script_args[0] (X type)", "not a position"),
    (args("Warp speed"), "script_args[0] (X type)", "is not one of"),
    (args("Sigma Churn", "1"), "script_args[0] (X type)", "no `s_churn` field"),
    (args(STEPS, "1-"), "script_args[1] (X values)", "not a whole number"),
    (args(STEPS, "0, 1"), "script_args[1] (X values)", "steps"),
    (args(SAMPLER, "Euler, Nope"), "script_args[1] (X values)", "Nope"),
    (args(SAMPLER, "", dropdowns=(["Nope"], [], [])), "script_args[2] (X values)", "Nope"),
    (args(CHECKPOINT, "alpha, gamma"), "script_args[1] (X values)", "gamma"),
    (args(PROMPT_SR, "dog, cat"), "script_args[1] (X values)", "did not find 'dog'"),
    (args(STEPS, "1", CLIP_SKIP, "1, 99"), "script_args[4] (Y values)", "99"),
    (args(STEPS, "1-5", CFG, "1-5"), "script_args[1] (X values)", "api_max_images"),
    (args(STEPS, "1", dropdowns=("no", [], [])), "script_args[2] (X values)", "list of strings"),
    (args(SEED, "1-1000", SEED, "1-1000"), "script_args[1] (X values)", "megapixels"),
])
def test_bad_arguments_are_422_naming_the_argument_and_nothing_runs(client, models, script_args, field, message):
    r = run(client, script_args)
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert field in errors and message in errors[field], errors
    assert models.loads == 0


def test_prompt_search_and_replace_and_order(client):
    r = run(client, args(PROMPT_SR, "red, blue", PROMPT_ORDER, "a, cat", lone=True, legend=False))
    assert r.status_code == 200, r.text
    prompts = [t.splitlines()[0] for t in info(r)["infotexts"][1:]]
    assert prompts == ["a red cat", "a blue cat", "cat red a", "cat blue a"]


# -- what the framework gained for it ----------------------------------------------------------------------------


def test_index_and_list_arguments():
    kind = ScriptArg("Kind", 1, choices=("Nothing", "Seed"), index=True)
    assert kind.check(0) == 0 and kind.check("SEED") == 1 and kind.api_info()["value"] == "Seed"
    for bad in (2, -1, 0.5, True, "Steps"):
        with pytest.raises(ValueError):
            kind.check(bad)
    names = ScriptArg("Names", [], type="list")
    assert names.check(["a", "b"]) == ["a", "b"] and names.check("") == [] and names.check(None) == []
    with pytest.raises(ValueError):
        names.check([1])


def test_one_title_may_name_a_script_per_tab(register):
    class Left(Script):
        title, tabs = "Same", ("txt2img",)

    class Right(Script):
        title, tabs = "Same", ("img2img",)

    class Again(Script):
        title = "same"

    listed = [Left(), Right(), Again()]

    class Lister:
        @hookimpl
        def on_list_scripts(self):
            return listed

    register(Lister(), "same-lister")
    assert scripts.find("txt2img", "same") is listed[0] and scripts.find("img2img", "SAME") is listed[1]
    assert listed[2] not in scripts.available()  # its tabs are both taken


def test_the_ui_shows_axis_dropdowns_and_runs_a_grid(models, xyz_ext):
    import gradio as gr

    from modules.ui import generation, txt2img
    from ui_form import form_values

    with gr.Blocks():
        form = txt2img.create_tab()
    [controls] = [c for title, c in form.script_controls if title == "X/Y/Z plot"]
    x_type, x_values, x_dropdown = controls[:3]
    assert (type(x_type).__name__, x_type.type, x_type.value) == ("Dropdown", "index", "Seed")
    assert x_dropdown.multiselect and type(controls[16]).__name__ == "Slider"
    # gradio hands run the dropdown's position; an empty values dropdown falls back to the text values
    title, script_args = generation.script_values(form, "X/Y/Z plot", args(SAMPLER, "Euler, DDIM", lone=False))
    events = list(generation.run_generation(txt2img.make_p, ("session", "txt2img"), "txt2img", [],
                                            form_values(steps=1, script=("txt2img", title, script_args))))
    gallery, text = events[-1][0], events[-1][1]
    assert len(gallery) == 1 and "X Type: Sampler, X Values: \"Euler, DDIM\"" in text


def test_cond_image_mask_weight_axis_sets_the_option_per_cell(xyz, client):
    """A1111's img2img axis "Cond. Image Mask Weight" is Serena's ``inpainting_mask_weight`` option, per cell."""
    image = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(image, format="PNG")
    axis = xyz.find_axis(xyz.axes_for("img2img"), "Cond. Image Mask Weight")
    r = client.post("/sdapi/v1/img2img", json={**BASE, "init_images": [base64.b64encode(image.getvalue()).decode()],
                                               "script_name": "x/y/z plot",
                                               "script_args": args(x_type=axis, x_values="0.25, 0.5")})
    assert r.status_code == 200, r.text
    assert r.json()["warnings"] == [] and shared.opts.inpainting_mask_weight == 1.0
