"""Pieces of the sampling loop (``modules.sd_pipeline``) that have their own contract."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings, strategies as st

from modules.sd_pipeline import PromptEncoder, rescale_guidance


def preds(seed: int, batch: int = 3):
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(batch, 4, 8, 8, generator=g)
    uncond = torch.randn(batch, 4, 8, 8, generator=g) * 0.5
    return cond, uncond + 7.0 * (cond - uncond)


def test_zero_leaves_guidance_unchanged():
    cond, guided = preds(0)
    assert torch.equal(rescale_guidance(guided, cond, 0.0), guided)


def test_one_gives_each_image_the_conditional_deviation():
    cond, guided = preds(1)
    out = rescale_guidance(guided, cond, 1.0)
    assert torch.allclose(out.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)), rtol=1e-5)
    # Only the scale changes: the direction of each image's guided prediction is kept.
    cos = torch.nn.functional.cosine_similarity(out.flatten(1), guided.flatten(1))
    assert torch.allclose(cos, torch.ones(3), atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), phi=st.floats(0, 1))
def test_blend_is_linear_in_phi_and_per_image(seed, phi):
    cond, guided = preds(seed)
    out = rescale_guidance(guided, cond, phi)
    full = rescale_guidance(guided, cond, 1.0)
    assert torch.allclose(out, phi * full + (1 - phi) * guided, atol=1e-5)
    # An image's result does not depend on the others in its batch.
    alone = rescale_guidance(guided[1:2], cond[1:2], phi)
    assert torch.allclose(out[1:2], alone, atol=1e-6)


@pytest.mark.parametrize("phi", [0.3, 0.7])
def test_partial_rescale_moves_the_deviation_toward_the_conditional(phi):
    cond, guided = preds(2)
    before = (guided.std(dim=(1, 2, 3)) - cond.std(dim=(1, 2, 3))).abs()
    after = (rescale_guidance(guided, cond, phi).std(dim=(1, 2, 3)) - cond.std(dim=(1, 2, 3))).abs()
    assert (after < before).all()


class _RecordingUNet:
    """Returns a fixed v prediction and records what the sampler fed it."""

    def __init__(self, v):
        self.v, self.calls = v, []

    def __call__(self, x, t, encoder_hidden_states):
        self.calls.append((x.clone(), t.clone()))
        return SimpleNamespace(sample=self.v.expand_as(x))


class _Encoder:
    def encode(self, text):
        return torch.zeros(77, 8)

    conditioning = PromptEncoder.conditioning  # SD1.x's: every text encoded, no added conditioning


def _denoiser(v, guidance_rescale=0.0):
    from modules import sd_schedules
    from modules.sd_pipeline import Denoiser

    config = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
              "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    unet = _RecordingUNet(v)
    model = SimpleNamespace(unet=unet, dtype=torch.float32, guidance_rescale=guidance_rescale)
    p = SimpleNamespace(steps=4, cfg_scale=3.0)
    state = SimpleNamespace(interrupted=False, skipped=False, sampling_step=0)
    schedule = sd_schedules.ModelSchedule(config)
    return Denoiser(p, model, schedule, _Encoder(), [[[4, "a"]]], [[[4, ""]]], 4, state), unet, schedule, state


def test_denoiser_feeds_the_unet_c_in_x_at_the_timestep_of_sigma():
    v = torch.randn(1, 4, 2, 2)
    denoiser, unet, schedule, _ = _denoiser(v)
    sigma = float(schedule.sigmas[500])
    x = torch.randn(1, 4, 2, 2)
    denoised = denoiser(x, sigma, 0)
    model_in, t = unet.calls[0]
    assert torch.allclose(model_in, torch.cat([x, x]) / (sigma**2 + 1) ** 0.5)
    assert torch.allclose(t, torch.full((2,), 500.0))
    # Same v for both halves, so CFG leaves it; v-prediction: x0 = c_skip * x + c_out * v.
    assert torch.allclose(denoised, x / (sigma**2 + 1) - v * sigma / (sigma**2 + 1) ** 0.5, atol=1e-6)


def test_denoiser_mask_keeps_the_init_latents_and_interrupt_raises():
    from modules.sd_pipeline import _Interrupted

    denoiser, _, schedule, state = _denoiser(torch.randn(1, 4, 2, 2))
    denoiser.init_latents = torch.full((1, 4, 2, 2), 0.25)
    denoiser.mask = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    out = denoiser(torch.randn(1, 4, 2, 2), 2.0, 1)
    assert torch.equal(out[..., 1], torch.full((1, 4, 2), 0.25))
    assert state.sampling_step == 1
    state.interrupted = True
    with pytest.raises(_Interrupted):
        denoiser(torch.randn(1, 4, 2, 2), 1.0, 2)


def _img2img(**kw):
    from PIL import Image

    from modules import processing

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (8, 8, 40, 40))
    fields = dict(prompt="a red circle", steps=3, width=64, height=64, seed=4, subseed=9, subseed_strength=0.3,
                  init_images=[Image.new("RGB", (64, 64), (200, 30, 30))], mask=mask, inpainting_mask_invert=1,
                  denoising_strength=0.5, do_not_save_samples=True)
    return processing.StableDiffusionProcessingImg2Img(**dict(fields, **kw))


def _request_of(p):
    return p.sampling_request(p.all_prompts, p.all_negative_prompts, p.all_seeds, p.all_subseeds)


def test_the_request_is_frozen_and_img2img_is_what_it_holds(data_dir):
    import dataclasses

    from PIL import ImageOps

    from modules import processing

    txt = processing.StableDiffusionProcessingTxt2Img(prompt="a", negative_prompt="b", seed=2, batch_size=2)
    txt.init_seeds()
    request = _request_of(txt)
    assert (request.prompts, request.negative_prompts, request.seeds) == (("a", "a"), ("b", "b"), (2, 3))
    assert request.init_images == () and request.mask is None and request.settings is txt.settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.steps = 3
    img = _img2img(mask_blur=0, inpainting_fill=1, inpaint_full_res=False)
    img.init_seeds()
    request = _request_of(img)
    # The request holds the prepared inputs (modules.img2img_inputs): here the same pixels, the mask inverted
    assert [i.tobytes() for i in request.init_images] == [i.tobytes() for i in img.init_images]
    assert request.mask.tobytes() == ImageOps.invert(img.mask).tobytes()
    assert request.denoising_strength == 0.5 and request.inpainting_mask_invert is False
    with pytest.raises(ValueError, match="one entry per image"):
        dataclasses.replace(request, seeds=()).check_inputs()


def test_the_request_alone_gives_the_generations_pixels(real_model):
    """The pipeline reads nothing of ``p``: the request a generation built, sampled with no ``p`` around, gives
    the same pixels (masked img2img with a variation seed: the request with the most fields), once pasted back
    over the original as the generation does."""
    from modules import img2img_inputs, jobs, processing, sd_pipeline

    p = _img2img()
    processed = processing.process_images(p)
    images = sd_pipeline.sample_batch(_request_of(p), real_model, jobs.state)
    assert img2img_inputs.paste_back(images[0], p.inputs, 0).tobytes() == processed.images[0].tobytes()
