"""SD2.x (issue 17 item 3): original single files load offline (OpenCLIP text encoder converted exactly), the
prediction type comes from a .yaml beside the file, its metadata or A1111's test forward, conditioning is the
penultimate layer, and an SD2 generation runs through the API as a checkpoint override, after which the stored
SD1 model serves the next request. Real files from ``tools/make_tiny_sd2.py`` (random weights, 64x64, 2 steps).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from modules import checkpoint_loaders, jobs, model_families, paths, sd_models, sd_pipeline, shared
from modules import sd_models_sd2 as sd2, sd_models_writer as writer
from modules.checkpoint_info import CheckpointInfo, config_beside
from tools import make_tiny_sd2 as tiny

import front_doors
import tiny_pickles

SHIPPED = os.path.join(paths.script_path, "models")
TINY_SD1 = os.path.join(SHIPPED, "Stable-diffusion", "serena-tiny-v1.safetensors")
TXT = {"prompt": "a red (circle:1.2)", "negative_prompt": "", "steps": 2, "seed": 5, "cfg_scale": 5,
       "width": 64, "height": 64}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("sd2")
    return out / "models" / "Stable-diffusion", tiny.write_all(str(out))


@pytest.fixture(scope="module")
def folder(written):
    return written[0]


@pytest.fixture(scope="module")
def built(written):
    """The tiny models the files were written from, by prediction type."""
    return written[1]


def load(path) -> sd2.SD2Model:
    return sd2.load_checkpoint(CheckpointInfo(str(path), os.path.basename(path), "0" * 64))


@pytest.fixture(scope="module")
def v_model(folder):
    return load(folder / tiny.V_FILE)


def test_sd2_files_are_detected_and_runnable(folder):
    for name in (tiny.EPS_FILE, tiny.V_FILE):
        family = model_families.detect_path(str(folder / name))
        assert (family.name, family.context_dim, family.runnable) == ("sd2", 32, True)
    assert checkpoint_loaders.loader_for(str(folder / tiny.V_FILE)) is sd2
    assert checkpoint_loaders.loader_for(TINY_SD1) is not sd2


def test_open_clip_text_encoder_round_trips_bitwise(folder, built, v_model):
    from safetensors.torch import load_file
    on_disk = {k[len(sd2.TEXT_PREFIX):]: v for k, v in load_file(str(folder / tiny.V_FILE)).items()
               if k.startswith(sd2.TEXT_PREFIX)}
    source = built["v"]["text_encoder"]
    # the file holds the built encoder in open_clip's layout (in_proj fused) ...
    written = writer.open_clip_state_dict(source)
    assert set(written) == set(on_disk) and all(torch.equal(written[k].half(), on_disk[k]) for k in on_disk)
    # ... and loading splits it back into exactly the built tensors, every layer (the unused projection left out)
    loaded = v_model.text_encoder.state_dict()
    expected = {k.removeprefix("text_model."): v for k, v in source.state_dict().items()
                if k != "text_projection.weight"}
    assert set(loaded) == set(expected) and v_model.text_encoder.config.num_hidden_layers == 3
    for key, value in expected.items():
        assert torch.equal(loaded[key], value.half().float()), key


def test_a_dropped_text_tensor_is_refused_naming_the_file(folder, tmp_path):
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(folder / tiny.EPS_FILE))
    del tensors[sd2.TEXT_PREFIX + "transformer.resblocks.1.mlp.c_fc.weight"]
    path = tmp_path / "broken.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match="broken.safetensors"):
        load(path)


@pytest.mark.parametrize("name, beside, expected", [
    (tiny.V_FILE, None, "v"),                                   # the .yaml beside it
    (tiny.V_META_FILE, None, "v"),                              # modelspec.prediction_type
    (tiny.EPS_FILE, tiny.V_YAML, "v"),                          # a .yaml outranks the test forward
    (tiny.V_META_FILE, "model:\n  params: {}\n", "epsilon"),    # ... and the metadata; no parameterization: eps
])
def test_a_declared_prediction_type_comes_from_yaml_then_metadata(folder, tmp_path, name, beside, expected):
    path = tmp_path / name
    shutil.copy(folder / name, path)
    if beside is not None:
        path.with_suffix(".yaml").write_text(beside)
    elif (folder / name).with_suffix(".yaml").exists():
        shutil.copy((folder / name).with_suffix(".yaml"), path.with_suffix(".yaml"))
    # the loading steps on the meta device: a declared type needs no weight
    (_, _, _, scheduler), _, family = sd2._file_components(str(path), torch.device("meta"), torch.float32, False)
    assert family.prediction == expected
    assert family.native_size == (768 if expected == "v" else 512)
    assert scheduler["prediction_type"] == {"v": "v_prediction", "epsilon": "epsilon"}[expected]
    assert sd2.inspect_checkpoint(str(path)).native_size == 64  # the file's own UNet config


def test_an_undeclared_prediction_type_is_the_test_forwards(folder):
    assert sd2.inspect_checkpoint(str(folder / tiny.EPS_FILE)).native_size is None  # no weight read: undecided
    model = load(folder / tiny.EPS_FILE)
    assert (model.family.prediction, model.family.native_size) == ("epsilon", 512)
    assert model.scheduler_config["prediction_type"] == "epsilon"


def test_the_test_forward_is_a1111s_threshold(built, v_model):
    assert sd2.v_test(v_model.unet) < -1 < sd2.v_test(built["epsilon"]["unet"])


def test_shipped_configs_are_sd2s():
    v, eps = sd2.default_configs("v"), sd2.default_configs("epsilon")
    assert v["unet"]["attention_head_dim"] == [5, 10, 20, 20] and v["unet"]["use_linear_projection"] is True
    assert v["unet"]["cross_attention_dim"] == 1024 == v["text_encoder"]["hidden_size"]
    assert (v["unet"]["sample_size"] * 8, eps["unet"]["sample_size"] * 8) == (768, 512)
    assert (v["scheduler"]["prediction_type"], eps["scheduler"]["prediction_type"]) == ("v_prediction", "epsilon")
    assert v["text_encoder"]["num_hidden_layers"] == 24 and v["text_encoder"]["hidden_act"] == "gelu"


def test_conditioning_is_the_penultimate_layer_padded_with_bang(v_model):
    encoder = sd_pipeline.PromptEncoder(v_model.tokenizer, v_model.text_encoder, v_model.conditioning_layer,
                                        "cpu", torch.float32)
    ids = v_model.tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids[0, -1].item() == 0  # padded with "!", as open_clip pads
    with torch.no_grad():
        out = v_model.text_encoder(ids, output_hidden_states=True)
        penultimate = v_model.text_encoder.final_layer_norm(out.hidden_states[-2])[0]
    assert torch.allclose(encoder.encode("a cat"), penultimate, atol=1e-6)
    assert not torch.allclose(penultimate, out.last_hidden_state[0], atol=1e-3)


@pytest.fixture
def models(disk_models, folder):
    return disk_models({"a-sd1.safetensors": TINY_SD1, "sd2-v.safetensors": folder / tiny.V_FILE,
                        "sd2-v.yaml": folder / "serena-tiny-sd2-v.yaml"})


def pixels(png_b64: str) -> bytes:
    """An image's pixels (the PNG's own bytes also hold its infotext)."""
    return Image.open(io.BytesIO(base64.b64decode(png_b64))).tobytes()


def test_an_sd2_override_generates_deterministically_then_sd1_serves_the_next_request(models, api_client):
    def txt2img(**fields):
        response = api_client.post("/sdapi/v1/txt2img", json={**TXT, **fields})
        assert response.status_code == 200, response.text
        return response.json()

    override = {"override_settings": {"sd_model_checkpoint": "sd2-v"}}
    first, again = txt2img(**override), txt2img(**override)
    assert first["images"] == again["images"]
    # A1111 applies no clip skip to SD2.x: the penultimate layer conditions whatever it says
    skipped = txt2img(override_settings={"sd_model_checkpoint": "sd2-v", "CLIP_stop_at_last_layers": 3})
    assert pixels(skipped["images"][0]) == pixels(first["images"][0]) and "Clip skip: 3" in skipped["info"]
    assert "Model: sd2-v" in first["info"]
    assert "Model: a-sd1" in txt2img()["info"]
    assert models.disk_loads.count("sd2-v.safetensors") == 1
    assert not jobs.queue_lock.locked() and not jobs.state.busy


def test_the_cli_and_the_ui_generate_the_same_sd2_image(models, tmp_path):
    front_doors.assert_cli_and_ui_agree(tmp_path / "out", "sd2-v", models.disk_loads)


def test_a_pickled_sd2_state_dict_loads_with_its_yaml_and_generates_as_its_safetensors(models, folder, tmp_path,
                                                                                      monkeypatch, api_client):
    beside = tmp_path / "models" / "Stable-diffusion"
    # a bare state dict (not under "state_dict"), its v-prediction declared by the .yaml beside it alone
    configs = tiny_pickles.write_pickle(str(folder / tiny.V_FILE), beside / "sd2-old.ckpt", nested=False)
    tiny_pickles.default_to(monkeypatch, sd2, configs)
    shutil.copy(folder / "serena-tiny-sd2-v.yaml", beside / "sd2-old.yaml")
    monkeypatch.setattr(shared.cmd_opts, "allow_pickle_checkpoints", True)
    sd_models.refresh_checkpoints()
    info = sd_models.resolve_checkpoint("sd2-old")
    assert (models.facts(info).family, models.facts(info).native_size) == ("sd2", 64)  # decided: no test forward

    def txt2img(name):
        response = api_client.post("/sdapi/v1/txt2img",
                                   json={**TXT, "override_settings": {"sd_model_checkpoint": name}})
        assert response.status_code == 200, response.text
        return response.json()

    pickled = txt2img("sd2-old")
    assert "Model: sd2-old" in pickled["info"]
    assert pixels(pickled["images"][0]) == pixels(txt2img("sd2-v")["images"][0])
    assert models.get(info).family.prediction == "v"


@pytest.mark.parametrize("restart", [False, True], ids=["in memory", "from cache.json"])
def test_facts_follow_a_yaml_added_changed_or_removed_beside_the_file(disk_models, folder, restart):
    """SD2's prediction type comes from a .yaml beside the file: a check kept for the file alone would go stale."""
    disk_models({"sd2.safetensors": folder / tiny.V_FILE})  # its v-prediction declared by nothing else
    info = sd_models.resolve_checkpoint("sd2")
    stored = sd_models.StoredFacts(lambda: "the same code")
    kept = sd_models.LoadedModels(lambda info: None, sd_models.inspect_on_disk, stored)

    def native_size():
        manager = sd_models.LoadedModels(lambda info: None, sd_models.inspect_on_disk, stored) if restart else kept
        return manager.facts(info).native_size

    assert native_size() is None  # undecided until a load's test forward
    yaml = Path(config_beside(info.filename))
    yaml.write_text(tiny.V_YAML)
    assert native_size() == 64  # decided: the UNet config's size
    yaml.write_text("model: [not, a, config]\n")
    with pytest.raises(ValueError, match="sd2.yaml: not an LDM model config"):
        native_size()
    yaml.unlink()
    assert native_size() is None


