"""Checkpoint loading and writing (``modules.sd_models_loader``): layouts, strictness, offline use, VAE swaps.

Everything runs on tiny random components; a network guard proves nothing is fetched.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import pathlib
import pickle
import socket

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from modules import paths, sd_models_loader as loader, sd_models_writer as writer
from modules.checkpoint_info import CheckpointInfo

ROOT = paths.script_path
TINY_V1 = os.path.join(ROOT, "models", "Stable-diffusion", "serena-tiny-v1.safetensors")
TINY_ALT = os.path.join(ROOT, "models", "Stable-diffusion", "serena-tiny-alt.safetensors")
TINY_VAE = os.path.join(ROOT, "models", "VAE", "serena-tiny-vae.safetensors")

# Deliberately not the shipped checkpoint's dims: one layer per block, norm groups 32, as a second layout.
UNET_CONFIG = dict(sample_size=8, layers_per_block=1, block_out_channels=(32, 32, 64, 64), cross_attention_dim=32,
                   attention_head_dim=8)
VAE_CONFIG = dict(layers_per_block=1, block_out_channels=(32, 32, 64, 64), latent_channels=4,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
TEXT_CONFIG = dict(vocab_size=49408, max_position_embeddings=77, hidden_size=32, intermediate_size=37,
                   num_attention_heads=4, num_hidden_layers=2, hidden_act="quick_gelu")


def info_for(path: str) -> CheckpointInfo:
    return CheckpointInfo(os.path.abspath(path), os.path.basename(path), "0123456789" + "a" * 54)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def components():
    torch.manual_seed(7)
    unet = UNet2DConditionModel(**UNET_CONFIG).eval()
    vae = AutoencoderKL(**VAE_CONFIG).eval()
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)).eval()
    return unet, vae, text_encoder


@pytest.fixture
def tiny_v1_configs(tmp_path, monkeypatch, components):
    """Make the "SD1.5 default configs" those of ``components``, for files that carry no metadata."""
    unet, vae, text_encoder = components
    configs = writer.component_configs(unet, vae, text_encoder, loader.default_configs()["scheduler"])
    for component, rel in loader._COMPONENT_FILES.items():
        (tmp_path / "v1" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "v1" / rel).write_text(json.dumps(configs[component]))
    monkeypatch.setattr(loader, "V1_CONFIG_DIR", str(tmp_path / "v1"))


def outputs(unet, vae, text_encoder, tokenizer=None) -> dict[str, torch.Tensor]:
    """Deterministic forward results of all three components."""
    tokenizer = tokenizer or loader.load_tokenizer()
    ids = tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=gen)
    image = torch.rand(1, 3, 64, 64, generator=gen) * 2 - 1
    with torch.inference_mode():
        text = text_encoder(ids)[0]
        return {
            "text": text,
            "unet": unet(latents, 500, encoder_hidden_states=text).sample,
            "decode": vae.decode(latents).sample,
            "encode": vae.encode(image).latent_dist.mean,
        }


def assert_same_weights(a, b):
    """Bitwise equal parameters and buffers: what a loader round trip must preserve exactly."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


def assert_same_outputs(a: dict, b: dict):
    """Outputs of equal weights agree to fp32 rounding, not bitwise: CPU kernels (AVX2, AVX-512, NEON) and memory
    layouts may order the sums differently. A wrong or missing weight moves outputs by orders of magnitude more."""
    for key in a:
        scale = max(1.0, float(a[key].abs().max()))
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-5 * scale, msg=lambda m: f"{key}: {m}")


def assert_same_model(original: tuple, loaded: tuple):
    """``(unet, vae, text_encoder)`` twice: same weights exactly, same outputs to fp32 rounding."""
    for a, b in zip(original, loaded):
        assert_same_weights(a, b)
    assert_same_outputs(outputs(*original), outputs(*loaded))


