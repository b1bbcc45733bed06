"""Seamless tiling (A1111's ``tiling``): circular padding in the UNet's and the VAE's convolutions, for one batch.

With circular padding a convolution at the left edge sees the right edge's pixels as its neighbours (and the top
sees the bottom), so the image wraps: placed side by side, copies of it join without a seam.

The padding mode is state of the shared, cached model, so it is changed the way the override seam changes
settings (``docs/extensions/seam.md``): ``padding_for(model, tiling)`` sets it on entry and puts back exactly what
it found in ``finally``, on success, error and interrupt alike. A nested generation (an extension's hook that runs
``process_images`` inside another) gets its own modes: a tiled one inside an untiled one tiles, an untiled one
inside a tiled one does not, and the outer one continues with its own modes.

Threads: generations run one at a time (``modules.jobs.run_job`` holds ``queue_lock`` around each; the API, the
UI and the CLI all use it), so two generations never change one model's modes at once. An extension that calls
``process_images`` from a thread of its own, outside the queue, shares the model (its checkpoint and settings
too) with whatever runs then; that is not supported, for tiling as for overrides.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

import torch

CIRCULAR = "circular"

# id(conv) -> the padding mode it has when no generation tiles, for every conv a ``padding_for`` has changed and
# not yet restored. Filled and emptied only under the queue lock (see above). It lets an untiled generation nested
# in a tiled one find the modes to run with, and makes an untiled generation with nothing tiled cost one check.
_untiled_modes: dict[int, str] = {}


def convolutions(model) -> list[torch.nn.Conv2d]:
    """Every ``Conv2d`` of ``model``'s UNet and VAE (A1111 changes the same ones: the text encoder has none)."""
    return [m for part in (model.unet, model.vae) for m in part.modules() if isinstance(m, torch.nn.Conv2d)]


@contextmanager
def padding_for(model, tiling: bool):
    """Within the block, ``model``'s convolutions pad circularly when ``tiling``, else as they do untiled; on exit,
    whatever happened inside, each has the mode it had on entry."""
    if not tiling and not _untiled_modes:
        yield  # nothing tiles: the modes are the untiled ones already
        return
    convs = convolutions(model)
    entered = [conv.padding_mode for conv in convs]
    owned = [id(conv) for conv in convs if id(conv) not in _untiled_modes]
    try:
        for conv, mode in zip(convs, entered):
            _untiled_modes.setdefault(id(conv), mode)
            conv.padding_mode = CIRCULAR if tiling else _untiled_modes[id(conv)]
        yield
    finally:
        for conv, mode in zip(convs, entered):
            conv.padding_mode = mode
        for key in owned:  # the outermost block that changed a conv forgets it again
            _untiled_modes.pop(key, None)


def with_request_padding(func):
    """``func(request, model, ...)`` run inside ``padding_for(model, request.tiling)``: the whole batch (img2img's
    encode, sampling, decode) pads as its request asks, and the model is as before once it returns or raises."""
    @functools.wraps(func)
    def run(request, model, *args, **kwargs):
        with padding_for(model, request.tiling):
            return func(request, model, *args, **kwargs)
    return run
