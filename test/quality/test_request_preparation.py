"""The preparation layer the three front doors share (``modules.request_preparation``, ``image_parameters``,
``settings_change``, ``sd_models.checkpoint_defaults``): each test drives the API, the UI and the CLI through the
same input and checks that they agree.

No model runs: the UI and CLI cases stop before the queue, the API cases use the stand-in model cache.
"""

from __future__ import annotations

import html
import io
import json
import threading
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from modules import cli, dispatch, image_parameters, images, jobs, request_preparation, sd_models, shared
from modules.options import OptionsRejected, SettingsFrozenError
from modules.runtime_utils import OverrideError
from ui_form import form_values

BAD_OVERRIDES = {"CLIP_stop_at_last_layers": 99, "sd_vae": "missing.safetensors"}
BAD_ENTRIES = ["Clip skip: 99", "VAE: missing.safetensors"]


def cli_options(**changes) -> types.SimpleNamespace:
    options = dict(txt2img="a cat", negative_prompt="", steps=2, seed=1, sampler="Euler", schedule_type="Automatic",
                   cfg_scale=None, width=64, height=64, batch_size=1, n_iter=1, override=[], out=None, styles=[],
                   tiling=False, enable_hr=False)
    options.update(changes)
    return types.SimpleNamespace(**options)


@pytest.fixture
def queued(monkeypatch):
    """The processing object of every job that reaches the queue (``dispatch.run``), recorded instead of run."""
    objects = []

    def run(name, p, **kwargs):
        objects.append(p)
        return types.SimpleNamespace(warnings=[], saved_paths=[])

    monkeypatch.setattr(dispatch, "run", run)
    return objects


@pytest.fixture
def painted(monkeypatch):
    """API generations run without a model: ``sample_batch`` paints the images."""
    from modules import processing

    def sample_batch(p, model, prompts, negative_prompts, seeds, subseeds):
        return [Image.new("RGB", (p.width, p.height)) for _ in seeds]

    monkeypatch.setattr(processing.StableDiffusionProcessing, "sample_batch", sample_batch)


# -- request -> processing object, checked before queueing -------------------------------------------------------


def test_ui_refuses_a_bad_override_before_queueing_with_the_apis_message(data_dir, fake_models, api_client, queued,
                                                                          capsys):
    from modules.ui import generation, txt2img

    r = api_client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "width": 64, "height": 64, "steps": 2,
                                                   "override_settings": BAD_OVERRIDES})
    assert r.status_code == 422 and r.json()["error"] == "OverrideError"
    message = r.json()["detail"]
    assert set(r.json()["errors"]) == set(BAD_OVERRIDES)  # every bad key, in one error
    events = list(generation.run_generation(txt2img.make_p, ("session", "txt2img"), "txt2img", [],
                                            form_values(override_settings=BAD_ENTRIES)))
    assert len(events) == 1 and html.escape(f"Error: {message}") in events[0][3]
    # The CLI says the same, and exits with a usage error.
    assert cli.run_txt2img(cli_options(override=["CLIP_stop_at_last_layers=99", "sd_vae=missing.safetensors"])) == 2
    assert capsys.readouterr().err.strip() == f"serena: error: {message}"
    assert queued == [] and not jobs.state.busy and shared.opts.stored() == {}


def test_front_doors_refuse_an_unknown_sampler_before_queueing_with_one_message(data_dir, fake_models, api_client,
                                                                                 queued, capsys):
    from modules.ui import generation, txt2img

    r = api_client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "sampler_name": "No Such", "steps": 2})
    assert r.status_code == 422 and set(r.json()["errors"]) == {"sampler_name"}
    message = r.json()["detail"]
    [event] = generation.run_generation(txt2img.make_p, ("session", "txt2img"), "txt2img", [],
                                        form_values(sampler="No Such"))
    assert html.escape(f"Error: {message}") in event[3]
    assert cli.run_txt2img(cli_options(sampler="No Such")) == 2
    assert capsys.readouterr().err.strip() == f"serena: error: {message}"
    assert queued == []


