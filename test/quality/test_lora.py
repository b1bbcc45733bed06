"""The built-in Lora extension on the tiny model: every file format changes the image, weights come back exactly.

LoRA files are written at test time by ``tools/make_tiny_lora.py`` into the test's data folder (``models/Lora``).
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os

import numpy as np
import pytest
import torch

from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from modules import extensions, extra_networks, jobs, paths, plugins, processing, sd_models, shared
from modules.hookspecs import hookimpl
from lora_checks import generate, images_by_weight, weights_digest
from tools import make_tiny_lora

LORA_DIR = os.path.join(paths.script_path, "extensions-builtin", "Lora")
FORMATS = ("kohya", "peft", "loha", "lokr")


@pytest.fixture
def lora(data_dir, real_model, plugin_host, monkeypatch):
    """The Lora extension loaded on this test's host, one file per format (plus a foreign one) in models/Lora."""
    monkeypatch.setattr(shared.opts, "data_labels", dict(shared.opts.data_labels))
    lora_dir = data_dir / "models" / "Lora"
    for seed, kind in enumerate(FORMATS + ("foreign",), start=1):
        make_tiny_lora.write(real_model, str(lora_dir / f"{kind}.safetensors"), kind, seed=seed,
                             alias=f"{kind}-alias" if kind == "kohya" else None)
    ext = extensions.load_folder(LORA_DIR, host=plugin_host, group="builtin")
    assert ext.loaded and not ext.problems, ext.problems
    assert extensions.register_extension_options(plugin_host, only=ext.plugins) == []
    yield plugin_host.pm.get_plugin("Lora")
    extensions.unload([ext], plugin_host)


@pytest.mark.parametrize("kind", FORMATS)
def test_each_format_changes_the_image_by_its_weight_and_leaves_the_model_as_it_was(lora, real_model, kind):
    images = images_by_weight(real_model, "a red circle", kind)
    before, change = images["before"], np.abs(images["1"] - images["before"]).mean()
    assert change > 2, f"{kind} at weight 1 changed the image by {change}"
    assert np.abs(images["0"] - before).max() <= 1
    assert 0 < np.abs(images["0.5"] - before).mean() < change
    assert np.array_equal(images["after"], before)


def test_tags_leave_the_conditioning_and_stay_in_the_infotext(lora, real_model):
    # Inside prompt editing and alternation a tag is text the conditioning never reads; the LoRA applies to the
    # whole generation, as a tag outside would.
    edited, processed = generate("a [red:<lora:kohya-alias:1>:1] circle[|<lora:peft:1>]")
    outside, _ = generate("a [red::1] circle[|]<lora:kohya:1><lora:peft:1>")
    without, _ = generate("a [red::1] circle[|]")
    assert np.array_equal(edited, outside) and not np.array_equal(outside, without)
    text = processed.infotexts[0]
    assert text.startswith("a [red:<lora:kohya-alias:1>:1] circle[|<lora:peft:1>]\n")
    kohya, peft = lora.library.find("kohya"), lora.library.find("peft")
    assert f'Lora hashes: "kohya-alias: {kohya.shorthash()}, peft: {peft.shorthash()}"' in text
    assert len(kohya.shorthash()) == 12 and kohya.shorthash() != peft.shorthash()


def test_named_weights_te_and_unet(lora, real_model):
    both, _ = generate("a red circle <lora:kohya:1>")
    named, _ = generate("a red circle <lora:kohya:te=1:unet=1>")
    unet_only, _ = generate("a red circle <lora:kohya:0:1>")
    unet_named, _ = generate("a red circle <lora:kohya:unet=1:te=0>")
    assert np.array_equal(both, named)
    assert np.array_equal(unet_only, unet_named) and not np.array_equal(unet_only, both)


def test_kohya_names_of_the_original_unet_layout_are_the_same_layers_on_sd1(lora, data_dir, real_model):
    """Older SD1.x kohya files name UNet layers by the original layout (``lora_unet_input_blocks_1_1_…``, A1111 reads
    both): renamed by the loader's map, the file gives the same image."""
    from safetensors.torch import load_file, save_file

    from modules.extensions_api import original_unet_paths
    original = {("lora_unet_" + k).replace(".", "_"): ("lora_unet_" + v).replace(".", "_")
                for k, v in original_unet_paths(real_model.unet).items()}
    tensors = load_file(str(data_dir / "models" / "Lora" / "kohya.safetensors"))
    renamed = {original.get(key.partition(".")[0], key.partition(".")[0]) + "." + key.partition(".")[2]: value
               for key, value in tensors.items()}
    assert any(key.startswith("lora_unet_input_blocks_") for key in renamed)
    assert any(key.startswith("lora_te_text_model_encoder_layers_") for key in renamed)  # kohya's own te names
    save_file(renamed, str(data_dir / "models" / "Lora" / "kohya-ldm.safetensors"))
    diffusers_named, _ = generate("a red circle <lora:kohya:1>")
    ldm_named, processed = generate("a red circle <lora:kohya-ldm:1>")
    assert processed.warnings == [] and np.array_equal(ldm_named, diffusers_named)


