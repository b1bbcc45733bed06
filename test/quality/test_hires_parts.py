"""Hires fix's pure parts: the target size (A1111's calculate_target_resolution), the UI section's fields, and
every paste of the txt2img tab (its button, PNG Info's "Send to txt2img") filling them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from modules import hires, request_preparation

sides = st.integers(min_value=1, max_value=64).map(lambda n: n * 8)


@given(sides, sides, st.floats(min_value=1.0, max_value=4.0))
def test_scale_target_is_the_scaled_size_in_whole_cells(width, height, scale):
    size = hires.target(width, height, scale, 0, 0)
    assert (size.width, size.height) == (int(width * scale) // 8 * 8, int(height * scale) // 8 * 8)
    assert (size.upscale_width, size.upscale_height) == (size.width, size.height)


@given(sides, sides, sides, sides)
def test_resize_target_covers_then_cuts_to_the_asked_size(width, height, rx, ry):
    size = hires.target(width, height, 1.0, rx, ry)
    assert (size.width, size.height) == (rx, ry)
    assert size.upscale_width >= size.width and size.upscale_height >= size.height


@given(sides, sides, sides)
def test_one_resize_side_keeps_the_aspect_ratio(width, height, rx):
    size = hires.target(width, height, 1.0, rx, 0)
    assert size.width == rx and size.height == rx * height // width // 8 * 8


def test_ui_section_gives_fields_only_when_enabled_and_pastes_an_infotext():
    from modules.ui import hires as section

    defaults = [default for _, _, default in section.FIELDS]
    assert section.p_kwargs(defaults) == {}
    on = dict(zip([n for n, _, _ in section.FIELDS], defaults), enable_hr=True, hr_resize_x="96")
    fields = section.p_kwargs(list(on.values()))
    assert fields["enable_hr"] is True and fields["hr_resize_x"] == 96 and fields["denoising_strength"] == 0.7
    text = ("a cat\nSteps: 4, Sampler: Euler, Seed: 1, Size: 64x64, Denoising strength: 0.5, Hires upscale: 1.5, "
            "Hires steps: 3, Hires upscaler: Latent (nearest), Hires prompt: a dog")
    pasted = dict(zip([n for n, _, _ in section.FIELDS], section.paste_values(text)))
    assert pasted == dict(zip(on, defaults), enable_hr=True, denoising_strength=0.5, hr_scale=1.5,
                          hr_second_pass_steps=3, hr_upscaler="Latent (nearest)", hr_prompt="a dog")
    assert section.paste_values("a cat\nSteps: 4, Seed: 1, Denoising strength: 0.5") == defaults
    assert request_preparation.paste_infotext(text).fields["enable_hr"] is True


def test_cli_flags_set_the_hires_fields_they_name_and_nothing_without_enable_hr():
    from modules import cli, cmd_args

    assert cli.hires_fields(cmd_args.parse_args(["--hr-scale", "1.5"])) == {}
    fields = cli.hires_fields(cmd_args.parse_args(["--enable-hr", "--hr-scale", "1.5", "--hr-upscaler", "Lanczos",
                                                   "--hr-checkpoint-name", "alt"]))
    assert fields == {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Lanczos", "hr_checkpoint_name": "alt"}


def _event(blocks, component, event: str = "click"):
    [fn] = [f for f in blocks.fns.values() if (component._id, event) in f.targets]
    return fn


def test_send_to_txt2img_and_the_paste_button_fill_the_hires_section(data_dir, fake_models):
    import gradio as gr

    from modules.ui import hires as section
    from modules.ui import img2img, png_info, txt2img

    with gr.Blocks() as blocks:
        with gr.Tabs() as tabs:
            with gr.Tab("txt2img", id="txt2img"):
                t2i = txt2img.create_tab()
            with gr.Tab("img2img", id="img2img"):
                i2i = img2img.create_tab()
            with gr.Tab("PNG Info", id="pnginfo"):
                png = png_info.create_tab()
        png_info.wire_send(png, t2i, i2i, tabs)
    text = ("a cat\nSteps: 4, Sampler: Euler, Seed: 1, Size: 64x64, Denoising strength: 0.45, Hires upscale: 2, "
            "Hires steps: 3, Hires upscaler: Lanczos, Hires sampler: DDIM, Hires prompt: a dog, "
            "Hires negative prompt: blurry")
    hires_ids = {component._id: name for (name, _, _), component in zip(section.FIELDS, t2i.paste_extra)}
    expected = dict(zip(hires_ids.values(), [default for _, _, default in section.FIELDS]), enable_hr=True,
                    denoising_strength=0.45, hr_scale=2.0, hr_second_pass_steps=3, hr_upscaler="Lanczos",
                    hr_sampler_name="DDIM", hr_prompt="a dog", hr_negative_prompt="blurry")
    for trigger, args in ((png.send_txt2img, (text, None)), (t2i.paste, (text,))):
        event = _event(blocks, trigger)
        out = dict(zip([o._id for o in event.outputs], event.fn(*args)))
        assert {hires_ids[i]: out[i] for i in hires_ids} == expected
        assert out[t2i.prompt._id] == "a cat" and out[t2i.steps._id] == 4
    # A text without Hires fields turns the section off again, its controls back to their defaults.
    event = _event(blocks, png.send_txt2img)
    out = dict(zip([o._id for o in event.outputs], event.fn("a cat\nSteps: 4, Seed: 1", None)))
    assert [out[i] for i in hires_ids] == [default for _, _, default in section.FIELDS]
