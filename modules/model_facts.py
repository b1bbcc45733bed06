"""``ModelFacts``: what a checkpoint can do, as its inspection found.

A leaf, importing neither torch nor diffusers: the options and the page read these facts, and facts kept across
starts (``cache.json``) are rebuilt from JSON without loading the model stack.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFacts:
    """What a checkpoint (or VAE) can do, which some options depend on.

    ``text_encoder_layers`` bounds clip skip (``CLIP_stop_at_last_layers``); ``latent_channels`` is what a VAE
    must produce and consume to work with the UNet. ``None`` where it does not apply (a VAE has no text encoder).
    ``native_size`` is the image side the checkpoint was made for (UNet sample size times the VAE's factor) and
    ``cfg_scale`` the CFG scale it recommends (``serena_config`` sampling metadata), both ``None`` when unknown;
    ``modules.sd_models.checkpoint_defaults`` turns them into a generation's defaults. ``text_encoder_widths``
    holds the hidden size of each text encoder, in order (empty for a VAE): a textual inversion embedding fits a
    checkpoint whose widths are its vectors' (``modules.textual_inversion``). ``family`` is the
    ``modules.model_families`` name of the architecture (``"sd1"``, ``"sd1-inpaint"``…), ``None`` for a VAE.
    """

    text_encoder_layers: int | None
    latent_channels: int
    native_size: int | None = None
    cfg_scale: float | None = None
    text_encoder_widths: tuple[int, ...] = ()
    family: str | None = None

    def __post_init__(self):
        # Facts kept in cache.json come back from JSON with a list here.
        object.__setattr__(self, "text_encoder_widths", tuple(self.text_encoder_widths))
