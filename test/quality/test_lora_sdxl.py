"""The built-in Lora extension on the tiny SDXL model: kohya's SDXL names (``lora_te1_``, ``lora_te2_``, the UNet's
original layout) and PEFT's, an SD1.x file on SDXL, and LoRA tags in Hires fix's ``hr_prompt``.

The SDXL checkpoint is written by ``tools/make_tiny_sdxl.py``, the LoRA files by ``tools/make_tiny_lora.py``
(64x64 images, 2 steps).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from modules import extensions, paths, shared
from modules.checkpoint_info import CheckpointInfo
from modules.hookspecs import hookimpl
import lora_checks
from lora_checks import weights_digest
from tools import make_tiny_lora, make_tiny_sdxl

LORA_DIR = os.path.join(paths.script_path, "extensions-builtin", "Lora")


@pytest.fixture(scope="module")
def xl_files(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("xl-lora")
    make_tiny_sdxl.main(["--out-dir", str(out)])
    folder = out / "models" / "Stable-diffusion"
    return {"base": str(folder / make_tiny_sdxl.BASE_FILE), "refiner": str(folder / make_tiny_sdxl.REFINER_FILE)}


@pytest.fixture(scope="module")
def xl_base(xl_files):
    from modules import sd_models_xl
    path = xl_files["base"]
    return sd_models_xl.load_checkpoint(CheckpointInfo(path, os.path.basename(path), "0" * 64))


def load_extension(plugin_host, monkeypatch, lora_dir, xl_base, tiny_model):
    """The Lora extension on this test's host, and in ``lora_dir``: kohya and PEFT files for the tiny SDXL base
    (``xl``, ``xl-peft``) and a kohya file for the tiny SD1.x model (``sd1``)."""
    monkeypatch.setattr(shared.opts, "data_labels", dict(shared.opts.data_labels))
    make_tiny_lora.write(xl_base, str(lora_dir / "xl.safetensors"), "kohya", seed=1, std=0.1)
    make_tiny_lora.write(xl_base, str(lora_dir / "xl-peft.safetensors"), "peft", seed=2, std=0.15)
    make_tiny_lora.write(tiny_model, str(lora_dir / "sd1.safetensors"), "kohya", seed=3)
    ext = extensions.load_folder(LORA_DIR, host=plugin_host, group="builtin")
    assert ext.loaded and not ext.problems, ext.problems
    assert extensions.register_extension_options(plugin_host, only=ext.plugins) == []
    return ext


@pytest.fixture
def lora(data_dir, serve_model, xl_base, tiny_model, plugin_host, monkeypatch):
    """The Lora extension with its files (``load_extension``), every generation on the tiny SDXL base."""
    serve_model(xl_base)
    ext = load_extension(plugin_host, monkeypatch, data_dir / "models" / "Lora", xl_base, tiny_model)
    yield plugin_host.pm.get_plugin("Lora")
    extensions.unload([ext], plugin_host)


def generate(prompt: str, **kw):
    return lora_checks.generate(prompt, cfg_scale=5, **kw)


def test_kohya_sdxl_names_are_the_original_layout_and_every_one_finds_its_layer(lora, xl_base):
    from safetensors import safe_open
    with safe_open(lora.library.find("xl").path, "pt") as f:
        layers = {key.partition(".")[0] for key in f.keys()}
    for part in ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                 "lora_te2_text_model_encoder_layers_0_self_attn_v_proj",
                 "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                 "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k",
                 "lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_out_0",
                 "lora_unet_input_blocks_1_0_in_layers_2", "lora_unet_input_blocks_4_0_skip_connection",
                 "lora_unet_output_blocks_2_0_out_layers_3", "lora_unet_middle_block_0_emb_layers_1",
                 "lora_unet_input_blocks_3_0_op", "lora_unet_output_blocks_2_2_conv"):
        assert part in layers
    names = lora.patch.layers_module.layer_names(xl_base)
    assert layers <= set(names)
    # the original name and the diffusers one are the same layer
    assert names["lora_unet_input_blocks_4_1_proj_in"] == names["lora_unet_down_blocks_1_attentions_0_proj_in"] \
        == ("unet", "down_blocks.1.attentions.0.proj_in")
    assert names["lora_te2_text_model_encoder_layers_1_mlp_fc1"] == ("te2", "text_model.encoder.layers.1.mlp.fc1")
    assert names["text_encoder_2.text_model.encoder.layers.1.mlp.fc1"] == ("te2", "text_model.encoder.layers.1.mlp.fc1")
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" not in names  # SD1.x's text encoder name


@pytest.mark.parametrize("name", ["xl", "xl-peft"])
def test_an_sdxl_lora_changes_the_image_by_its_weight_and_leaves_the_model_as_it_was(lora, xl_base, name):
    # "1:0": the text encoders' layers only
    images = lora_checks.images_by_weight(xl_base, "a red circle", name, ("1", "0", "0.5", "1:0"), cfg_scale=5)
    before, change = images["before"], np.abs(images["1"] - images["before"]).mean()
    assert change > 2, f"{name} at weight 1 changed the image by {change}"
    assert np.array_equal(images["0"], before)
    assert 0 < np.abs(images["0.5"] - before).mean() < change, (np.abs(images["0.5"] - before).mean(), change)
    assert np.abs(images["1:0"] - before).mean() > 0  # both text encoders' layers act
    assert np.array_equal(images["after"], before)


def test_an_sd1_lora_on_sdxl_is_a_warning_and_the_image_is_the_plain_one(lora, xl_base):
    before, _ = generate("a red circle")
    image, processed = generate("a red circle <lora:sd1:1>")
    assert any("sd1" in warning for warning in processed.warnings), processed.warnings
    assert np.array_equal(image, before)


class FirstPass:
    """The latents after every step of the first (64x64) pass."""

    def __init__(self):
        self.latents = []

    @hookimpl
    def on_sampling_step(self, request, latents):
        if request.width == 64:
            self.latents.append(latents.clone())


HIRES = {"enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.6, "hr_upscaler": "Latent"}


def test_a_lora_in_hr_prompt_acts_on_the_second_pass_only(lora, xl_base, register):
    recorder = register(FirstPass(), "first-pass")
    digest = weights_digest(xl_base)
    plain, _ = generate("a red circle", hr_prompt="a red circle", **HIRES)
    plain_first = recorder.latents[:]
    recorder.latents.clear()
    tagged, processed = generate("a red circle", hr_prompt="a red circle <lora:xl:1>", **HIRES)
    assert processed.warnings == []
    assert all(torch.equal(a, b) for a, b in zip(plain_first, recorder.latents, strict=True))
    assert np.abs(tagged - plain).mean() > 1
    assert weights_digest(xl_base) == digest
    info = processed.infotexts[0]
    assert 'Hires prompt: "a red circle <lora:xl:1>"' in info and "Lora hashes:" in info
    # weight 0: the tag is out of the hr conditioning text and nothing acts
    zero, _ = generate("a red circle", hr_prompt="a red circle <lora:xl:0>", **HIRES)
    assert np.array_equal(zero, plain)
    # the first pass's LoRA is not the second pass's when hr_prompt has none (A1111)
    both, _ = generate("a red circle <lora:xl:1>", **HIRES)
    with_first, _ = generate("a red circle <lora:xl:1>", hr_prompt="a red circle", **HIRES)
    assert not np.array_equal(both, with_first)
    assert weights_digest(xl_base) == digest


def test_on_the_refiner_a_base_lora_is_one_warning_and_both_models_come_back(disk_models, xl_files, xl_base,
                                                                             tiny_model, plugin_host, monkeypatch):
    from modules import sd_models
    disk_models({"xl-base.safetensors": xl_files["base"], "xl-refiner.safetensors": xl_files["refiner"]})
    ext = load_extension(plugin_host, monkeypatch, Path(shared.data_paths.model_dirs("Lora")[0]), xl_base, tiny_model)
    refined = {"override_settings": {"sd_model_checkpoint": "xl-base", "sd_checkpoints_limit": 2}, "steps": 4,
               "refiner_checkpoint": "xl-refiner", "refiner_switch_at": 0.5}
    try:
        plain, _ = generate("a red circle", **refined)
        models = [sd_models.model_manager.get(sd_models.resolve_checkpoint(name)) for name in ("xl-base", "xl-refiner")]
        digests = [weights_digest(model) for model in models]
        image, processed = generate("a red circle <lora:xl:1>", **refined)
        assert [w for w in processed.warnings if "xl" in w] == processed.warnings and len(processed.warnings) == 1
        assert "xl-refiner" in processed.warnings[0]
        assert "Refiner: xl-refiner" in processed.infotexts[0] and not np.array_equal(image, plain)
        assert [weights_digest(model) for model in models] == digests
        assert np.array_equal(generate("a red circle", **refined)[0], plain)
    finally:
        extensions.unload([ext], plugin_host)