def half_rounded(model):
    """A copy of ``model`` whose weights went through fp16 and back, as an fp16 file stores them."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.copy_(p.half().float())
    return twin


# --- tokenizer ----------------------------------------------------------------------------------------------------

def test_tokenizer_gives_reference_ids(no_network):
    tokenizer = loader.load_tokenizer()
    assert tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer.model_max_length == 77
    assert len(tokenizer) == 49408
    assert tokenizer.pad_token_id == 49407


def test_tokenizer_files_match_the_builder(tmp_path):
    spec = importlib.util.spec_from_file_location("build_clip_tokenizer",
                                                  os.path.join(ROOT, "tools", "build_clip_tokenizer.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--out", str(tmp_path)]) == 0
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / name).read_bytes() == pathlib.Path(loader.TOKENIZER_DIR, name).read_bytes(), name


# --- the shipped tiny checkpoints ---------------------------------------------------------------------------------

def test_shipped_tiny_checkpoint_loads_offline_and_runs(no_network):
    model = loader.load_checkpoint(info_for(TINY_V1))
    assert model.sd_model_hash == "0123456789"
    assert model.vae_name is None
    assert model.scheduler_config["prediction_type"] == "epsilon"
    assert model.scheduler_config["beta_schedule"] == "scaled_linear"
    assert model.unet.dtype == model.vae.dtype == model.text_encoder.dtype == torch.float32
    out = outputs(model.unet, model.vae, model.text_encoder, model.tokenizer)
    assert out["text"].shape == (1, 77, model.text_encoder.config.hidden_size)
    assert out["unet"].shape == (1, 4, 8, 8)
    assert out["decode"].shape == (1, 3, 64, 64)
    assert out["encode"].shape == (1, 4, 8, 8)
    assert all(torch.isfinite(t).all() for t in out.values())


def test_shipped_checkpoints_keep_sd1x_block_layout():
    with safe_open(TINY_V1, "pt") as f:
        keys = set(f.keys())
        configs = json.loads(f.metadata()[loader.METADATA_KEY])
    assert configs["unet"]["layers_per_block"] == 2
    assert configs["unet"]["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    # The same flat indices and skip connections as a real SD1.5 file.
    for key in ("model.diffusion_model.input_blocks.11.0.in_layers.2.weight",
                "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
                "model.diffusion_model.input_blocks.9.0.op.weight",
                "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight",
                "model.diffusion_model.output_blocks.2.1.conv.weight",
                "model.diffusion_model.output_blocks.5.2.conv.weight",
                "first_stage_model.decoder.up.3.upsample.conv.weight",
                "first_stage_model.encoder.mid.attn_1.q.weight",
                "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"):
        assert key in keys, key
    assert os.path.getsize(TINY_V1) < 8_000_000


def test_shipped_files_all_have_different_weights():
    v1, alt, vae = load_file(TINY_V1), load_file(TINY_ALT), load_file(TINY_VAE)
    assert v1.keys() == alt.keys()
    for key in ("model.diffusion_model.out.2.weight",
                "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"):
        assert not torch.equal(v1[key], alt[key]), key
    decoders = [v1["first_stage_model.decoder.conv_in.weight"], alt["first_stage_model.decoder.conv_in.weight"],
                vae["decoder.conv_in.weight"]]
    assert all(not torch.equal(a, b) for i, a in enumerate(decoders) for b in decoders[i + 1:])


def test_make_tiny_checkpoint_reproduces_the_shipped_files(tmp_path):
    spec = importlib.util.spec_from_file_location("make_tiny_checkpoint",
                                                  os.path.join(ROOT, "tools", "make_tiny_checkpoint.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--out-dir", str(tmp_path)]) == 0
    for shipped in (TINY_V1, TINY_ALT, TINY_VAE):
        rebuilt = tmp_path / os.path.relpath(shipped, ROOT)
        assert_same_random_init(str(rebuilt), shipped)


def assert_same_random_init(rebuilt: str, shipped: str):
    """Same keys, dtypes, shapes and metadata exactly; the seeded random values to one fp16 step in a few.

    The files are not compared byte for byte: ``torch`` draws its seeded initialisation through vectorised
    kernels that differ per CPU (ATen's AVX2/AVX-512 paths against the scalar one of aarch64 give other low bits),
    and after rounding to fp16 about 0.06% of the values land one step apart. Another seed or init changes
    nearly every value, by far more than one step.
    """
    with safe_open(rebuilt, "pt") as a, safe_open(shipped, "pt") as b:
        assert a.metadata() == b.metadata(), shipped
        assert sorted(a.keys()) == sorted(b.keys()), shipped
        differing = total = 0
        for key in b.keys():
            x, y = a.get_tensor(key), b.get_tensor(key)
            assert x.dtype == y.dtype and x.shape == y.shape, key
            steps = (x.float() - y.float()).abs() / torch.finfo(y.dtype).eps / y.float().abs().clamp_min(2 ** -14)
            assert float(steps.max()) <= 1.0, key
            differing, total = differing + int((x != y).sum()), total + x.numel()
    assert differing <= total // 200, f"{shipped}: {differing} of {total} values differ"


# --- writing and reading back -------------------------------------------------------------------------------------

def test_save_then_load_is_bit_identical_in_fp32(tmp_path, components):
    unet, vae, text_encoder = components
    path = tmp_path / "round.safetensors"
    writer.save_ldm_checkpoint(str(path), unet=unet, vae=vae, text_encoder=text_encoder,
                               scheduler_config={"prediction_type": "v_prediction"}, dtype=torch.float32)
    model = loader.load_checkpoint(info_for(path))
    assert_same_model((unet, vae, text_encoder), (model.unet, model.vae, model.text_encoder))
    assert model.scheduler_config == {"prediction_type": "v_prediction"}


def test_fp16_file_loads_as_the_fp16_rounded_weights(tmp_path, components):
    unet, vae, text_encoder = components
    path = tmp_path / "half.safetensors"
    writer.save_ldm_checkpoint(str(path), unet=unet, vae=vae, text_encoder=text_encoder, scheduler_config={})
    assert {t.dtype for t in load_file(path).values()} == {torch.float16}
    model = loader.load_checkpoint(info_for(path))
    expected = outputs(half_rounded(unet), half_rounded(vae), half_rounded(text_encoder))
    assert_same_outputs(expected, outputs(model.unet, model.vae, model.text_encoder))
    half = loader.load_checkpoint(info_for(path), dtype=torch.float16)
    assert half.unet.dtype == half.vae.dtype == half.text_encoder.dtype == torch.float16


def test_saved_file_uses_ldm_keys_and_records_configs(tmp_path, components):
    unet, vae, text_encoder = components
    path = tmp_path / "keys.safetensors"
    writer.save_ldm_checkpoint(str(path), unet=unet, vae=vae, text_encoder=text_encoder, scheduler_config={"a": 1},
                               extra_metadata={"modelspec.title": "test", "b": "2"})
    with safe_open(str(path), "pt") as f:
        keys, metadata = list(f.keys()), f.metadata()
        q = f.get_tensor("first_stage_model.decoder.mid.attn_1.q.weight")
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")
    assert all(k.startswith(prefixes) for k in keys)
    assert q.ndim == 4 and q.shape[2:] == (1, 1)   # LDM stores the VAE attention as 1x1 convolutions
    configs = json.loads(metadata[loader.METADATA_KEY])
    assert configs["unet"]["block_out_channels"] == [32, 32, 64, 64]
    assert configs["scheduler"] == {"a": 1}
    assert metadata["modelspec.title"] == "test"
    header = path.read_bytes()[8:400].decode("utf-8", "replace")
    assert header.index('"b"') < header.index('"modelspec.title"') < header.index('"serena_config"')


def test_sampling_recommendations_are_read_from_the_file_and_absent_by_default(tmp_path, components):
    unet, vae, text_encoder = components
    declared, plain = tmp_path / "declared.safetensors", tmp_path / "plain.safetensors"
    writer.save_ldm_checkpoint(str(declared), unet=unet, vae=vae, text_encoder=text_encoder, scheduler_config={},
                               sampling={"guidance_rescale": 0.7, "cfg_scale": 4})
    writer.save_ldm_checkpoint(str(plain), unet=unet, vae=vae, text_encoder=text_encoder, scheduler_config={})
    model = loader.load_checkpoint(info_for(declared))
    assert (model.guidance_rescale, model.cfg_scale) == (0.7, 4.0)
    model = loader.load_checkpoint(info_for(plain))
    assert (model.guidance_rescale, model.cfg_scale) == (0.0, None)
    assert "sampling" not in json.loads(safe_open(str(plain), "pt").metadata()[loader.METADATA_KEY])
    # Read from the metadata alone, as the UI does before the model is loaded.
    assert loader.checkpoint_sampling(str(declared)) == {"guidance_rescale": 0.7, "cfg_scale": 4.0}
    assert loader.checkpoint_sampling(str(plain)) == {"guidance_rescale": 0.0, "cfg_scale": None}
    assert loader.checkpoint_sampling(TINY_V1) == {"guidance_rescale": 0.0, "cfg_scale": None}


@pytest.mark.parametrize("sampling,message", [
    ({"guidance_rescale": 1.5}, "guidance_rescale must be a number from 0 to 1"),
    ({"guidance_rescale": -0.1}, "guidance_rescale"), ({"guidance_rescale": "0.7"}, "guidance_rescale"),
    ({"guidance_rescale": True}, "guidance_rescale"), ({"cfg_scale": 0.5}, "cfg_scale must be a number from 1 to 30"),
    ({"cfg_scale": "4"}, "cfg_scale"), ([0.7], "sampling must be a JSON object"),
])
def test_bad_sampling_values_are_refused_naming_the_file(tmp_path, components, sampling, message):
    unet, vae, text_encoder = components
    path = tmp_path / "bad-sampling.safetensors"
    configs = writer.component_configs(unet, vae, text_encoder, {})
    configs["sampling"] = sampling
    save_file(writer.ldm_state_dict(unet, vae, text_encoder), str(path),
              metadata={loader.METADATA_KEY: json.dumps(configs)})
    for read in (lambda: loader.load_checkpoint(info_for(path)), lambda: loader.checkpoint_sampling(str(path))):
        with pytest.raises(ValueError, match=f"bad-sampling.safetensors: .*{message}"):
            read()


def test_diffusers_single_file_loader_reads_saved_files_identically(tmp_path, components):
    """diffusers' own ``from_single_file`` agrees with our key layout (given local configs, offline)."""
    unet, vae, text_encoder = components
    path = tmp_path / "ours.safetensors"
    writer.save_ldm_checkpoint(str(path), unet=unet, vae=vae, text_encoder=text_encoder, scheduler_config={},
                               dtype=torch.float32)
    config_dir = tmp_path / "config"
    configs = writer.component_configs(unet, vae, text_encoder)
    for component in ("unet", "vae", "text_encoder"):
        (config_dir / component).mkdir(parents=True)
        (config_dir / component / "config.json").write_text(json.dumps(configs[component]))
    from_diffusers = UNet2DConditionModel.from_single_file(str(path), config=str(config_dir), subfolder="unet",
                                                           local_files_only=True)
    vae_diffusers = AutoencoderKL.from_single_file(str(path), config=str(config_dir), subfolder="vae",
                                                   local_files_only=True)
    assert_same_model((unet, vae, text_encoder), (from_diffusers, vae_diffusers, text_encoder))


# --- SD1.x files from elsewhere -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text_prefix", ["cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."])
def test_foreign_sd1x_file_without_metadata_loads_with_default_configs(tmp_path, components, tiny_v1_configs,
                                                                       text_prefix, no_network):
    """A file as other tools write it: no serena metadata, training leftovers, either text-encoder prefix."""
    unet, vae, text_encoder = components
    state = {}
    for key, tensor in writer.ldm_state_dict(unet, vae, text_encoder).items():
        state[key.replace(loader.TEXT_PREFIX, text_prefix)] = tensor.contiguous()
    state.update({
        text_prefix + "embeddings.position_ids": torch.arange(77, dtype=torch.float32)[None],
        "alphas_cumprod": torch.ones(1000), "betas": torch.ones(1000),
        "model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(0),
    })
    path = tmp_path / "foreign.safetensors"
    save_file(state, str(path))
    model = loader.load_checkpoint(info_for(path))
    assert_same_model((unet, vae, text_encoder), (model.unet, model.vae, model.text_encoder))
    assert model.scheduler_config["_class_name"] == "PNDMScheduler"


def test_full_size_sd15_layout_maps_both_ways():
    """The hand-written SD1.5 configs give SD1.5's tensor names, counts and sizes, and load back (no memory used)."""
    configs = loader.default_configs()
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    state = writer.ldm_state_dict(unet, vae, text_encoder)
    counts = {p: sum(k.startswith(p) for k in state) for p in
              ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")}
    assert list(counts.values()) == [686, 248, 196]  # SD1.5 has one more text tensor: position_ids, a buffer
    shapes = {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 768),
        "model.diffusion_model.output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight": (256, 512, 1, 1),
        "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc1.weight": (3072, 768),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    unet2, vae2, text2, _ = loader._components_from_ldm(state, configs, "sd15.safetensors", torch.device("meta"),
                                                        torch.float16)
    assert sum(p.numel() for p in unet2.parameters()) == 859_520_964
    assert sum(p.numel() for p in vae2.parameters()) == 83_653_863
    assert sum(p.numel() for p in text2.parameters()) == 123_060_480
    for model in (unet2, vae2, text2):
        assert {t.device.type for t in (*model.parameters(), *model.buffers())} == {"meta"}
        assert {p.dtype for p in model.parameters()} == {torch.float16}


def test_diffusers_folder_loads(tmp_path, components, no_network):
    unet, vae, text_encoder = components
    tokenizer = loader.load_tokenizer()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=PNDMScheduler.from_config(loader.default_configs()["scheduler"]),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(tmp_path / "folder"))
    model = loader.load_checkpoint(info_for(tmp_path / "folder"))
    assert_same_model((unet, vae, text_encoder), (model.unet, model.vae, model.text_encoder))
    assert model.scheduler_config["steps_offset"] == 1

    weights = tmp_path / "folder" / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    del state["conv_out.bias"]
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=r"folder: unet/ .*conv_out\.bias"):
        loader.load_checkpoint(info_for(tmp_path / "folder"))


