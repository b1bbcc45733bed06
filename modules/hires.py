"""Hires fix: txt2img's second pass at a larger size (A1111's ``StableDiffusionProcessingTxt2Img.sample_hr_pass``).

The first pass samples at ``width`` x ``height``. Its latents are then upscaled, either in latent space (the
``LATENT_UPSCALE_MODES``, torch's ``interpolate`` with A1111's modes) or by decoding, running an image upscaler of
``modules.upscalers`` and letting the second pass encode the result. The second pass is an img2img pass at the
target size, noised to ``denoising_strength``, with the same seeds: a second ``SamplingRequest`` run by the same
``sd_pipeline`` functions as every other batch.

``hr_checkpoint_name`` runs the second pass under a nested ``temporary_opts({"sd_model_checkpoint": ...})``: the
seam validates it, the core's hook switches the model (from the loaded-models cache when it is there), every
extension's enter/exit hooks fire at that depth, and the outer checkpoint is back when the block ends.

The second pass's extra networks are its prompt's (A1111's ``hr_extra_network_data``): the tags of ``hr_prompt``,
or the first pass's when it is empty. When they or the model differ from the first pass's, they are activated
for the second pass alone (``extra_networks.for_pass``), and the first pass's are back after it.
"""

from __future__ import annotations

import dataclasses
import os

from modules import extra_networks, sd_models, sd_samplers, shared, styles, textual_inversion, upscalers
from modules.runtime_utils import temporary_opts

