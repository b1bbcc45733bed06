"""SD1.x and SDXL inpainting checkpoints (9-channel UNets): detection at load, A1111's mask conditioning at every UNet
call, the ``inpainting_mask_weight`` option and what the infotext and ``info`` say (``modules.inpaint_conditioning``).

The checkpoint is the tool's tiny random one (``tools/make_tiny_checkpoint.py --inpainting``), built once for the
module; images are 64x64 and runs take two steps.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import io
import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image
from safetensors.torch import save_file

from modules import inpaint_conditioning, jobs, paths, sd_models_loader as loader, sd_models_xl, sd_pipeline
from modules import shared_options
from modules.checkpoint_info import CheckpointInfo
from modules.infotext import infotext_to_overrides
from modules.processing import GenerationSettings

ROOT = paths.script_path
SIZE, LATENT = 64, 8


def info_for(path) -> CheckpointInfo:
    return CheckpointInfo(str(path), os.path.basename(str(path)), "0123456789" + "b" * 54)


@pytest.fixture(scope="module")
def inpaint_files(tmp_path_factory):
    """``(single file, diffusers folder)`` of the tiny inpainting checkpoint, written by the tool."""
    spec = importlib.util.spec_from_file_location("make_tiny_checkpoint",
                                                  os.path.join(ROOT, "tools", "make_tiny_checkpoint.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path_factory.mktemp("inpaint")
    assert tool.main(["--out-dir", str(out), "--inpainting"]) == 0
    folder = out / "models" / "Stable-diffusion"
    return folder / "serena-tiny-inpaint.safetensors", folder / "serena-tiny-inpaint"


@pytest.fixture(scope="module")
def inpaint_model(inpaint_files):
    return loader.load_checkpoint(info_for(inpaint_files[0]))


@pytest.fixture
def on_inpaint_model(serve_model, inpaint_model):
    """Every generation, whatever checkpoint it asks for, runs on the tiny inpainting model."""
    return serve_model(inpaint_model)


@contextlib.contextmanager
def unet_inputs(model):
    """The ``sample`` tensor of every UNet call made inside the block."""
    seen = []
    handle = model.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        yield seen
    finally:
        handle.remove()


def init_image() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def left_half_mask() -> Image.Image:
    """White (repaint) on the left half: whole latent cells, so any sane downscale gives columns 0-3."""
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[:, : SIZE // 2] = 255
    return Image.fromarray(mask)


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]


def encode(model, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.vae.encode(x).latent_dist.mean * model.vae.config.scaling_factor


def request(weight=1.0, **kw) -> sd_pipeline.SamplingRequest:
    fields = dict(prompts=("a cat",), negative_prompts=("",), seeds=(5,), subseeds=(5,), subseed_strength=0.0,
                  width=SIZE, height=SIZE, sampler_name="Euler", scheduler=None, steps=2, cfg_scale=7.0, eta=None,
                  settings=GenerationSettings(inpainting_mask_weight=weight))
    return sd_pipeline.SamplingRequest(**{**fields, **kw})


TXT = {"prompt": "a cat", "width": SIZE, "height": SIZE, "steps": 2, "seed": 11, "sampler_name": "Euler"}
LEFT = torch.zeros(LATENT, LATENT)
LEFT[:, : LATENT // 2] = 1


# -- loading -------------------------------------------------------------------------------------------------------

def test_the_inpainting_file_and_folder_load_with_nine_input_channels(inpaint_files, inpaint_model):
    file, folder = inpaint_files
    from_folder = loader.load_checkpoint(info_for(folder))
    for model in (inpaint_model, from_folder):
        assert model.family.name == "sd1-inpaint" and model.facts.family == "sd1-inpaint"
        assert (model.unet.config.in_channels, model.unet.config.out_channels) == (9, 4)
        assert model.unet.conv_in.weight.shape[1] == 9
        assert inpaint_conditioning.takes_image_conditioning(model)
    # The file holds fp16 weights, the folder fp32: the same weights, rounded once.
    folder_weights, file_weights = from_folder.unet.state_dict(), inpaint_model.unet.state_dict()
    assert all(torch.equal(folder_weights[k].half().float(), file_weights[k]) for k in file_weights)
    for path in (file, folder):  # the header-only check passes too, with 4-channel latents
        assert loader.inspect_checkpoint(str(path)).latent_channels == 4


def _rewritten(file, tmp_path, name, edit_state=None, edit_unet_config=None):
    state, metadata = loader.read_state_dict(str(file))
    configs = json.loads(metadata[loader.METADATA_KEY])
    if edit_state:
        edit_state(state)
    if edit_unet_config:
        edit_unet_config(configs["unet"])
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in state.items()}, str(path),
              metadata={loader.METADATA_KEY: json.dumps(configs)})
    return path


def test_the_channel_count_comes_from_conv_in_and_unknown_counts_are_refused(inpaint_files, tmp_path):
    file = inpaint_files[0]
    # A config that says 4 (as the SD1.5 default config does for a foreign file): the tensor's shape decides. The
    # inspection runs the load's steps on the meta device, strictly: a 4-channel UNet would not fit the tensor.
    plain_config = _rewritten(file, tmp_path, "says-four.safetensors",
                              edit_unet_config=lambda c: c.update(in_channels=4))
    assert loader.inspect_checkpoint(str(plain_config)).family == "sd1-inpaint"

    key = loader.UNET_PREFIX + "input_blocks.0.0.weight"
    cases = {8: r"pix2pix\.safetensors is an SD1\.x InstructPix2Pix checkpoint, which Serena cannot run yet",
             5: r"odd\.safetensors: its UNet takes 5 input channels; "
                r"Serena runs 4 \(SD1\.x, SDXL\), 9 \(SD1\.x, SDXL inpainting\)"}
    for channels, message in cases.items():
        name = "pix2pix.safetensors" if channels == 8 else "odd.safetensors"
        path = _rewritten(file, tmp_path, name, edit_state=lambda s: s.__setitem__(
            key, torch.zeros(16, channels, 3, 3, dtype=torch.float16)))
        for check in (lambda: loader.load_checkpoint(info_for(path)), lambda: loader.inspect_checkpoint(str(path))):
            with pytest.raises(ValueError, match=message):
                check()


# -- the conditioning ------------------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), weight=st.floats(0, 1))
def test_the_masked_image_fades_only_the_masked_area_by_the_weight(seed, weight):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    mask = (torch.rand(1, 1, 16, 16, generator=g) > 0.5).float()
    out = inpaint_conditioning.masked_pixels(image, mask, weight)
    keep = mask.expand_as(image) == 0
    assert torch.equal(out[keep], image[keep])
    torch.testing.assert_close(out[~keep], image[~keep] * (1 - weight))


def test_the_mask_is_rounded_inverted_on_request_and_taken_to_latent_size_by_cells():
    soft = Image.fromarray(np.tile(np.linspace(0, 255, SIZE).astype(np.uint8), (SIZE, 1)))
    mask = inpaint_conditioning.pixel_mask(soft, SIZE, SIZE, invert=False)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(inpaint_conditioning.pixel_mask(soft, SIZE, SIZE, invert=True), 1 - mask)
    assert torch.equal(inpaint_conditioning.pixel_mask(None, SIZE, SIZE, invert=False), torch.ones(1, 1, SIZE, SIZE))
    soft_kept = inpaint_conditioning.pixel_mask(soft, SIZE, SIZE, invert=False, round_mask=False)
    assert len(soft_kept.unique()) > 2 and torch.equal(soft_kept.round(), mask)
    channels = inpaint_conditioning.concat_channels(inpaint_conditioning.pixel_mask(left_half_mask(), SIZE, SIZE,
                                                                                    False),
                                                    torch.zeros(3, 4, LATENT, LATENT))
    assert channels.shape == (3, 5, LATENT, LATENT) and all(torch.equal(c[0], LEFT) for c in channels)


def test_the_mask_weight_sets_how_much_of_the_image_the_model_sees(inpaint_model):
    image, mask = init_image(), left_half_mask()
    x = pixels(image)
    m = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255)[None, None]
    with torch.inference_mode():
        got = {w: sd_pipeline.prepare_image_conditioning(
            request(w, init_images=(image,), denoising_strength=0.75, mask=mask), inpaint_model) for w in (0, .5, 1)}
    expected = {0: encode(inpaint_model, x), 0.5: encode(inpaint_model, x * (1 - 0.5 * m)),
                1: encode(inpaint_model, x * (1 - m))}
    for w, cond in got.items():
        assert cond.shape == (1, 5, LATENT, LATENT) and torch.equal(cond[0, 0], LEFT)
        torch.testing.assert_close(cond[:, 1:], expected[w], rtol=1e-4, atol=1e-4)
    # 0 shows the model the whole image (its img2img latents); 1 hides the masked half.
    assert (got[0][:, 1:] - got[1][:, 1:]).abs().max() > 0.05
    # Hires fix's latent path: the image comes from the latents, with no mask (all ones)
    latents = encode(inpaint_model, x)
    with torch.inference_mode():
        cond = sd_pipeline.prepare_image_conditioning(request(0.5, init_latents=latents, denoising_strength=0.5),
                                                      inpaint_model)
        decoded = inpaint_model.vae.decode(latents / inpaint_model.vae.config.scaling_factor).sample
    assert torch.equal(cond[0, 0], torch.ones(LATENT, LATENT))
    torch.testing.assert_close(cond[:, 1:], encode(inpaint_model, decoded * 0.5), rtol=1e-4, atol=1e-4)


def test_a_four_channel_model_gets_no_conditioning(tiny_model):
    assert not inpaint_conditioning.takes_image_conditioning(tiny_model)
    assert sd_pipeline.prepare_image_conditioning(request(init_images=(init_image(),), mask=left_half_mask(),
                                                          denoising_strength=0.75), tiny_model) is None


def test_outside_the_mask_the_latents_stay_the_init_images(inpaint_model):
    image, mask = init_image(), left_half_mask()
    with torch.inference_mode():
        out = sd_pipeline.sample_latents(request(init_images=(image,), denoising_strength=0.75, mask=mask),
                                         inpaint_model, jobs.State())
        init = sd_pipeline.images_to_latents([image], inpaint_model.vae, SIZE, SIZE, inpaint_model.device,
                                             inpaint_model.dtype).float()
    # The blend's mask is downscaled bicubically (sd_pipeline.mask_to_latent): columns 3 and 4 lie at the edge.
    assert torch.equal(out[..., 5:], init[..., 5:])
    assert (out[..., :3] - init[..., :3]).abs().max() > 0.05


# -- through the API -----------------------------------------------------------------------------------------------

def test_inpaint_through_the_api_feeds_the_unet_mask_and_masked_image(on_inpaint_model, api_client):
    model, image = on_inpaint_model, init_image()
    with unet_inputs(model) as seen:
        # Masked content "original": the image the model is shown is the init image (A1111's default "fill"
        # repaints the masked area, and the blurred edge beside it, before the conditioning is made from it)
        r = api_client.post("/sdapi/v1/img2img", json=dict(TXT, init_images=[b64(image)], mask=b64(left_half_mask()),
                                                           denoising_strength=0.75, inpainting_fill=1))
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["is_using_inpainting_conditioning"] is True
    assert "Conditional mask weight: 1.0" in info["infotexts"][0]
    # Pasted back over the original (modules.img2img_inputs): beyond the blurred edge, the init image's pixels
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB"))
    assert np.array_equal(out[:, 48:], np.asarray(image)[:, 48:])
    assert not np.array_equal(out[:, :16], np.asarray(image)[:, :16])
    masked = encode(model, pixels(image) * (1 - LEFT.repeat_interleave(8, 0).repeat_interleave(8, 1)))
    assert seen and all(x.shape == (2, 9, LATENT, LATENT) for x in seen)
    for x in seen:  # both CFG halves, every step: channel 4 is the mask, 5-8 the masked image's latents
        assert torch.equal(x[0, 4:], x[1, 4:]) and torch.equal(x[0, 4], LEFT)
        torch.testing.assert_close(x[:1, 5:], masked, rtol=1e-4, atol=1e-4)


def test_txt2img_on_an_inpainting_model_shows_it_an_all_gray_image(on_inpaint_model, api_client):
    model = on_inpaint_model
    with unet_inputs(model) as seen:
        r = api_client.post("/sdapi/v1/txt2img", json=dict(TXT, override_settings={"inpainting_mask_weight": 0.25}))
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["is_using_inpainting_conditioning"] is True
    assert "Conditional mask weight: 0.25" in info["infotexts"][0]
    # Pasted back, the infotext sets the option for that generation
    assert infotext_to_overrides({"Conditional mask weight": "0.25"}, shared_options.options_templates) == {
        "inpainting_mask_weight": 0.25}
    gray = encode(model, torch.zeros(1, 3, SIZE, SIZE))
    assert seen and all(x.shape == (2, 9, LATENT, LATENT) for x in seen)
    for x in seen:
        assert torch.equal(x[:, 4], torch.ones(2, LATENT, LATENT))
        torch.testing.assert_close(x[:, 5:], gray.expand(2, -1, -1, -1), rtol=1e-4, atol=1e-4)
    bad = api_client.post("/sdapi/v1/txt2img", json=dict(TXT, override_settings={"inpainting_mask_weight": 1.5}))
    assert bad.status_code == 422 and "inpainting_mask_weight" in bad.text


def test_a_four_channel_model_is_unaffected(real_model, api_client):
    with unet_inputs(real_model) as seen:
        bodies = [api_client.post("/sdapi/v1/img2img", json=dict(TXT, init_images=[b64(init_image())],
                                                                 mask=b64(left_half_mask()))).json()
                  for _ in range(2)]
    assert seen and all(x.shape == (2, 4, LATENT, LATENT) for x in seen)
    assert bodies[0]["images"] == bodies[1]["images"]
    info = json.loads(bodies[0]["info"])
    assert info["is_using_inpainting_conditioning"] is False
    assert "Conditional mask weight" not in info["infotexts"][0]


# -- SDXL inpainting (issue 17 item 4): the same conditioning, through SDXL's loader and pipeline ---------------------

@pytest.fixture(scope="module")
def xl_inpaint_file(tmp_path_factory):
    from tools import make_tiny_sdxl
    out = tmp_path_factory.mktemp("xl-inpaint")
    assert make_tiny_sdxl.main(["--out-dir", str(out), "--inpainting"]) == 0
    return out / "models" / "Stable-diffusion" / make_tiny_sdxl.INPAINT_FILE


@pytest.fixture(scope="module")
def xl_inpaint_model(xl_inpaint_file):
    return sd_models_xl.load_checkpoint(info_for(xl_inpaint_file))


def test_an_sdxl_inpainting_file_loads_with_nine_channels_whatever_its_config_says(xl_inpaint_file, xl_inpaint_model,
                                                                                   tmp_path):
    model = xl_inpaint_model
    assert model.family.name == "sdxl-inpaint" and model.family.runnable and not model.is_refiner
    assert (model.unet.conv_in.weight.shape[1], model.unet.config.out_channels) == (9, 4)
    assert inpaint_conditioning.takes_image_conditioning(model)
    assert model.facts.family == "sdxl-inpaint" and model.facts.latent_channels == 4
    says_four = _rewritten(xl_inpaint_file, tmp_path, "xl-says-four.safetensors",
                           edit_unet_config=lambda c: c.update(in_channels=4))
    assert sd_models_xl.inspect_checkpoint(str(says_four)).family == "sdxl-inpaint"  # strict, on the meta device
    odd = _rewritten(xl_inpaint_file, tmp_path, "xl-odd.safetensors", edit_state=lambda s: s.__setitem__(
        loader.UNET_PREFIX + "input_blocks.0.0.weight", torch.zeros(32, 5, 3, 3, dtype=torch.float16)))
    with pytest.raises(ValueError, match=r"xl-odd\.safetensors: its UNet takes 5 input channels"):
        sd_models_xl.inspect_checkpoint(str(odd))


def test_sdxl_inpaint_through_the_api_keeps_the_pixels_outside_the_mask(serve_model, xl_inpaint_model, api_client):
    model, image = serve_model(xl_inpaint_model), init_image()
    with unet_inputs(model) as seen:
        r = api_client.post("/sdapi/v1/img2img", json=dict(TXT, init_images=[b64(image)], mask=b64(left_half_mask()),
                                                           denoising_strength=0.75, inpainting_fill=1))
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["info"])["is_using_inpainting_conditioning"] is True
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB"))
    assert np.array_equal(out[:, 48:], np.asarray(image)[:, 48:])
    assert not np.array_equal(out[:, :16], np.asarray(image)[:, :16])
    masked = encode(model, pixels(image) * (1 - LEFT.repeat_interleave(8, 0).repeat_interleave(8, 1)))
    assert seen and all(x.shape == (2, 9, LATENT, LATENT) for x in seen)
    for x in seen:  # channel 4 the mask, 5-8 the masked image's latents (the SDXL VAE's scale)
        assert torch.equal(x[0, 4], LEFT) and torch.equal(x[1, 4], LEFT)
        torch.testing.assert_close(x[:1, 5:], masked, rtol=1e-4, atol=1e-4)


def test_txt2img_on_an_sdxl_inpainting_model_shows_it_an_all_gray_image(serve_model, xl_inpaint_model, api_client):
    model = serve_model(xl_inpaint_model)
    with unet_inputs(model) as seen:
        bodies = [api_client.post("/sdapi/v1/txt2img", json=dict(TXT, width=SIZE, height=SIZE)) for _ in range(2)]
    assert all(b.status_code == 200 for b in bodies), bodies[0].text
    assert bodies[0].json()["images"] == bodies[1].json()["images"]
    assert "Conditional mask weight: 1.0" in json.loads(bodies[0].json()["info"])["infotexts"][0]
    gray = encode(model, torch.zeros(1, 3, SIZE, SIZE))
    assert seen and all(x.shape == (2, 9, LATENT, LATENT) for x in seen)
    for x in seen:
        assert torch.equal(x[:, 4], torch.ones(2, LATENT, LATENT))
        torch.testing.assert_close(x[:, 5:], gray.expand(2, -1, -1, -1), rtol=1e-4, atol=1e-4)
