"""Model families (issue 17, item 5: clear refusals): a checkpoint's architecture is told from its tensor names and
shapes, recorded in its ``ModelFacts``, and a family Serena cannot run is refused by name at every front door
before anything queues.

Real ``.safetensors`` files throughout, written at test time with tiny tensors under each family's identifying key
names (a dimension detection reads has its real size), and the in-process HTTP API.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from modules import jobs, model_families, paths, sd_models, shared
from modules.model_families import FAMILIES, detect, detect_folder, read_header, refusal

TINY = os.path.join(paths.script_path, "models", "Stable-diffusion", "serena-tiny-v1.safetensors")
TXT = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 2, "seed": 3, "cfg_scale": 4}

U = "model.diffusion_model."


def unet(in_channels=4, context=768):
    return {U + "input_blocks.0.0.weight": (8, in_channels, 3, 3),
            U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (8, context),
            U + "out.2.weight": (4, 8, 3, 3)}


VAE = {"first_stage_model.encoder.conv_in.weight": (8, 3, 3, 3), "first_stage_model.decoder.conv_out.weight": (3, 8, 3, 3)}
CLIP_L = {"cond_stage_model.transformer.text_model.final_layer_norm.weight": (8,)}
OPENCLIP_H = {"cond_stage_model.model.ln_final.weight": (8,)}
SDXL_TE = {"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (8,),
           "conditioner.embedders.1.model.ln_final.weight": (8,)}
REFINER_TE = {"conditioner.embedders.0.model.ln_final.weight": (8,)}

#: file name -> (tensor shapes, family, in_channels, context_dim)
CASES = {
    "sd15": ({**unet(), **VAE, **CLIP_L}, "sd1", 4, 768),
    "sd15-inpaint": ({**unet(9), **VAE, **CLIP_L}, "sd1-inpaint", 9, 768),
    "pix2pix": ({**unet(8), **VAE, **CLIP_L}, "sd1-pix2pix", 8, 768),
    "sd21": ({**unet(4, 1024), **VAE, **OPENCLIP_H}, "sd2", 4, 1024),
    "sd2-inpaint": ({**unet(9, 1024), **VAE, **OPENCLIP_H}, "sd2-inpaint", 9, 1024),
    "sdxl": ({**unet(4, 2048), "model.diffusion_model.label_emb.0.0.weight": (8, 2816), **VAE, **SDXL_TE},
             "sdxl", 4, 2048),
    "sdxl-inpaint": ({**unet(9, 2048), **VAE, **SDXL_TE}, "sdxl-inpaint", 9, 2048),
    "sdxl-refiner": ({**unet(4, 1280), "model.diffusion_model.label_emb.0.0.weight": (8, 2560), **VAE, **REFINER_TE},
                     "sdxl-refiner", 4, 1280),
    "sd3": ({U + "joint_blocks.0.x_block.attn.qkv.weight": (6, 2), "text_encoders.clip_l.x": (2,), **VAE},
            "sd3", None, None),
    "flux": ({"double_blocks.0.img_attn.qkv.weight": (6, 2), "single_blocks.0.linear1.weight": (6, 2)},
             "flux", None, None),
    "flux-prefixed": ({U + "double_blocks.0.img_attn.qkv.weight": (6, 2), **VAE}, "flux", None, None),
    "lora-kohya": ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 8),
                    "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": ()}, "lora", None, None),
    "lora-peft": ({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": (4, 8)}, "lora", None, None),
    "vae-ldm": ({"encoder.conv_in.weight": (8, 3, 3, 3), "decoder.conv_out.weight": (3, 8, 3, 3)}, "vae", None, None),
    "vae-prefixed": (VAE, "vae", None, None),
    "text-only": (CLIP_L, "unknown", None, None),
    "unet-only": (unet(), "unknown", 4, 768),
}


def write(path, shapes, metadata=None):
    save_file({k: torch.zeros(shape, dtype=torch.float16) for k, shape in shapes.items()}, str(path),
              metadata=metadata)
    return path


@pytest.mark.parametrize("name", list(CASES))
def test_every_family_is_told_from_a_real_header(tmp_path, name):
    shapes, family, in_channels, context = CASES[name]
    path = write(tmp_path / f"{name}.safetensors", shapes, {"format": "pt"})
    read, metadata = read_header(str(path))
    assert read == shapes and metadata == {"format": "pt"}
    found = detect(read)
    assert found.name == family and model_families.detect_path(str(path)) == found
    if family != "unknown":
        assert (found.in_channels, found.context_dim) == (in_channels, context)
    assert found.runnable == (family in ("sd1", "sd1-inpaint", "sd2", "sdxl", "sdxl-inpaint", "sdxl-refiner"))
    assert found.is_inpaint == family.endswith("-inpaint")


def test_native_sizes_and_the_sd2_prediction_left_open():
    assert [FAMILIES[n].native_size for n in ("sd1", "sd1-inpaint", "sdxl", "sdxl-refiner")] == [512, 512, 1024, 1024]
    sd2 = FAMILIES["sd2"]
    assert sd2.prediction is None and sd2.native_size is None  # a header cannot say: v at 768 or epsilon at 512
    assert (sd2.decided("v").native_size, sd2.decided("epsilon").native_size) == (768, 512)
    assert FAMILIES["sd1"].decided("epsilon") == FAMILIES["sd1"]


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=30), st.lists(st.integers(0, 4000), max_size=4).map(tuple),
                       max_size=8))
def test_detection_always_gives_a_family_and_a_refusal_that_names_the_file(shapes):
    family = detect(shapes)
    assert family.name in FAMILIES
    message = refusal("some/dir/x.safetensors", family)
    assert (message is None) == family.runnable
    if message:
        assert message.startswith("x.safetensors is ")
        assert "Serena runs SD1.x, SD1.x inpainting, SD2.x, SDXL, SDXL inpainting and SDXL refiner" in message


@pytest.mark.parametrize("damage", [b"", b"\x05\x00", (1 << 40).to_bytes(8, "little"),
                                    (40).to_bytes(8, "little") + b'{"a": ', (2).to_bytes(8, "little") + b"[]"])
def test_an_unreadable_header_is_named(tmp_path, damage):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(damage)
    with pytest.raises(ValueError, match="bad.safetensors: corrupt or truncated"):
        read_header(str(path))


def diffusers_folder(root, name, index, unet_config=None, scheduler=None):
    folder = root / name
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps(index))
    if unet_config is not None:
        (folder / "unet").mkdir()
        (folder / "unet" / "config.json").write_text(json.dumps(unet_config))
    if scheduler is not None:
        (folder / "scheduler").mkdir()
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return str(folder)


@pytest.mark.parametrize("index, unet_config, scheduler, family, size", [
    ({"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"]},
     {"in_channels": 4, "cross_attention_dim": 768}, None, "sd1", 512),
    ({"_class_name": "StableDiffusionInpaintPipeline"}, {"in_channels": 9, "cross_attention_dim": 768}, None,
     "sd1-inpaint", 512),
    ({"_class_name": "StableDiffusionPipeline"}, {"in_channels": 4, "cross_attention_dim": 1024},
     {"prediction_type": "v_prediction"}, "sd2", 768),
    ({"_class_name": "StableDiffusionPipeline"}, {"in_channels": 4, "cross_attention_dim": 1024},
     {"prediction_type": "epsilon"}, "sd2", 512),
    ({"_class_name": "StableDiffusionXLPipeline", "text_encoder": ["transformers", "CLIPTextModel"],
      "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}, {"in_channels": 4}, None, "sdxl", 1024),
    ({"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None],
      "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}, {"in_channels": 4}, None,
     "sdxl-refiner", 1024),
    ({"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"]}, None, None,
     "sd3", 1024),
    ({"_class_name": "FluxPipeline"}, None, None, "flux", 1024),
    ({"_class_name": "SomethingElse"}, None, None, "unknown", None),
])
def test_diffusers_folders_are_told_from_their_index(tmp_path, index, unet_config, scheduler, family, size):
    found = detect_folder(diffusers_folder(tmp_path, "m", index, unet_config, scheduler))
    assert (found.name, found.native_size) == (family, size)


# --- through the API: listed, but refused by name before anything queues --------------------------------------------

UNRUNNABLE = {"sd3-medium": ("sd3", "an SD3 checkpoint"), "flux-dev": ("flux", "a FLUX checkpoint"),
              "my-lora": ("lora-kohya", "a LoRA, not a checkpoint"),
              "sd2-inpaint": ("sd2-inpaint", "an SD2.x inpainting checkpoint, which Serena cannot run yet")}


@pytest.fixture
def models(tmp_path, monkeypatch):
    """A data folder holding the tiny SD1 checkpoint (the default: first by name) and one file of each family
    Serena cannot run, with the real loaded-models cache and ``shared.opts`` bound to its config.json."""
    sd_dir = tmp_path / "models" / "Stable-diffusion"
    sd_dir.mkdir(parents=True)
    shutil.copy(TINY, sd_dir / "a-tiny.safetensors")
    for name, (case, _) in UNRUNNABLE.items():
        write(sd_dir / f"{name}.safetensors", CASES[case][0])
    monkeypatch.setattr(shared, "data_paths",
                        paths.Paths(str(tmp_path), str(tmp_path / "config.json"), shipped_models=False))
    monkeypatch.setattr(sd_models, "_cache_file", None)
    monkeypatch.setattr(sd_models, "model_manager",
                        sd_models.LoadedModels(sd_models.load_from_disk, sd_models.inspect_on_disk))
    monkeypatch.setattr(shared.opts, "filename", str(tmp_path / "config.json"))
    shared.opts.load()
    sd_models.refresh_checkpoints()
    yield sd_dir
    shared.opts.load(str(tmp_path / "does-not-exist.json"))


@pytest.fixture
def client(models, api_client):
    yield api_client
    assert not jobs.queue_lock.locked() and not jobs.state.busy


def test_every_file_is_listed_with_its_a1111_fields(client):
    listed = client.get("/sdapi/v1/sd-models").json()
    assert sorted(m["model_name"] for m in listed) == sorted(["a-tiny", *UNRUNNABLE])
    assert all(set(m) == {"title", "model_name", "hash", "sha256", "filename", "config"} for m in listed)


@pytest.mark.parametrize("name", list(UNRUNNABLE))
def test_an_unrunnable_checkpoint_is_a_422_at_every_front_door(client, name):
    said = f"{name}.safetensors is {UNRUNNABLE[name][1]}"
    r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": name, "samples_save": False})
    assert r.status_code == 422 and said in r.json()["errors"]["sd_model_checkpoint"], r.text
    assert shared.opts.stored() == {}  # nothing half-applied
    r = client.post("/sdapi/v1/txt2img", json={**TXT, "override_settings": {"sd_model_checkpoint": name}})
    assert r.status_code == 422 and said in r.json()["errors"]["sd_model_checkpoint"], r.text
    r = client.post("/sdapi/v1/txt2img", json={**TXT, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent",
                                               "hr_checkpoint_name": name})
    assert r.status_code == 422 and said in r.text and "hr_checkpoint_name" in r.text, r.text
    v = client.post("/serena/v1/overrides/validate", json={"sd_model_checkpoint": name}).json()
    assert v["valid"] is False and said in v["errors"]["sd_model_checkpoint"]
    assert sd_models.model_manager.loads == 0  # refused from the header: nothing was loaded, nothing queued


def test_a_pickled_sd3_file_is_a_422_naming_what_it_is_only_with_allow_pickle(models, client, monkeypatch):
    torch.save({"state_dict": {k: torch.zeros(shape) for k, shape in CASES["sd3"][0].items()}}, models / "old.ckpt")
    sd_models.refresh_checkpoints()
    title = sd_models.resolve_checkpoint("old").title

    def refusal():
        r = client.post("/sdapi/v1/txt2img", json={**TXT, "override_settings": {"sd_model_checkpoint": "old"}})
        assert r.status_code == 422, r.text
        return r.json()["errors"]["sd_model_checkpoint"]

    assert "old.ckpt: pickled checkpoints can run arbitrary code" in refusal()  # not read at all
    monkeypatch.setattr(shared.cmd_opts, "allow_pickle_checkpoints", True)
    monkeypatch.setattr(sd_models, "model_manager",  # a start with the flag: nothing checked yet
                        sd_models.LoadedModels(sd_models.load_from_disk, sd_models.inspect_on_disk))
    assert "old.ckpt is an SD3 checkpoint, which Serena cannot run yet" in refusal()  # told from its state dict
    from modules.ui import settings
    assert settings.checkpoint_choices([title]) == [(title, title)]  # a pickle's family is unknown until chosen
    assert sd_models.model_manager.loads == 0


def test_a_runnable_checkpoint_records_its_family_and_still_generates(client):
    info = sd_models.resolve_checkpoint("a-tiny")
    assert sd_models.model_manager.facts(info).family == "sd1"
    r = client.post("/sdapi/v1/txt2img", json=TXT)
    assert r.status_code == 200 and sd_models.current_model().family.name == "sd1"


def test_the_checkpoint_dropdowns_mark_what_cannot_run(models, monkeypatch):
    from modules.ui import settings
    titles = {c.model_name: c.title for c in sd_models.list_checkpoints()}
    marked = dict((value, label) for label, value in settings.quick_choices("sd_model_checkpoint"))
    assert marked == {titles["a-tiny"]: titles["a-tiny"],
                      titles["sd3-medium"]: f"{titles['sd3-medium']} (SD3: cannot run yet)",
                      titles["flux-dev"]: f"{titles['flux-dev']} (FLUX: cannot run yet)",
                      titles["sd2-inpaint"]: f"{titles['sd2-inpaint']} (SD2.x inpainting: cannot run yet)",
                      titles["my-lora"]: f"{titles['my-lora']} (LoRA: not a checkpoint)"}
    assert sd_models.model_manager.loads == 0
    # Told once: a second listing reads no header while the files are unchanged.
    monkeypatch.setattr(model_families, "read_header", lambda path: pytest.fail(f"{path} read again"))
    assert settings.checkpoint_choices(list(titles.values())) == [(marked[t], t) for t in titles.values()]


def test_the_default_passes_over_unrunnable_files(models):
    (models / "a-tiny.safetensors").rename(models / "z-tiny.safetensors")
    sd_models.refresh_checkpoints()  # every unrunnable file now sorts before the one that runs
    assert sd_models.default_checkpoint().name == "z-tiny.safetensors"


def test_a_ckpt_flag_naming_an_sd3_file_starts_on_a_working_model(models, tmp_path, start_with_ckpt):
    warnings = start_with_ckpt(write(tmp_path / "elsewhere.safetensors", CASES["sd3"][0]))
    assert any("elsewhere.safetensors is an SD3 checkpoint" in w for w in warnings)
    assert not shared.opts.is_stored("sd_model_checkpoint")
    assert sd_models.current_model().info.name == "a-tiny.safetensors"
