"""What the txt2img tab's form sends, for tests that drive the UI's generate path without a browser."""

from __future__ import annotations


def form_values(**changes) -> dict:
    """The form's values by name, a 64 px two-step Euler request unless ``changes`` say otherwise."""
    values = dict(prompt="a cat", negative_prompt="", sampler="Euler", scheduler="Automatic", steps=2, cfg_scale=7,
                  width=64, height=64, seed=1, batch_count=1, batch_size=1, denoising_strength=0.75,
                  override_settings=[])
    values.update(changes)
    return values
