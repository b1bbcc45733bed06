"""SDXL (issue 17 items 1 and 6): loading the original single-file layout and diffusers folders offline, both text
encoders with A1111's prompt handling, the pooled embedding and micro-conditioning, and an SDXL generation through
the API as a checkpoint override, after which the stored SD1 model serves the next request.

Real files throughout, written by ``tools/make_tiny_sdxl.py`` (random weights, 64x64 images, 2 steps).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import os
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from modules import checkpoint_loaders, jobs, model_families, paths, sd_models, sd_pipeline, shared, tiling
from modules import sd_models_loader as loader, sd_models_writer as writer, sd_models_xl as xl
from modules.checkpoint_info import CheckpointInfo
from modules.hookspecs import hookimpl
from modules.processing import GenerationSettings
from tools import make_tiny_sdxl as tiny

import front_doors
import tiny_pickles

SHIPPED = os.path.join(paths.script_path, "models")
TINY_SD1 = os.path.join(SHIPPED, "Stable-diffusion", "serena-tiny-v1.safetensors")
TINY_VAE = os.path.join(SHIPPED, "VAE", "serena-tiny-vae.safetensors")
TXT = {"prompt": "a red (circle:1.2)", "negative_prompt": "", "steps": 2, "seed": 5, "cfg_scale": 5}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny SDXL base (single file and diffusers folder), the refiner, and the components they were built from."""
    out = tmp_path_factory.mktemp("xl")
    tiny.main(["--out-dir", str(out)])
    folder = out / "models" / "Stable-diffusion"
    return {"base": str(folder / tiny.BASE_FILE), "refiner": str(folder / tiny.REFINER_FILE),
            "folder": str(folder / tiny.FOLDER), "built": tiny.build(tiny.BASE_SEED)}


def load(path: str):
    return xl.load_checkpoint(CheckpointInfo(path, os.path.basename(path), "0" * 64))


@pytest.fixture(scope="module")
def base(files):
    return load(files["base"])


@pytest.fixture(scope="module")
def refiner(files):
    return load(files["refiner"])


def parts(model) -> dict:
    return {"unet": model.unet, "vae": model._own_vae, "text_encoder": model.text_encoder,
            "text_encoder_2": model.text_encoder_2}


# --- loading ------------------------------------------------------------------------------------------------------

def test_families_are_told_apart_by_their_keys_and_model_index(files, base, refiner):
    found = {which: model_families.detect_path(files[which]).name for which in ("base", "folder", "refiner")}
    assert found == {"base": "sdxl", "folder": "sdxl", "refiner": "sdxl-refiner"}
    assert all(model_families.FAMILIES[name].runnable for name in xl.FAMILIES)
    assert checkpoint_loaders.loader_for(files["folder"]) is xl and checkpoint_loaders.loader_for(TINY_SD1) is loader
    assert (base.family.name, refiner.family.name) == ("sdxl", "sdxl-refiner") and refiner.is_refiner
    assert base.facts.text_encoder_widths == (32, 64) and refiner.facts.text_encoder_widths == (64,)
    with pytest.raises(ValueError, match="an SDXL checkpoint, which modules.sd_models_xl loads"):
        loader.inspect_checkpoint(files["base"])


def test_the_shipped_configs_describe_sdxl_base_and_refiner():
    base, refiner = xl.default_configs(xl.SDXL), xl.default_configs(xl.SDXL_REFINER)
    assert loader._native_size(base["unet"], base["vae"]) == 1024
    assert base["unet"]["cross_attention_dim"] == 768 + 1280 == base["text_encoder"]["hidden_size"] + 1280
    # pooled bigG (1280) + 6 micro-conditioning numbers x 256; the refiner: 5 numbers (aesthetic score)
    assert base["unet"]["projection_class_embeddings_input_dim"] == 1280 + 6 * 256
    assert refiner["unet"]["projection_class_embeddings_input_dim"] == 1280 + 5 * 256
    assert "text_encoder" not in refiner and refiner["unet"]["cross_attention_dim"] == 1280
    assert base["vae"]["scaling_factor"] == 0.13025
    assert xl.load_tokenizer_2().pad_token_id == 0 and loader.load_tokenizer().pad_token_id == 49407