def test_build_processing_reports_the_front_doors_own_errors_with_the_sampler(data_dir):
    from modules import processing

    with pytest.raises(request_preparation.RequestFieldError) as e:
        request_preparation.build_processing(processing.StableDiffusionProcessingTxt2Img,
                                             {"sampler_name": "No Such", "scheduler": "Nope"},
                                             errors={"steps": "too many"})
    assert set(e.value.errors) == {"sampler_name", "scheduler", "steps"}
    with pytest.raises(request_preparation.RequestFieldError, match="multiple of 8") as e:
        request_preparation.build_processing(processing.StableDiffusionProcessingTxt2Img, {"width": 65})
    assert set(e.value.errors) == {"width"}
    p = request_preparation.build_processing(processing.StableDiffusionProcessingTxt2Img,
                                             {"sampler_name": "DPM++ 2M Karras"})
    assert (p.sampler_name, p.scheduler) == ("DPM++ 2M", "Karras")  # A1111's old combined name
    with pytest.raises(OverrideError):
        request_preparation.check_overrides({"CLIP_stop_at_last_layers": 99})


# -- infotext -> fields, overrides and what does not apply ---------------------------------------------------------

PASTED = ("a dog\nNegative prompt: ugly\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 42, Size: 64x64, "
          "Batch size: 2, Variation seed: 5, Variation seed strength: 0.25, Clip skip: 2")


def test_api_and_ui_paste_the_same_fields_and_overrides(data_dir, fake_models, painted, api_client):
    from modules.ui import paste

    body = api_client.post("/sdapi/v1/txt2img", json={"infotext": PASTED}).json()
    params = body["parameters"]
    assert (params["batch_size"], params["subseed"], params["subseed_strength"]) == (2, 5, 0.25)
    assert params["override_settings"] == {"CLIP_stop_at_last_layers": 2}
    pasted = paste.from_infotext(PASTED)
    assert pasted.fields["batch_size"] == 2 and pasted.overrides == ["Clip skip: 2"]
    # The form has no variation seed fields; every field it has comes from the one list, and the Hires fix and
    # Refiner sections paste the rest.
    from modules.ui import hires, refiner

    sections = {"hr_": {name for name, _, _ in hires.FIELDS}, "refiner_": {name for name, _, _ in refiner.FIELDS}}
    not_in_form = ("subseed", "subseed_strength")
    assert [f for _, f, _ in paste.FORM_FIELDS] == [f for _, f in request_preparation.PASTE_FIELDS
                                                    if f not in not_in_form and not f.startswith(tuple(sections))]
    for prefix, section in sections.items():
        assert {f for _, f in request_preparation.PASTE_FIELDS if f.startswith(prefix)} <= section


def test_paste_never_switches_the_checkpoint(data_dir, fake_models, painted, api_client):
    from modules.ui import paste

    beta = sd_models.resolve_checkpoint("beta")
    text = f"a dog\nSteps: 3, Seed: 1, Size: 64x64, Model hash: {beta.shorthash}"
    prepared = request_preparation.paste_infotext(text)
    assert "sd_model_checkpoint" not in {**prepared.overrides, **prepared.rejected, **prepared.unreadable}
    assert paste.from_infotext(text).overrides == []
    body = api_client.post("/sdapi/v1/txt2img", json={"infotext": text}).json()
    assert body["parameters"]["override_settings"] == {} and json.loads(body["info"])["sd_model_name"] == "alpha"


def test_paste_sorts_what_does_not_apply(data_dir):
    prepared = request_preparation.paste_infotext("x\nSteps: 3, Seed: 1, Clip skip: 99, ENSD: lots, "
                                                  "VAE: missing.safetensors, RNG: CPU")
    assert set(prepared.rejected) == {"CLIP_stop_at_last_layers", "sd_vae"}
    assert set(prepared.unreadable) == {"eta_noise_seed_delta"}
    assert prepared.overrides == {}  # RNG CPU is the current value: no change


