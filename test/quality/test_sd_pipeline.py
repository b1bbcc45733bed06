"""Pieces of the sampling loop (``modules.sd_pipeline``) that have their own contract."""

from __future__ import annotations

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