# A1111's ``shared.latent_upscale_modes``: name -> (torch interpolate mode, antialias).
LATENT_UPSCALE_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# What A1111 uses when ``hr_upscaler`` is not given (``shared.latent_upscale_default_mode``).
DEFAULT_UPSCALER = "Latent"
# The UI's and A1111's "no change" choices: the first pass's checkpoint, sampler and schedule type.
SAME_CHECKPOINT, SAME_SAMPLER, SAME_SCHEDULER = "Use same checkpoint", "Use same sampler", "Use same scheduler"
# The second pass's sides are cut to multiples of 8 pixels, as every generation's are (A1111: whole latent cells).
LATENT_FACTOR = 8


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the second pass runs: the size the first pass is upscaled to (``upscale_*``, covering the target
    with the first pass's aspect ratio) and the size it is cut to (``width`` x ``height``, centred)."""

    upscale_width: int
    upscale_height: int
    width: int
    height: int


def target(width: int, height: int, hr_scale: float, hr_resize_x: int, hr_resize_y: int) -> Target:
    """A1111's ``calculate_target_resolution``: by ``hr_scale`` when both resize fields are 0; to one of them with
    the aspect ratio kept when the other is 0; else scaled to cover ``hr_resize_x`` x ``hr_resize_y`` and cut."""
    cell = LATENT_FACTOR
    if not hr_resize_x and not hr_resize_y:
        up_w, up_h = int(width * hr_scale), int(height * hr_scale)
        out_w, out_h = up_w, up_h
    elif not hr_resize_y:
        up_w, up_h = hr_resize_x, hr_resize_x * height // width
        out_w, out_h = up_w, up_h
    elif not hr_resize_x:
        up_w, up_h = hr_resize_y * width // height, hr_resize_y
        out_w, out_h = up_w, up_h
    else:
        if width / height < hr_resize_x / hr_resize_y:
            up_w, up_h = hr_resize_x, hr_resize_x * height // width
        else:
            up_w, up_h = hr_resize_y * width // height, hr_resize_y
        out_w, out_h = hr_resize_x, hr_resize_y
    return Target(up_w // cell * cell, up_h // cell * cell, out_w // cell * cell, out_h // cell * cell)


def is_latent(name: str | None) -> bool:
    return (name or DEFAULT_UPSCALER) in LATENT_UPSCALE_MODES


def switches_checkpoint(name: str | None) -> bool:
    return bool(name) and name != SAME_CHECKPOINT


def _chosen(field: str, value, same: str, first: str, resolve):
    try:
        return resolve(value if value not in (None, "", same) else first)
    except ValueError as e:
        raise ValueError(f"`{field}`: {e}") from None


def second_sampler(p) -> tuple[str, str]:
    """The second pass's sampler and schedule type by their canonical names: ``hr_sampler_name``/``hr_scheduler``,
    or the first pass's. Raises ``ValueError`` naming the field for an unknown name."""
    sampler = _chosen("hr_sampler_name", p.hr_sampler_name, SAME_SAMPLER, p.sampler_name, sd_samplers.resolve_sampler)
    scheduler = _chosen("hr_scheduler", p.hr_scheduler, SAME_SCHEDULER, p.scheduler, sd_samplers.resolve_scheduler)
    return sampler.name, scheduler.label


def second_prompts(p, prompts, negative_prompts) -> tuple[tuple, tuple]:
    """Each image's second-pass prompts: ``hr_prompt``/``hr_negative_prompt`` with the request's styles applied
    (A1111's ``all_hr_prompts``), or, when empty, the image's own (already styled)."""
    style_db = styles.database()
    positive = style_db.apply_to_prompt(p.hr_prompt, p.styles) if p.hr_prompt else None
    negative = style_db.apply_to_negative_prompt(p.hr_negative_prompt, p.styles) if p.hr_negative_prompt else None
    return (tuple(positive or text for text in prompts), tuple(negative or text for text in negative_prompts))


def check_inputs(p) -> None:
    """Raise ``ValueError`` naming the hires field that cannot run (a front door turns it into a 422)."""
    if isinstance(p.hr_scale, bool) or not isinstance(p.hr_scale, (int, float)) or not 0 < p.hr_scale <= 16:
        raise ValueError(f"`hr_scale` must be above 0 and at most 16, got {p.hr_scale!r}")
    for name in ("hr_resize_x", "hr_resize_y", "hr_second_pass_steps"):
        value = getattr(p, name)
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"`{name}` must be an integer of at least 0, got {value!r}")
    size = target(p.width, p.height, p.hr_scale, p.hr_resize_x, p.hr_resize_y)
    if size.width < LATENT_FACTOR or size.height < LATENT_FACTOR:
        raise ValueError(f"`hr_resize_x` and `hr_resize_y` give a second pass of {size.width}x{size.height}")
    if p.denoising_strength is None or not 0.0 <= float(p.denoising_strength) <= 1.0:
        raise ValueError(f"`denoising_strength` must be between 0 and 1, got {p.denoising_strength!r}")
    if not is_latent(p.hr_upscaler):
        try:
            upscalers.resolve(p.hr_upscaler)
        except ValueError as e:
            latent = ", ".join(LATENT_UPSCALE_MODES)
            raise ValueError(f"`hr_upscaler`: {e}; or a latent mode: {latent}") from None
    second_sampler(p)
    if switches_checkpoint(p.hr_checkpoint_name):
        # The check the seam makes when the second pass enters its override, made before anything queues.
        check = shared.opts.check({"sd_model_checkpoint": p.hr_checkpoint_name}, for_override=True)
        if check.errors:
            raise ValueError(f"`hr_checkpoint_name`: {check.errors['sd_model_checkpoint']}")


def infotext_params(p, index: int) -> dict:
    """A1111's Hires infotext fields for image ``index`` (``None`` values are left out of the text)."""
    sampler, scheduler = second_sampler(p)
    resized = p.hr_resize_x or p.hr_resize_y
    prompt, negative = second_prompts(p, [p.all_prompts[index]], [p.all_negative_prompts[index]])
    checkpoint = None
    if switches_checkpoint(p.hr_checkpoint_name):
        info = sd_models.resolve_checkpoint(p.hr_checkpoint_name)
        checkpoint = f"{os.path.splitext(info.name)[0]} [{info.shorthash}]"  # A1111's short_title
    return {
        "Hires upscale": None if resized else f"{p.hr_scale:g}",  # "2", as A1111 infotexts show it
        "Hires resize": f"{p.hr_resize_x}x{p.hr_resize_y}" if resized else None,
        "Hires steps": p.hr_second_pass_steps or None,
        "Hires upscaler": p.hr_upscaler or None,
        "Hires checkpoint": checkpoint,
        "Hires sampler": sampler if sampler != p.sampler_name else None,
        "Hires schedule type": scheduler if scheduler != p.scheduler else None,
        "Hires prompt": prompt[0] if prompt[0] != p.all_prompts[index] else None,
        "Hires negative prompt": negative[0] if negative[0] != p.all_negative_prompts[index] else None,
    }


def upscale_latents(latents, name: str, size: Target, factor: int):
    """Latents at ``size``'s upscale size by one of A1111's latent modes, then cut to the target (centred).
    ``factor`` is the model's pixels per latent cell (8 for SD files, less for the embedded models)."""
    import torch

    mode, antialias = LATENT_UPSCALE_MODES[name]
    up = torch.nn.functional.interpolate(latents, size=(size.upscale_height // factor, size.upscale_width // factor),
                                         mode=mode, antialias=antialias)
    return _cut(up, size.width // factor, size.height // factor)


def _cut(latents, width: int, height: int):
    top, left = (latents.shape[2] - height) // 2, (latents.shape[3] - width) // 2
    return latents[:, :, top:top + height, left:left + width]


def upscale_images(images: list, name: str, size: Target) -> list:
    """Decoded first-pass images upscaled by the image upscaler ``name`` (``upscalers.upscale``, the one entry
    point Hires fix, SD upscale and the extras share), then cut to the target (centred)."""
    wanted = (size.upscale_width, size.upscale_height)
    left, top = (wanted[0] - size.width) // 2, (wanted[1] - size.height) // 2
    try:
        upscaled = [upscalers.upscale(image, name, *wanted) for image in images]
    except upscalers.UpscalerFailed as e:  # the client chose it: reported as its field, as the extras do
        raise upscalers.UpscalerFailed(e.name, e.reason, "hr_upscaler") from e.__cause__
    return [image.crop((left, top, left + size.width, top + size.height)) for image in upscaled]


def second_pass_request(p, first, *, latents=None, images=None):
    """The first pass's ``SamplingRequest`` turned into the second pass's: the target size, the hires steps,
    sampler, schedule type and prompts, the same seeds, and the upscaled latents or images to start from."""
    sampler, scheduler = second_sampler(p)
    size = target(p.width, p.height, p.hr_scale, p.hr_resize_x, p.hr_resize_y)
    prompts, negative_prompts = second_prompts(p, first.prompts, first.negative_prompts)
    prompts = tuple(extra_networks.strip_prompt(text) for text in prompts)  # their tags act through `sample`
    return dataclasses.replace(
        first, width=size.width, height=size.height, steps=p.hr_second_pass_steps or p.steps,
        sampler_name=sampler, scheduler=scheduler, prompts=prompts, negative_prompts=negative_prompts,
        denoising_strength=float(p.denoising_strength),
        init_latents=latents, init_images=tuple(images or ()))


def sample(p, model, first, state, step_callback, refiner=None) -> list:
    """One batch of Hires fix: the first pass, the upscale, and the second pass (under the hires checkpoint's
    nested override when ``hr_checkpoint_name`` names one; a ``refiner`` switch takes over in it, A1111's default
    "second pass"). Interrupted during the first pass, its images are the result, as in A1111."""
    from modules import sd_pipeline

    latents = sd_pipeline.sample_latents(first, model, state, step_callback(first))
    if state.interrupted or state.skipped:
        return sd_pipeline.latents_to_images(latents, model.vae)
    size = target(p.width, p.height, p.hr_scale, p.hr_resize_x, p.hr_resize_y)
    name = p.hr_upscaler or DEFAULT_UPSCALER
    if is_latent(name):
        start = {"latents": upscale_latents(latents, name, size, first.width // latents.shape[-1])}
    else:
        start = {"images": upscale_images(sd_pipeline.latents_to_images(latents, model.vae), name, size)}
    overrides = {"sd_model_checkpoint": p.hr_checkpoint_name} if switches_checkpoint(p.hr_checkpoint_name) else {}
    with temporary_opts(overrides, p=p, owner="hires"):
        hires_model = sd_models.current_model(p.warnings) if overrides else model
        embeddings = first.embeddings
        if overrides and embeddings is not None:  # the embeddings the hires checkpoint can use
            embeddings = textual_inversion.lookup_for(hires_model, used=embeddings.used)
        request = second_pass_request(p, dataclasses.replace(first, settings=first.settings.fit(
            hires_model, p.warnings), embeddings=embeddings), **start)
        refine = {} if refiner is None else {"refiner": refiner}
        # A1111: the second pass runs with the extra networks of its own prompt (the first pass's without one)
        hr_prompts = second_prompts(p, first.prompts, first.negative_prompts)[0] if p.hr_prompt else None
        with extra_networks.for_pass(p, hires_model, hr_prompts):
            return sd_pipeline.sample_batch(request, hires_model, state, step_callback(request), **refine)