@pytest.mark.parametrize("which", ["base", "refiner"])
def test_single_file_round_trip_is_bitwise(files, base, refiner, which, tmp_path):
    """Loaded and written again, the file has the same bytes: every tensor went through the key maps unchanged."""
    model = base if which == "base" else refiner
    again = tmp_path / "again.safetensors"
    writer.save_sdxl_checkpoint(str(again), scheduler_config=model.scheduler_config, **parts(model))
    with open(files[which], "rb") as a, open(again, "rb") as b:
        assert a.read() == b.read()


def test_loaded_weights_are_the_built_ones(files, base):
    for name, built in files["built"].items():
        loaded = parts(base)[name].state_dict()
        for key, tensor in built.state_dict().items():
            assert torch.equal(loaded[key], tensor.to(torch.float16).float()), (name, key)


def test_the_diffusers_folder_holds_the_same_model(files, base):
    folder = load(files["folder"])
    assert not folder.is_refiner and folder.facts == xl.inspect_checkpoint(files["folder"]) == base.facts
    for name, part in parts(folder).items():
        single = parts(base)[name].state_dict()
        for key, tensor in part.state_dict().items():
            assert torch.equal(tensor.to(torch.float16).float(), single[key]), (name, key)


def test_a_dropped_bigg_tensor_is_refused_naming_the_file(files, tmp_path):
    state, metadata = loader.read_state_dict(files["base"])
    del state[xl.BIGG_PREFIX + "ln_final.weight"]
    broken = tmp_path / "broken.safetensors"
    writer._write_safetensors(str(broken), state, metadata, torch.float16)
    with pytest.raises(ValueError, match="broken.safetensors: bigG text encoder weights do not fit"):
        xl.inspect_checkpoint(str(broken))


# --- conditioning -------------------------------------------------------------------------------------------------

def encoder(model, **settings):
    return sd_pipeline.prompt_encoder(model, SimpleNamespace(settings=GenerationSettings(**settings), embeddings=None))