# -- image parameters -> text -------------------------------------------------------------------------------------

def encoded(fmt: str, text: str) -> Image.Image:
    buffer = io.BytesIO()
    images.encode_image(Image.new("RGB", (8, 8)), fmt, text, buffer)
    return Image.open(io.BytesIO(buffer.getvalue()))


def exif_jpeg(comment: bytes, byte_order: str) -> Image.Image:
    """A JPEG whose Exif IFD holds ``comment`` as UserComment, its TIFF header in ``byte_order`` ("<" or ">")."""
    exif = Image.Exif()
    exif.endian = byte_order
    exif.get_ifd(image_parameters.EXIF_IFD)[image_parameters.EXIF_USER_COMMENT] = comment
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG", exif=exif.tobytes())
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_parameters_are_read_from_png_text_and_exif(fmt):
    text = "a caf\u00e9 \u2615 \u6771\u4eac\nSteps: 3, Sampler: Euler, Seed: 7"  # any script survives the round trip
    image = encoded(fmt, text)
    assert image_parameters.read_parameters(image)[0] == text
    if fmt != "png":  # where A1111 writes and reads it: the Exif IFD's UserComment, UNICODE = UTF-16 BE
        comment = image.getexif().get_ifd(image_parameters.EXIF_IFD)[image_parameters.EXIF_USER_COMMENT]
        assert comment == image_parameters.UNICODE_CODE + text.encode("utf-16-be")


@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_unicode_user_comment_is_utf16_big_endian_as_piexif_reads_it(byte_order):
    text = "a cat, \u00e9t\u00e9\nSteps: 3, Seed: 7"
    image = exif_jpeg(b"UNICODE\0" + text.encode("utf-16-be"), byte_order)
    assert image_parameters.read_parameters(image)[0] == text


def test_user_comment_character_codes():
    read = image_parameters.user_comment_text
    assert read(b"UNICODE\0" + "hi\u00e9".encode("utf-16-be")) == "hi\u00e9"
    assert read(b"UNICODE\0" + b"\xff\xfe" + "hi".encode("utf-16-le")) == "hi"  # a writer's BOM is honoured
    assert read(b"ASCII\0\0\0Steps: 3") == "Steps: 3"
    assert read(b"\0" * 8 + b"Steps: 3") == "Steps: 3"
    assert read(b"JIS\0\0\0\0\0" + "\u732b".encode("shift_jis")) == "\u732b"
    assert read(b"Steps: 3") == "Steps: 3" and read("already text") == "already text"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"UNICODE\0", b"ASCII\0\0\0", b"JIS\0\0\0\0\0", b"\0" * 8, b""]), st.binary(max_size=64))
def test_any_user_comment_reads_as_text(prefix, body):
    assert isinstance(image_parameters.user_comment_text(prefix + body), str)


def test_api_and_ui_read_the_same_parameters(data_dir, api_client, tmp_path):
    import base64

    from modules.ui import png_info

    text = "a cat, \u00e9t\u00e9\nSteps: 3, Seed: 7"
    image = exif_jpeg(b"UNICODE\0" + text.encode("utf-16-be"), "<")
    path = tmp_path / "x.jpg"
    image.save(path, exif=image.info["exif"])
    data = base64.b64encode(path.read_bytes()).decode()
    assert api_client.post("/sdapi/v1/png-info", json={"image": data}).json()["info"] == text
    assert png_info.describe(str(path))[0] == text


def test_broken_exif_means_no_parameters():
    image = Image.new("RGB", (8, 8))
    image.getexif = lambda: (_ for _ in ()).throw(SyntaxError("not a TIFF file"))
    assert image_parameters.read_parameters(image) == ("", {})


# -- a checkpoint's defaults -------------------------------------------------------------------------------------