# --- refusals -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "bad header"])
def test_corrupt_file_raises_value_error_naming_it(tmp_path, damage):
    data = pathlib.Path(TINY_V1).read_bytes()
    damaged = {
        "truncated": data[: len(data) // 2],
        "garbage": b"this is not a checkpoint at all",
        "empty": b"",
        "bad header": (16).to_bytes(8, "little") + b"{not json here!}" + data[200:400],
    }[damage]
    path = tmp_path / f"broken-{damage.replace(' ', '-')}.safetensors"
    path.write_bytes(damaged)
    with pytest.raises(ValueError, match=rf"{path.name}: corrupt or truncated"):
        loader.load_checkpoint(info_for(path))


def test_unknown_layouts_are_refused(tmp_path, components):
    cases = {
        "random.safetensors": ({"foo.bar": torch.zeros(2)}, "not a Stable Diffusion 1.x checkpoint"),
        "sdxl.safetensors": ({"conditioner.embedders.1.model.ln_final.weight": torch.zeros(2),
                              "model.diffusion_model.out.2.weight": torch.zeros(2)}, "an SDXL checkpoint"),
        "sd2.safetensors": ({"cond_stage_model.model.ln_final.weight": torch.zeros(2),
                             "model.diffusion_model.out.2.weight": torch.zeros(2)}, "an SD2.x checkpoint"),
        "diffusers-keys.safetensors": ({f"unet.{k}": v for k, v in components[0].state_dict().items()},
                                       "no UNet, VAE, text encoder tensors"),
        "nothing.safetensors": ({}, "holds no tensors"),
    }
    for name, (state, reason) in cases.items():
        save_file(state, str(tmp_path / name))
        with pytest.raises(ValueError, match=rf"{name}[: ].*{reason}"):
            loader.load_checkpoint(info_for(tmp_path / name))


def _ldm_file(tmp_path, components, edit, name="edited.safetensors"):
    unet, vae, text_encoder = components
    state = {k: v.contiguous() for k, v in writer.ldm_state_dict(unet, vae, text_encoder).items()}
    edit(state)
    metadata = {loader.METADATA_KEY: json.dumps(writer.component_configs(unet, vae, text_encoder, {}))}
    save_file(state, str(tmp_path / name), metadata=metadata)
    return tmp_path / name


@pytest.mark.parametrize("edit, reason", [
    (lambda s: s.pop("model.diffusion_model.out.2.bias"), r"UNet weights do not fit .*out\.bias"),
    (lambda s: s.__setitem__("model.diffusion_model.input_blocks.1.1.proj_in.weight_x",
                             s.pop("model.diffusion_model.input_blocks.1.1.proj_in.weight")),
     r"UNet weights do not fit .*proj_in\.weight_x"),
    # Tensors diffusers' converter has no pattern for; it would skip them without a word.
    (lambda s: s.__setitem__("model.diffusion_model.input_blocks.1.7.extra.weight", torch.zeros(3)),
     r"UNet tensors in the file"),
    (lambda s: s.__setitem__("model.diffusion_model.label_emb.0.0.weight", torch.zeros(3)),
     r"UNet tensors in the file"),
    (lambda s: s.pop("first_stage_model.decoder.up.0.block.1.conv1.weight"), r"VAE weights do not fit"),
    (lambda s: s.__setitem__("first_stage_model.encoder.extra.weight", torch.zeros(3)), r"VAE tensors in the file"),
    (lambda s: s.__setitem__("first_stage_model.decoder.conv_in.weight",
                             torch.zeros(7, 4, 3, 3, dtype=torch.float32)), r"VAE weights do not fit .*size mismatch"),
    (lambda s: s.pop("cond_stage_model.transformer.text_model.final_layer_norm.bias"),
     r"text encoder weights do not fit"),
    (lambda s: s.__setitem__("cond_stage_model.transformer.text_model.encoder.layers.9.mlp.fc1.weight",
                             torch.zeros(2)), r"text encoder weights do not fit"),
])
def test_a_tensor_that_does_not_fit_raises(tmp_path, components, edit, reason):
    """Strict loading: nothing is skipped silently, nothing is left with random weights."""
    path = _ldm_file(tmp_path, components, edit)
    with pytest.raises(ValueError, match=rf"(?s)edited\.safetensors: .*{reason}"):
        loader.load_checkpoint(info_for(path))


def test_config_that_does_not_match_the_weights_raises(tmp_path, components):
    unet, vae, text_encoder = components
    path = tmp_path / "mismatch.safetensors"
    writer.save_ldm_checkpoint(str(path), unet=unet, vae=vae, text_encoder=text_encoder, scheduler_config={})
    # The same file, with no metadata: the SD1.5 configs do not fit tiny weights.
    save_file(load_file(str(path)), str(tmp_path / "bare.safetensors"))
    with pytest.raises(ValueError, match=r"bare\.safetensors: "):
        loader.load_checkpoint(info_for(tmp_path / "bare.safetensors"))


@pytest.mark.parametrize("metadata, reason", [
    ("{not json", "unreadable serena_config metadata"),
    ("[1, 2]", "serena_config metadata is not a JSON object"),
    (json.dumps({"unet": {"block_out_channels": [32, 32, 64, 64]}}), "UNet conversion needs 'layers_per_block'"),
])
def test_broken_metadata_raises(tmp_path, components, metadata, reason):
    unet, vae, text_encoder = components
    state = {k: v.contiguous() for k, v in writer.ldm_state_dict(unet, vae, text_encoder).items()}
    save_file(state, str(tmp_path / "meta.safetensors"), metadata={loader.METADATA_KEY: metadata})
    with pytest.raises(ValueError, match=rf"meta\.safetensors: .*{reason}"):
        loader.load_checkpoint(info_for(tmp_path / "meta.safetensors"))


def test_pickled_checkpoint_is_refused_unless_allowed(tmp_path, components, tiny_v1_configs):
    unet, vae, text_encoder = components
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {k: v.contiguous() for k, v in writer.ldm_state_dict(unet, vae, text_encoder).items()},
                "global_step": 10}, str(path))
    with pytest.raises(ValueError, match=r"model\.ckpt: pickled checkpoints can run arbitrary code.*"
                                         r"convert to \.safetensors.*--allow-pickle-checkpoints"):
        loader.load_checkpoint(info_for(path))
    model = loader.load_checkpoint(info_for(path), allow_pickle=True)
    assert_same_model((unet, vae, text_encoder), (model.unet, model.vae, model.text_encoder))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_allowed_pickle_still_refuses_code(tmp_path):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Exploit()}, f, protocol=2)
    with pytest.raises(ValueError, match=r"evil\.ckpt: cannot read pickled checkpoint"):
        loader.load_checkpoint(info_for(path), allow_pickle=True)


