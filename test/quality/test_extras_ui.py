"""The Extras tab: it answers what ``POST /sdapi/v1/extra-single-image`` answers, because it calls the same
``request_preparation.prepare_extras``/``run_extras``; its lists follow ``on_list_upscalers``; it is on the page."""

from __future__ import annotations

import base64
import html
import io

import gradio as gr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from modules import jobs, shared, upscalers
from modules.hookspecs import hookimpl
from modules.ui import extras


class Listing:
    def __init__(self, *items):
        self.items = list(items)

    @hookimpl
    def on_list_upscalers(self):
        return self.items


def stripes(image, width, height):
    """A deterministic upscaler whose result depends on the input and the size (unlike a solid fill)."""
    out = image.convert("RGB").resize((width, height), Image.Resampling.NEAREST)
    for x in range(0, width, 3):
        out.putpixel((x, 0), (x % 256, 7, 7))
    return out


def encode(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.tuples(st.integers(1, 24), st.integers(1, 24)), resize_mode=st.sampled_from([0, 1]),
       scale=st.floats(1, 4), target=st.tuples(st.integers(1, 40), st.integers(1, 40)), crop=st.booleans(),
       first=st.sampled_from(["None", "Lanczos", "Nearest", "Stripes"]),
       second=st.sampled_from(["None", "Lanczos", "Stripes"]), visibility=st.floats(0, 1))
def test_the_tab_gives_the_api_s_pixels(data_dir, fake_models, api_client, register, size, resize_mode, scale, target, crop, first, second,
                                        visibility):
    if not upscalers.all_upscalers()[3:]:
        register(Listing(upscalers.Upscaler("Stripes", stripes)), "stripes")
    source = Image.new("RGB", size, (10, 120, 240))
    source.putpixel((0, 0), (255, 0, 0))
    ui_image, ui_info = extras.upscale(source, resize_mode, scale, *target, crop, first, second, visibility)
    body = api_client.post("/sdapi/v1/extra-single-image", json={
        "image": encode(source), "resize_mode": resize_mode, "upscaling_resize": scale,
        "upscaling_resize_w": target[0], "upscaling_resize_h": target[1], "upscaling_crop": crop,
        "upscaler_1": first, "upscaler_2": second, "extras_upscaler_2_visibility": visibility}).json()
    api_image = Image.open(io.BytesIO(base64.b64decode(body["image"]))).convert("RGB")
    assert ui_image.convert("RGB").tobytes() == api_image.tobytes() and ui_image.size == api_image.size
    assert not jobs.state.busy


def test_the_tab_refuses_what_the_api_refuses_with_its_own_labels(data_dir, monkeypatch):
    image = Image.new("RGB", (100, 100))
    result, info = extras.upscale(image, 0, 4, 512, 512, True, "Lanczoz", "None", 0)
    assert result is None and "Upscaler 1: no upscaler named 'Lanczoz'" in html.unescape(info)
    monkeypatch.setitem(shared.opts.data, "api_max_output_pixels", 1024 * 1024)
    result, info = extras.upscale(Image.new("RGB", (600, 600)), 0, 2, 512, 512, True, "Lanczos", "None", 0)
    assert result is None and "Resize: the results would hold 1440000 pixels" in info
    result, info = extras.upscale(None, 0, 2, 512, 512, True, "Lanczos", "None", 0)
    assert result is None and "Drop an image" in info


def test_a_failing_upscaler_is_reported_in_the_tab(data_dir, register):
    def broken(image, width, height):
        raise ValueError("unsupported model")

    register(Listing(upscalers.Upscaler("Broken", broken)), "broken")
    result, info = extras.upscale(Image.new("RGB", (4, 4)), 0, 2, 8, 8, True, "Lanczos", "Broken", 0.5)
    assert result is None
    assert "Upscaler 2: upscaler 'Broken' failed: ValueError: unsupported model" in html.unescape(info)
    assert not jobs.queue_lock.locked()


def test_opening_the_tab_reads_the_list_again(data_dir, register):
    listing = register(Listing(), "late")
    with gr.Blocks() as blocks:
        with gr.Tab("Extras") as parent:
            tab = extras.create_tab(parent)
    config = blocks.get_config_file()
    ids = {c["props"].get("elem_id"): c["props"] for c in config["components"]}
    assert {"extras_image", "extras_upscaler_1", "extras_upscaler_2", "extras_upscaler_2_visibility",
            "extras_generate", "extras_result", "extras_resize_mode", "extras_upscaling_resize"} <= set(ids)
    assert [c[0] for c in ids["extras_upscaler_1"]["choices"]] == ["None", "Lanczos", "Nearest"]
    assert tab.upscaler_1 is not None
    listing.items.append(upscalers.Upscaler("Late", stripes))
    first, second = extras.refresh_choices("Late", "Gone")
    assert first.choices[-1][0] == "Late" and first.value == "Late" and second.value == "None"