def test_checkpoint_defaults_come_from_the_cached_inspection(data_dir, fake_models, monkeypatch):
    from modules.model_facts import ModelFacts

    # The stand-in cache inspects nothing: A1111's defaults.
    assert sd_models.checkpoint_defaults() == sd_models.CheckpointDefaults(size=512, cfg_scale=7.0)
    declared = {"beta": ModelFacts(text_encoder_layers=2, latent_channels=4, native_size=64, cfg_scale=4.0)}
    monkeypatch.setattr(fake_models, "facts", lambda info: declared.get(info.model_name))
    assert sd_models.checkpoint_defaults({"sd_model_checkpoint": "beta"}) == sd_models.CheckpointDefaults(64, 4.0)
    assert sd_models.checkpoint_defaults() == sd_models.CheckpointDefaults()  # alpha, the default, declares none
    shared.opts.set("sd_model_checkpoint", "beta")
    assert sd_models.checkpoint_defaults().size == 64
    # An unknown checkpoint is the generation's to refuse: the defaults never raise.
    assert sd_models.checkpoint_defaults({"sd_model_checkpoint": "nope"}) == sd_models.CheckpointDefaults()


def test_cli_and_ui_start_from_the_checkpoint_defaults(data_dir, fake_models, monkeypatch, queued):
    from modules.model_facts import ModelFacts
    from modules.ui import generation

    declared = ModelFacts(text_encoder_layers=2, latent_channels=4, native_size=64, cfg_scale=4.0)
    monkeypatch.setattr(fake_models, "facts", lambda info: declared)
    assert cli.run_txt2img(cli_options(width=None, height=None)) == 0
    [p] = queued
    assert (p.width, p.height, p.cfg_scale) == (64, 64, 4.0)
    kwargs = generation.common_p_kwargs(form_values(width=None, height=None, cfg_scale=None))
    assert (kwargs["width"], kwargs["height"], kwargs["cfg_scale"]) == (64, 64, 4.0)


def test_cli_styles_and_tiling_flags_reach_the_generation_and_an_unknown_style_is_a_usage_error(
        data_dir, fake_models, queued, capsys):
    (data_dir / "styles.csv").write_text("name,prompt\nfilm,film still of {prompt}\n")
    assert cli.run_txt2img(cli_options(styles=["film"], tiling=True)) == 0
    [p] = queued
    assert (p.styles, p.tiling) == (["film"], True)
    assert cli.run_txt2img(cli_options()) == 0 and queued[1].tiling is None  # no flag: the "tiling" setting decides
    assert cli.run_txt2img(cli_options(styles=["film", "nope"])) == 2 and len(queued) == 2
    assert "'nope'" in capsys.readouterr().err


# -- settings change ---------------------------------------------------------------------------------------------

def test_settings_change_validates_all_then_saves_under_the_queue_lock(data_dir, monkeypatch):
    from modules import settings_change

    with pytest.raises(OptionsRejected) as e:
        settings_change.change_settings({"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": -1})
    assert set(e.value.errors) == {"eta_noise_seed_delta"} and shared.opts.stored() == {}
    # A bad change is refused without waiting for the queue (a running generation holds it).
    done = threading.Event()
    with jobs.queue_lock:
        def refused():
            with pytest.raises(OptionsRejected):
                settings_change.change_settings({"eta_noise_seed_delta": -1})
            done.set()
        threading.Thread(target=refused, daemon=True).start()
        assert done.wait(10)
        # A good one waits for the running generation to end.
        stored = threading.Thread(target=settings_change.change_settings, args=({"CLIP_stop_at_last_layers": 2},),
                                  daemon=True)
        stored.start()
        stored.join(0.3)
        assert stored.is_alive() and shared.opts.stored() == {}
    stored.join(10)
    assert json.loads((data_dir / "config.json").read_text()) == {"CLIP_stop_at_last_layers": 2}
    monkeypatch.setattr(shared.opts, "frozen", True)
    with pytest.raises(SettingsFrozenError):
        settings_change.change_settings({})
