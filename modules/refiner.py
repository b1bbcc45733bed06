"""The refiner (A1111's ``refiner_checkpoint`` and ``refiner_switch_at``): a second checkpoint that takes over the
last part of sampling, inside one generation.

The sampling loop (``sd_pipeline.Denoiser``) watches how far the noise has come down. At the first step whose
noise level's timestep ``t`` has ``(999 - t) / 1000 >= refiner_switch_at`` (A1111's switch by model timesteps;
``None`` switches at the first step), it calls ``Switch.enter``: a nested
``temporary_opts({"sd_model_checkpoint": refiner_checkpoint})`` opens, so the seam validates it, the core's hook
switches the model (from the loaded-models cache when it is there) and every extension's enter/exit hooks fire at
that depth; the loop continues on the refiner's UNet with the refiner's conditioning (SDXL's refiner: bigG alone,
aesthetic scores), and its VAE decodes. The override closes when the batch's sampling ends, so the base model is
back for the next batch and the next request. The batch's extra networks (its LoRAs) are activated on the refiner
for the rest of the pass (``extra_networks.for_pass``), as A1111 applies them to whatever model runs; what does not
fit the refiner is a warning of the network's type. A tiled request tiles on the refiner too (its convolutions
pad circularly until the pass ends, then are as they were). The infotext's ``Refiner`` and ``Refiner switch at`` are
written when the switch happens (A1111: into ``extra_generation_params``). With Hires fix, the refiner takes over
in the second pass (A1111's default ``hires_fix_refiner_pass``, "second pass").
"""

from __future__ import annotations

import contextlib
import os

from modules import extra_networks, sd_models, shared, tiling
from modules.runtime_utils import temporary_opts

NO_REFINER = (None, "", "None", "none")  # A1111's spellings of "no refiner"
DEFAULT_SWITCH_AT = 0.8  # the UI's slider start (A1111)


def switches(p) -> bool:
    return p.refiner_checkpoint not in NO_REFINER


def check_inputs(p) -> None:
    """Raise ``ValueError`` naming the refiner field that cannot run (a front door turns it into a 422)."""
    at = p.refiner_switch_at
    if at is not None and (isinstance(at, bool) or not isinstance(at, (int, float)) or not 0 <= at <= 1):
        raise ValueError(f"`refiner_switch_at` must be between 0 and 1, got {at!r}")
    if switches(p):
        # The check the seam makes when the switch enters its override, made before anything queues.
        check = shared.opts.check({"sd_model_checkpoint": p.refiner_checkpoint}, for_override=True)
        if check.errors:
            raise ValueError(f"`refiner_checkpoint`: {check.errors['sd_model_checkpoint']}")


def infotext_params(p) -> dict:
    """A1111's ``Refiner: name [hash]`` (its short title) and ``Refiner switch at``."""
    info = sd_models.resolve_checkpoint(p.refiner_checkpoint)
    return {"Refiner": f"{os.path.splitext(info.name)[0]} [{info.shorthash}]", "Refiner switch at": p.refiner_switch_at}


class Switch:
    """The refiner's nested checkpoint override for one sampling pass, as the pipeline uses it: ``with switch:``
    around the pass, ``switch.enter()`` at the switch step (returns the refiner model, then in ``model``), left
    when the ``with`` block ends. ``switch_at``: ``refiner_switch_at``."""

    def __init__(self, p):
        self.p = p
        self.switch_at = p.refiner_switch_at
        self.model = None
        self._stack = contextlib.ExitStack()

    def enter(self):
        # Written when the switch happens, as A1111 does: a refiner that never takes over is not in the infotext.
        self.p.extra_generation_params.update(infotext_params(self.p))
        self._stack.enter_context(temporary_opts({"sd_model_checkpoint": self.p.refiner_checkpoint}, p=self.p,
                                                 owner="refiner"))
        self.model = sd_models.current_model(self.p.warnings)
        # A1111 applies the active networks to whatever model runs: the batch's tags, on the refiner now
        self._stack.enter_context(extra_networks.for_pass(self.p, self.model))
        # The base model's padding is the pipeline's; the refiner's sampling and decoding tile as the request asks
        self._stack.enter_context(tiling.padding_for(self.model, self.p.uses_tiling()))
        return self.model

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.model = None
        self._stack.close()


def switch_for(p, model) -> Switch | None:
    """The refiner switch of ``p`` running on ``model``, or ``None``: no refiner, or the refiner is the model
    already (A1111 switches nothing then)."""
    if not switches(p) or sd_models.resolve_checkpoint(p.refiner_checkpoint) == model.info:
        return None
    return Switch(p)
