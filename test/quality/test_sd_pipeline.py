"""Pieces of the sampling loop (``modules.sd_pipeline``) that have their own contract."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings, strategies as st

from modules.sd_pipeline import rescale_guidance


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