def test_other_extensions_are_refused(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(ValueError, match=r"model\.gguf: unsupported checkpoint type"):
        loader.load_checkpoint(info_for(path))


# --- VAE files ----------------------------------------------------------------------------------------------------

def test_vae_swap_and_restore():
    model = loader.load_checkpoint(info_for(TINY_V1))
    own = model.vae
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        before = own.decode(latents).sample
        external = loader.load_vae(TINY_VAE)
        model.apply_vae(external, "serena-tiny-vae.safetensors")
        assert model.vae is external and model.vae_name == "serena-tiny-vae.safetensors"
        swapped = model.vae.decode(latents).sample
        assert swapped.shape == before.shape and not torch.equal(swapped, before)
        model.apply_vae(None)
        assert model.vae is own and model.vae_name is None
        assert torch.equal(model.vae.decode(latents).sample, before)


def test_apply_vae_moves_a_vae_to_the_model_dtype():
    model = loader.load_checkpoint(info_for(TINY_V1))
    vae = loader.load_vae(TINY_VAE, dtype=torch.float16)
    model.apply_vae(vae, "serena-tiny-vae.safetensors")
    assert model.vae.dtype == torch.float32


@pytest.mark.parametrize("layout", ["a1111", "first_stage_model", "diffusers"])
def test_vae_file_layouts_load_identically(tmp_path, components, layout):
    vae = components[1]
    metadata = {loader.METADATA_KEY: json.dumps(writer.component_configs(vae=vae))}
    state = {"a1111": writer.vae_to_ldm(vae),
             "first_stage_model": {loader.VAE_PREFIX + k: v for k, v in writer.vae_to_ldm(vae).items()},
             "diffusers": vae.state_dict()}[layout]
    path = tmp_path / f"{layout}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    loaded = loader.load_vae(str(path))
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    assert_same_weights(vae, loaded)
    with torch.inference_mode():
        assert_same_outputs({"decode": vae.decode(latents).sample}, {"decode": loaded.decode(latents).sample})


def test_vae_file_that_is_not_a_vae_raises(tmp_path):
    path = tmp_path / "notvae.safetensors"
    save_file({"model.diffusion_model.out.2.bias": torch.zeros(4)}, str(path))
    with pytest.raises(ValueError, match=r"notvae\.safetensors: not a VAE file"):
        loader.load_vae(str(path))