def test_sd2_uses_the_embeddings_of_its_width_and_skips_sd1s(models, api_client):
    from modules import textual_inversion
    from tools.make_tiny_embedding import make_embedding
    folder = shared.data_paths.embeddings_dir
    real = sd2.default_configs("v")["text_encoder"]["hidden_size"]  # 1024: ViT-H's
    for name, width in (("tinysd2", tiny.TEXT_CONFIG["hidden_size"]), ("realsd2", real), ("sd1emb", 768)):
        make_embedding(os.path.join(folder, f"{name}.safetensors"), width=width, vectors=2, seed=3, scale=1.0)
    evaluation = textual_inversion.database().evaluate((real,))
    assert list(evaluation.loaded) == ["realsd2"] and set(evaluation.skipped) == {"sd1emb", "tinysd2"}
    response = api_client.post("/sdapi/v1/txt2img", json={**TXT, "prompt": "a tinysd2 sd1emb circle",
                                                          "override_settings": {"sd_model_checkpoint": "sd2-v"}})
    assert response.status_code == 200, response.text
    [infotext] = json.loads(response.json()["info"])["infotexts"]
    assert 'TI hashes: "tinysd2: ' in infotext and "sd1emb:" not in infotext  # the tiny width used, SD1's a word


def test_a_lora_for_sd2_changes_an_sd2_image(models, v_model, tmp_path, plugin_host, monkeypatch):
    """SD2's LoRA names are SD1's (diffusers' module names): the Lora extension applies one unchanged."""
    from modules import extensions, processing
    from tools import make_tiny_lora
    monkeypatch.setattr(shared.opts, "data_labels", dict(shared.opts.data_labels))
    make_tiny_lora.write(v_model, str(tmp_path / "models" / "Lora" / "sd2lora.safetensors"), "kohya")
    ext = extensions.load_folder(os.path.join(paths.script_path, "extensions-builtin", "Lora"), host=plugin_host,
                                 group="builtin")
    assert ext.loaded and not ext.problems, ext.problems
    assert extensions.register_extension_options(plugin_host, only=ext.plugins) == []
    try:
        def generate(prompt):
            p = processing.StableDiffusionProcessingTxt2Img(
                prompt=prompt, sampler_name="Euler", steps=2, width=64, height=64, seed=5, do_not_save_samples=True,
                override_settings={"sd_model_checkpoint": "sd2-v"})
            processed = processing.process_images(p)
            return processed.images[0].tobytes(), processed

        plain, _ = generate("a red circle")
        with_lora, processed = generate("a red circle <lora:sd2lora:1>")
        assert with_lora != plain and processed.warnings == []
        assert 'Lora hashes: "sd2lora: ' in processed.infotexts[0]
        assert generate("a red circle")[0] == plain  # the weights came back
    finally:
        extensions.unload([ext], plugin_host)


def test_a_diffusers_folder_cut_as_diffusers_cuts_conditions_as_the_file(v_model, tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel
    folder = tmp_path / "sd2-folder"
    v_model.unet.save_pretrained(folder / "unet")
    v_model.vae.save_pretrained(folder / "vae")
    # diffusers' SD2 folders drop open_clip's last layer, which the penultimate conditioning never reads
    config = CLIPTextConfig(**{**v_model.text_encoder.config.to_dict(), "num_hidden_layers": 2})
    cut = CLIPTextModel(config)
    cut.load_state_dict({k: v for k, v in v_model.text_encoder.state_dict().items() if "layers.2." not in k})
    cut.save_pretrained(folder / "text_encoder")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(v_model.scheduler_config))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    assert checkpoint_loaders.loader_for(str(folder)) is sd2
    model = sd2.load_checkpoint(CheckpointInfo(str(folder), "sd2-folder", "0" * 64))
    assert (model.family.name, model.family.prediction, model.family.native_size) == ("sd2", "v", 768)
    encode = [sd_pipeline.PromptEncoder(m.tokenizer, m.text_encoder, m.conditioning_layer, "cpu",
                                        torch.float32).encode("a cat") for m in (v_model, model)]
    assert torch.equal(encode[0], encode[1])