def test_unknown_name_and_foreign_file_are_warnings_and_the_generation_runs(lora, data_dir, real_model):
    (data_dir / "models" / "Lora" / "broken.safetensors").write_bytes(b"\xff" * 64)  # skipped by the scan
    plain, _ = generate("a red circle")
    image, processed = generate("a red circle <lora:nobody:1> <lora:foreign:1> <lora:broken:1>")
    assert "Networks not found: nobody, broken" in processed.warnings
    assert any("foreign" in w and "no layer" in w for w in processed.warnings), processed.warnings
    assert np.array_equal(image, plain)


@pytest.mark.parametrize("tag, reason", [("<lora:kohya:1e308>", "te weight"), ("<lora:kohya:nan>", "te weight"),
                                         ("<lora:kohya:1:inf>", "unet weight"), ("<lora:kohya:1:1:0>", "dyn 0"),
                                         ("<lora::1>", "no LoRA name")])
def test_a_tag_with_an_unusable_weight_is_a_warning_and_changes_nothing(lora, real_model, tag, reason):
    digest = weights_digest(real_model)
    plain, _ = generate("a red circle")
    image, processed = generate(f"a red circle {tag}")
    assert any("ignored" in w and reason in w for w in processed.warnings), processed.warnings
    assert np.array_equal(image, plain) and weights_digest(real_model) == digest


def test_an_exception_or_interrupt_inside_sampling_restores_every_weight(lora, real_model, register):
    digest = weights_digest(real_model)

    class Raiser:
        @hookimpl
        def on_sampling_step(self, p, step):
            if "raise" in p.prompt:
                raise RuntimeError("boom at step")
            jobs.state.interrupt()

    register(Raiser(), "raiser")
    with pytest.raises(plugins.HookError):
        generate("raise <lora:kohya:1>")
    assert weights_digest(real_model) == digest
    processed = jobs.run_job("txt2img", processing.process_images, processing.StableDiffusionProcessingTxt2Img(
        prompt="stop <lora:loha:1>", steps=3, width=64, height=64, n_iter=2, do_not_save_samples=True))
    assert len(processed.images) == 1 and not jobs.state.interrupted
    assert weights_digest(real_model) == digest


def test_a_nested_generation_without_the_tag_sees_the_plain_model(lora, real_model, register):
    plain, _ = generate("a blue square")
    digest = weights_digest(real_model)
    inner = []

    class Nested:
        @hookimpl
        def on_sampling_step(self, p, step):
            if step == 0 and not inner and "<lora" in p.prompt:
                inner.append(generate("a blue square")[0])

    register(Nested(), "nested")
    tagged, _ = generate("a blue square <lora:lokr:1>")
    assert np.array_equal(inner[0], plain)
    assert weights_digest(real_model) == digest
    again, _ = generate("a blue square <lora:lokr:1>")
    assert np.array_equal(again, tagged)  # the outer LoRA was put back after the nested generation, exactly


def test_checkpoint_override_applies_the_lora_to_that_model_only(lora, real_model, monkeypatch, register):
    other = copy.deepcopy(real_model)
    models = {"alpha.safetensors": real_model, "beta.safetensors": other}
    monkeypatch.setattr(sd_models, "model_manager", sd_models.LoadedModels(lambda info: models[info.name]))
    stored, overridden = weights_digest(real_model), weights_digest(other)
    during = []

    class Watch:
        @hookimpl
        def on_sampling_step(self, step):
            if step == 0:
                during.append((weights_digest(real_model), weights_digest(other)))

    register(Watch(), "watch")
    generate("a red circle <lora:kohya:1>", override_settings={"sd_model_checkpoint": "beta"})
    assert during[0][0] == stored and during[0][1] != overridden
    assert (weights_digest(real_model), weights_digest(other)) == (stored, overridden)


def test_sd_lora_override_is_a_lora_for_one_request(lora, real_model, api_client):
    first = api_client.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", "steps": 2, "width": 64,
                                                        "height": 64, "seed": 11, "sampler_name": "Euler",
                                                        "override_settings": {"sd_lora": "peft"}})
    assert first.status_code == 200, first.text
    info = json.loads(first.json()["info"])
    assert info["infotexts"][0].startswith("a red circle<lora:peft:1.0>\n")
    assert "Lora hashes: \"peft: " in info["infotexts"][0]
    assert api_client.get("/sdapi/v1/options").json()["sd_lora"] == "None"
    bad = api_client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64,
                                                      "override_settings": {"sd_lora": "nobody"}})
    assert bad.status_code == 422 and "sd_lora" in bad.text