def test_plain_prompts_condition_as_diffusers_sdxl_does(base):
    """Without attention syntax, both encoders' penultimate states and the pooled bigG embedding are exactly
    diffusers' ``StableDiffusionXLPipeline.encode_prompt``'s (which pads CLIP-L with its end token, bigG with ``!``)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    pipe = StableDiffusionXLPipeline(vae=base.vae, text_encoder=base.text_encoder, text_encoder_2=base.text_encoder_2,
                                     tokenizer=base.tokenizer, tokenizer_2=base.tokenizer_2, unet=base.unet,
                                     scheduler=EulerDiscreteScheduler.from_config(base.scheduler_config))
    with torch.inference_mode():
        # no negative prompt: diffusers' zeros (force_zeros_for_empty_prompt); A1111 zeros an empty one
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt("a red circle", negative_prompt=None)
        hidden, added = encoder(base).conditioning([""], ["a red circle"], SimpleNamespace(width=64, height=48))
    assert torch.equal(hidden[1], embeds[0]) and torch.equal(added["text_embeds"][1], pooled[0])
    assert torch.equal(hidden[0], negative[0]) and not hidden[0].any() and not negative_pooled.any()
    assert added["time_ids"].tolist() == [[48, 64, 0, 0, 48, 64]] * 2


def test_a1111_prompt_syntax_reaches_both_encoders(base):
    enc = encoder(base)
    with torch.inference_mode():
        plain, weighted = enc.encode("a red circle"), enc.encode("a (red:1.5) circle")
        long = enc.encode(", ".join(["circle"] * 60))
        broken = enc.encode("a red BREAK circle")
    assert plain.shape == (77, 96)  # CLIP-L 32 + bigG 64 wide
    assert not torch.equal(plain[:, :32], weighted[:, :32]) and not torch.equal(plain[:, 32:], weighted[:, 32:])
    assert long.shape[0] == broken.shape[0] == 154  # two windows each
    assert torch.equal(enc.pooled("a red circle"), enc.pooled("a red circle BREAK other"))  # first window's


def test_clip_skip_reaches_clip_l_only_with_the_sdxl_option(base):
    with torch.inference_mode():
        default = encoder(base, clip_skip=1).encode("a red circle")
        skipped = encoder(base, clip_skip=1, sdxl_clip_l_skip=True).encode("a red circle")
        deeper = encoder(base, clip_skip=2, sdxl_clip_l_skip=True).encode("a red circle")
    assert torch.equal(default, encoder(base, clip_skip=2).encode("a red circle"))  # ignored, as A1111
    assert torch.equal(default, deeper)  # skip 2 is the penultimate layer, SDXL's default
    assert not torch.equal(default[:, :32], skipped[:, :32]) and torch.equal(default[:, 32:], skipped[:, 32:])


def test_the_refiner_conditions_on_bigg_and_aesthetic_scores(refiner):
    with torch.inference_mode():
        enc = encoder(refiner, sdxl_refiner_low_aesthetic_score=2.0)
        hidden, added = enc.conditioning(["bad"], ["good"], SimpleNamespace(width=64, height=64))
    assert hidden[0].shape == (77, 64) and added["text_embeds"].shape == (2, 48)
    assert added["time_ids"].tolist() == [[64, 64, 0, 0, 2.0], [64, 64, 0, 0, 6.0]]


# --- through the API ------------------------------------------------------------------------------------------------

@pytest.fixture
def models(disk_models, files):
    """A data folder with the tiny SD1 checkpoint (the default), the tiny SDXL base and refiner, and a VAE, with the
    real loaded-models cache; loads are recorded."""
    return disk_models({"a-sd1.safetensors": TINY_SD1, "xl-base.safetensors": files["base"],
                        "xl-refiner.safetensors": files["refiner"]}, vaes={"tiny-vae.safetensors": TINY_VAE})


@pytest.fixture
def client(models, api_client):
    yield api_client
    assert not jobs.queue_lock.locked() and not jobs.state.busy


def txt2img(client, **fields):
    response = client.post("/sdapi/v1/txt2img", json={**TXT, **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    return body["images"][0], body["info"]


def pixels(png_b64: str) -> bytes:
    """An image's pixels (the PNG's own bytes also hold its infotext, which names the checkpoint)."""
    return Image.open(io.BytesIO(base64.b64decode(png_b64))).tobytes()


def test_an_sdxl_override_generates_deterministically_then_sd1_serves_the_next_request(client, models):
    override = {"override_settings": {"sd_model_checkpoint": "xl-base"}}
    first, info = txt2img(client, **override)
    again, _ = txt2img(client, **override)
    assert first == again
    image = Image.open(io.BytesIO(base64.b64decode(first)))
    assert image.size == (64, 64)  # the checkpoint's native size: the request gave none
    assert '"sd_model_name": "xl-base"' in info and "Model: xl-base" in info
    _, info = txt2img(client, width=64, height=64)
    assert '"sd_model_name": "a-sd1"' in info
    assert models.disk_loads.count("xl-base.safetensors") == 1  # the second SDXL request was served from the cache


def test_an_sdxl_vae_override_keeps_the_sdxl_latent_scale(client, models):
    txt2img(client, override_settings={"sd_model_checkpoint": "xl-base", "sd_vae": "tiny-vae.safetensors"})
    model = sd_models.model_manager.get(sd_models.resolve_checkpoint("xl-base"))
    assert model.vae_name == "tiny-vae.safetensors" and model.vae.config.scaling_factor == 0.13025
    assert sd_models._vae_cache and all(v.config.scaling_factor == 0.18215 for v in sd_models._vae_cache.values())


def test_the_cli_and_the_ui_generate_the_same_sdxl_image(models, tmp_path):
    front_doors.assert_cli_and_ui_agree(tmp_path / "out", "xl-base", models.disk_loads)


def test_a_pickled_sdxl_checkpoint_is_read_once_and_generates_as_its_safetensors(disk_models, files, tmp_path,
                                                                                 monkeypatch, api_client):
    source = tmp_path / "xl-old.ckpt"
    tiny_pickles.default_to(monkeypatch, xl, tiny_pickles.write_pickle(files["base"], source))
    monkeypatch.setattr(shared.cmd_opts, "allow_pickle_checkpoints", True)
    models = disk_models({"a-sd1.safetensors": TINY_SD1, "xl-base.safetensors": files["base"],
                          "xl-old.ckpt": source})
    reads, torch_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kw: reads.append(kw.get("mmap")) or torch_load(*args, **kw))
    pickled, info = txt2img(api_client, width=64, height=64,
                            override_settings={"sd_model_checkpoint": "xl-old"})
    # the check memory-maps it and the load reads it, once each: telling the family read nothing more
    assert reads == [True, False] and "Model: xl-old" in info
    assert models.facts(sd_models.resolve_checkpoint("xl-old")).family == "sdxl"
    safetensors, _ = txt2img(api_client, width=64, height=64, override_settings={"sd_model_checkpoint": "xl-base"})
    assert pixels(pickled) == pixels(safetensors)


# --- the refiner ----------------------------------------------------------------------------------------------------

# Two checkpoints held: the base and its refiner both stay loaded across requests.
REFINED = {"override_settings": {"sd_model_checkpoint": "xl-base", "sd_checkpoints_limit": 2}, "width": 64,
           "height": 64, "steps": 4, "refiner_checkpoint": "xl-refiner", "refiner_switch_at": 0.5}


class SwitchRecorder:
    """Records the effective checkpoint at every override enter, and every exit."""

    def __init__(self):
        self.events = []

    @hookimpl
    def on_opts_override_enter(self):
        self.events.append(sd_models.resolve_checkpoint(shared.opts.sd_model_checkpoint).name)

    @hookimpl
    def on_opts_override_exit(self):
        self.events.append("exit")


def test_the_refiner_takes_over_mid_sampling_as_a_nested_override(client, models, register):
    recorder = register(SwitchRecorder(), "switch-recorder")
    plain, _ = txt2img(client, **{**REFINED, "refiner_checkpoint": None})
    recorder.events.clear()
    refined, info = txt2img(client, **REFINED)
    # the request's override, then the refiner's nested inside it, closed first
    assert recorder.events == ["xl-base.safetensors", "xl-refiner.safetensors", "exit", "exit"]
    assert refined != plain and txt2img(client, **REFINED)[0] == refined
    title = sd_models.resolve_checkpoint("xl-refiner")
    assert f"Refiner: xl-refiner [{title.shorthash}], Refiner switch at: 0.5" in info
    assert '"sd_model_name": "xl-base"' in info  # the image is the base checkpoint's, refined
    assert models.disk_loads.count("xl-refiner.safetensors") == 1  # the cache served the second switch
    _, info = txt2img(client, width=64, height=64)
    assert '"sd_model_name": "a-sd1"' in info and "Refiner" not in info


def test_a_tiled_request_tiles_on_the_refiner_and_leaves_its_padding_as_it_was(client, register):
    class Modes:
        seen = []

        @hookimpl
        def on_sampling_step(self, step):
            model = sd_models.current_model()
            self.seen.append((model.info.name, {conv.padding_mode for conv in tiling.convolutions(model)}))

    register(Modes(), "padding-modes")
    txt2img(client, **REFINED, tiling=True)
    refiner = sd_models.model_manager.get(sd_models.resolve_checkpoint("xl-refiner"))
    # Both models pad circularly while they sample (4 steps, the switch at half), and neither does afterwards.
    assert Modes.seen == [("xl-base.safetensors", {"circular"})] * 2 + [("xl-refiner.safetensors", {"circular"})] * 2
    assert {conv.padding_mode for conv in tiling.convolutions(refiner)} == {"zeros"}
    assert {conv.padding_mode for conv in tiling.convolutions(sd_models.current_model())} == {"zeros"}


def test_a_refiner_that_never_switches_changes_nothing(client):
    plain, _ = txt2img(client, **{**REFINED, "refiner_checkpoint": ""})
    late, info = txt2img(client, **{**REFINED, "refiner_switch_at": 1.0})
    assert late == plain and "Refiner" not in info


@pytest.mark.parametrize("field, value", [("refiner_checkpoint", "no-such-model"), ("refiner_switch_at", 1.5)])
def test_bad_refiner_fields_are_a_422_naming_them(client, field, value):
    response = client.post("/sdapi/v1/txt2img", json={**TXT, **REFINED, field: value})
    assert response.status_code == 422 and field in response.text


def test_the_txt2img_refiner_section_fills_and_pastes_the_fields(models):
    from modules.ui import refiner as section
    title = sd_models.resolve_checkpoint("xl-refiner").title
    text = f"a cat\nSteps: 4, Seed: 1, Size: 64x64, Refiner: xl-refiner [{title[-11:-1]}], Refiner switch at: 0.6"
    assert section.paste_values(text) == [True, title, 0.6]
    assert section.paste_values("a cat\nSteps: 4, Seed: 1") == [False, None, 0.8]
    assert section.p_kwargs([True, title, 0.6]) == {"refiner_checkpoint": title, "refiner_switch_at": 0.6}
    assert section.p_kwargs([False, title, 0.6]) == section.p_kwargs([True, None, 0.6]) == section.p_kwargs([]) == {}


# --- textual inversion (issue 16 item 5): clip_l to CLIP-L, clip_g to bigG ------------------------------------------

def test_an_sdxl_embedding_gives_each_encoder_its_own_vectors(base, tmp_path):
    from modules import textual_inversion
    from tools.make_tiny_embedding import make_embedding
    widths = (tiny.CLIP_L["hidden_size"], tiny.BIGG["hidden_size"])
    make_embedding(str(tmp_path / "a" / "xlemb.safetensors"), fmt="sdxl", vectors=2, width=widths[0],
                   width_g=widths[1], seed=1, scale=1.0)
    make_embedding(str(tmp_path / "b" / "xlemb.safetensors"), fmt="sdxl", vectors=2, width=widths[0],
                   width_g=widths[1], seed=1, scale=1.0)  # the same clip_l ...
    make_embedding(str(tmp_path / "b" / "other.safetensors"), fmt="sdxl", vectors=2, width=widths[0],
                   width_g=widths[1], seed=8, scale=1.0)
    make_embedding(str(tmp_path / "a" / "sd1emb.safetensors"), width=widths[0])
    db_a = textual_inversion.EmbeddingDatabase((str(tmp_path / "a"),), allow_pickle=False)
    on_xl, on_sd1 = db_a.evaluate(base.facts.text_encoder_widths), db_a.evaluate((widths[0],))
    assert list(on_xl.loaded) == ["xlemb"] and list(on_xl.skipped) == ["sd1emb"]
    assert list(on_sd1.loaded) == ["sd1emb"] and "an SDXL embedding" in on_sd1.skipped["xlemb"][1]
    emb_a = on_xl.loaded["xlemb"]
    found_b = textual_inversion.EmbeddingDatabase((str(tmp_path / "b"),), allow_pickle=False).scan()
    # ... with another clip_g: an embedding that differs in bigG's part alone
    emb_b = dataclasses.replace(found_b["xlemb"], vectors={widths[0]: emb_a.vectors[widths[0]],
                                                           widths[1]: found_b["other"].vectors[widths[1]]})

    def encoded(prompt, embedding):
        lookup = textual_inversion.EmbeddingLookup.build(base.tokenizer, [embedding] if embedding else [])
        request = SimpleNamespace(settings=GenerationSettings(), embeddings=lookup)
        with torch.inference_mode():
            return sd_pipeline.prompt_encoder(base, request).encode(prompt), lookup

    with_a, lookup = encoded("a xlemb cat", emb_a)
    with_b, _ = encoded("a xlemb cat", emb_b)
    as_text, _ = encoded("a xlemb cat", None)
    assert list(lookup.used) == ["xlemb"]
    assert textual_inversion.hashes_infotext(lookup.used) == f"xlemb: {emb_a.shorthash}"
    clip_l = slice(0, widths[0])
    bigg = slice(widths[0], None)
    assert torch.equal(with_a[:, clip_l], with_b[:, clip_l])  # CLIP-L reads clip_l only
    assert not torch.allclose(with_a[:, bigg], with_b[:, bigg], atol=1e-4)  # bigG reads clip_g
    assert not torch.allclose(with_a[:, clip_l], as_text[:, clip_l], atol=1e-4)
