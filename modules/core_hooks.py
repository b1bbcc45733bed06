"""The core's own hook implementations, registered first like any extension's (seam rule 12).

Always-on scripts (``modules.scripts``) get their ``before_process``/``process``/``postprocess`` from these hooks,
with the arguments the request gave them, so they run at the points extensions' hooks do.

A checkpoint or VAE override switches the loaded model on enter, from the loaded-models cache when possible.
Switching back is lazy: the next generation that needs the stored model switches (``sd_models.current_model``),
so N consecutive generations with the same checkpoint override cost exactly one load.
"""

from __future__ import annotations

from modules import scripts, sd_models
from modules.hookspecs import hookimpl

MODEL_KEYS = ("sd_model_checkpoint", "sd_vae")


@hookimpl
def on_opts_override_enter(overrides):
    if any(k in overrides for k in MODEL_KEYS):
        try:
            sd_models.current_model()
        except sd_models.CheckpointLoadError:
            # The models in memory are as they were. The generation's own model step meets the same error and
            # reports it as the request's (HTTP 422); failing here would make it a hook failure instead.
            pass


@hookimpl
def on_before_process(p):
    scripts.call_alwayson("before_process", p)


@hookimpl
def on_process(p):
    scripts.call_alwayson("process", p)


@hookimpl
def on_postprocess(p, processed):
    scripts.call_alwayson("postprocess", p, processed)