def test_disable_extra_networks_strips_the_tags_and_applies_no_lora(lora, real_model, api_client):
    body = {"prompt": "a red circle <lora:kohya:1>", "steps": 2, "width": 64, "height": 64, "seed": 11,
            "sampler_name": "Euler", "override_settings": {"sd_lora": "peft"}}
    applied = api_client.post("/sdapi/v1/txt2img", json=body).json()
    disabled = api_client.post("/sdapi/v1/txt2img", json=dict(body, disable_extra_networks=True)).json()
    plain = api_client.post("/sdapi/v1/txt2img", json=dict(body, prompt="a red circle", override_settings={},
                                                            disable_extra_networks=True)).json()
    def pixels(response):
        return Image.open(io.BytesIO(base64.b64decode(response["images"][0]))).convert("RGB").tobytes()

    assert pixels(disabled) == pixels(plain) != pixels(applied)
    text = json.loads(disabled["info"])["infotexts"][0]
    assert text.startswith("a red circle <lora:kohya:1>\n") and "Lora hashes" not in text


def test_api_lists_and_refreshes_loras(lora, data_dir, real_model, api_client):
    listed = api_client.get("/sdapi/v1/loras").json()
    by_name = {item["name"]: item for item in listed}
    assert set(by_name) == set(FORMATS) | {"foreign"}
    kohya, peft = by_name["kohya"], by_name["peft"]
    assert kohya["alias"] == "kohya-alias" and kohya["metadata"]["ss_output_name"] == "kohya-alias"
    assert peft["alias"] == "peft" and peft["path"].endswith(os.path.join("Lora", "peft.safetensors"))
    sub = data_dir / "models" / "Lora" / "sub"
    make_tiny_lora.write(real_model, str(sub / "later.safetensors"), "kohya")
    (data_dir / "models" / "Lora" / "pickled.pt").write_bytes(b"not read")
    assert "later" not in {i["name"] for i in api_client.get("/sdapi/v1/loras").json()}
    assert api_client.post("/sdapi/v1/refresh-loras").status_code == 200
    names = {i["name"] for i in api_client.get("/sdapi/v1/loras").json()}
    assert "later" in names and "pickled" not in names  # pickled files need --allow-pickle-checkpoints


_text = st.text(st.characters(blacklist_characters="<>"), max_size=20)
_arg = st.text(st.characters(blacklist_characters="<>:", blacklist_categories=("Cs",)), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(_text, st.from_regex(r"\A\w{1,8}\Z", fullmatch=True), st.lists(_arg, min_size=1, max_size=3)),
                max_size=4), _text)
def test_parse_prompt_takes_out_exactly_the_tags(pieces, tail):
    prompt = "".join(f"{text}<{kind}:{':'.join(args)}>" for text, kind, args in pieces) + tail
    text, found = extra_networks.parse_prompt(prompt)
    assert text == "".join(t for t, _, _ in pieces) + tail
    expected: dict = {}
    for _, kind, args in pieces:
        expected.setdefault(kind, []).append(args)
    assert {k: [p.items for p in v] for k, v in found.items()} == expected
    assert extra_networks.strip_prompt(prompt) == text


def test_deltas_are_cached_across_generations_and_never_left_in_the_weights(lora, real_model, monkeypatch):
    reads = []
    read_tensors = lora.files.NetworkOnDisk.read_tensors
    monkeypatch.setattr(lora.files.NetworkOnDisk, "read_tensors", lambda self: reads.append(self.name) or
                        read_tensors(self))
    digest = weights_digest(real_model)
    first, _ = generate("a red circle <lora:kohya:1>")
    generate("a red circle")  # a generation without the tag keeps the cache
    second, _ = generate("a red circle <lora:kohya:1>")
    assert reads == ["kohya"] and np.array_equal(first, second)
    assert lora.patch.state_for(real_model).deltas and weights_digest(real_model) == digest
    generate("a red circle <lora:peft:1>")  # another network: the cache keeps the last generation's only (limit 0)
    assert reads == ["kohya", "peft"] and len(lora.patch.state_for(real_model).deltas) == 1


def test_pickled_files_only_with_allow_pickle_checkpoints(lora, data_dir, real_model, monkeypatch):
    from safetensors.torch import load_file
    lora_dir = data_dir / "models" / "Lora"
    torch.save(load_file(str(lora_dir / "kohya.safetensors")), str(lora_dir / "pickled.pt"))
    _, refused = generate("a red circle <lora:pickled:1>")
    assert "Networks not found: pickled" in refused.warnings
    monkeypatch.setattr(shared.cmd_opts, "allow_pickle_checkpoints", True)
    image, processed = generate("a red circle <lora:pickled:1>")
    safe, _ = generate("a red circle <lora:kohya:1>")
    assert processed.warnings == [] and np.array_equal(image, safe)
