"""Request preparation shared by the three front doors (the API, the UI and the CLI).

Each front door reads its own input (JSON, form values, flags) and calls these for everything else, so the three
cannot disagree:

* ``paste_infotext``: an infotext as request fields (``PASTE_FIELDS``), setting overrides, and what does not apply;
* ``build_processing``: the processing object, checked before it queues (sampler and schedule type, the object's
  own input checks, every override key in one ``OverrideError``, the scripts' own checks), so a bad request never
  waits behind a running generation and never changes anything;
* ``check_processing``: the same checks for a processing object made another way (a script's copy of one);
* ``prepare_extras`` and ``run_extras``: an extras upscale (the API's ``extra-*`` endpoints, the Extras tab)
  checked before it queues, then run as one queued job.

The scripts a request names are selected and checked against their schemas by ``modules.scripts.select``.

The image parameters reader is ``modules.image_parameters``, a checkpoint's defaults (native size, recommended CFG)
``modules.sd_models.checkpoint_defaults``, the settings change ``modules.settings_change``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from modules import img2img_inputs, infotext, jobs, shared, styles, upscalers
from modules.option_info import same_value
from modules.runtime_utils import OverrideError


class RequestFieldError(ValueError):
    """Request fields Serena cannot act on (unknown sampler, too large, bad image...): ``errors`` maps each to why."""

    status_code = 422

    def __init__(self, errors: Mapping[str, str]):
        self.errors = dict(errors)
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.errors.items()))


# (infotext key, processing field) for every parameter that fills a request field rather than a setting: A1111
# 1.10's paste fields (txt2img_paste_fields plus its Sampler and Seed scripts) for the fields Serena has. "Size"
# arrives split into "Size-1" (width) and "Size-2" (height), as A1111's parser does. A front door fills the fields
# its form or schema has.
PASTE_FIELDS = (
    ("Prompt", "prompt"),
    ("Negative prompt", "negative_prompt"),
    ("Steps", "steps"),
    ("Sampler", "sampler_name"),
    ("Schedule type", "scheduler"),
    ("CFG scale", "cfg_scale"),
    ("Seed", "seed"),
    ("Size-1", "width"),
    ("Size-2", "height"),
    ("Batch size", "batch_size"),
    ("Variation seed", "subseed"),
    ("Variation seed strength", "subseed_strength"),
    ("Denoising strength", "denoising_strength"),
    # Hires fix (txt2img only). "Hires resize: 96x128" arrives split as "Size" does.
    ("Hires upscale", "hr_scale"),
    ("Hires upscaler", "hr_upscaler"),
    ("Hires steps", "hr_second_pass_steps"),
    ("Hires resize-1", "hr_resize_x"),
    ("Hires resize-2", "hr_resize_y"),
    ("Hires checkpoint", "hr_checkpoint_name"),
    ("Hires sampler", "hr_sampler_name"),
    ("Hires schedule type", "hr_scheduler"),
    ("Hires prompt", "hr_prompt"),
    ("Hires negative prompt", "hr_negative_prompt"),
    ("Refiner", "refiner_checkpoint"),
    ("Refiner switch at", "refiner_switch_at"),
    # img2img's inpainting fields (A1111's img2img_paste_fields)
    ("Mask blur", "mask_blur"),
    ("Mask mode", "inpainting_mask_invert"),
    ("Masked content", "inpainting_fill"),
    ("Inpaint area", "inpaint_full_res"),
    ("Masked area padding", "inpaint_full_res_padding"),
)
# Fields A1111's infotext writes as a radio button's label: pasted as the label's index (a boolean for the inpaint
# area). A label not listed stays as written, so the front door reports it as a value that does not fit.
_LABELLED = {"inpainting_mask_invert": (img2img_inputs.MASK_MODES, int),
             "inpainting_fill": (img2img_inputs.MASKED_CONTENT, int),
             "inpaint_full_res": (img2img_inputs.INPAINT_AREAS, bool)}
# Which infotext keys turn Hires fix on when pasted (A1111's enable_hr paste field): a denoising strength together
# with one of them.
_HIRES_KEYS = ("Hires upscale", "Hires upscaler", "Hires resize-1")
# An empty prompt in an infotext empties the field; an empty number is no value (A1111's paste keeps the field).
_TEXT_FIELDS = ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt")
# A1111 skips the checkpoint when pasting (disable_weights_auto_swap, on by default): an image made on a model this
# server lacks must still be reproducible, and pasting never switches models.
_NOT_PASTED = ("sd_model_checkpoint",)


def over_limit(key: str, value: float, amount: str, verb: str = "is") -> str | None:
    """Why ``value`` (read to the client as ``amount``) is refused by the limit option ``key``; ``None`` within it.

    Every request limit reads the same way, naming the option an administrator raises."""
    limit = shared.opts.get(key)
    return f"{amount} {verb} above this server's limit of {limit} (option {key})" if value > limit else None


@dataclass
class Pasted:
    """What an infotext turns into.

    ``fields``: ``{processing field: value as written}`` (each front door converts to its own types), except that
    a radio button's label (``Masked content: latent noise``) arrives as the field's value (``_LABELLED``);
    ``overrides``: ``{option: value}`` for the settings that differ from the effective ones and pass their checks;
    ``unreadable``: ``{option: why}`` for values that are not of the option's type (``"Clip skip: lots"``);
    ``rejected``: ``{option: why}`` for values this server cannot apply (a VAE it lacks, a clip skip too deep).
    """

    params: dict = field(default_factory=dict)
    fields: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)
    unreadable: dict = field(default_factory=dict)
    rejected: dict = field(default_factory=dict)


def paste_infotext(text: str) -> Pasted:
    """Parse an infotext (``infotext.parse_generation_parameters``) into fields and overrides (A1111's
    ``get_override_settings``: only settings whose value differs from the current one, never the checkpoint).

    Raises ``ValueError`` only when the text cannot be parsed at all; a value that does not fit is reported in
    ``unreadable`` or ``rejected`` with its option, so one bad entry never hides the others.
    """
    opts = shared.opts
    params = dict(infotext.parse_generation_parameters(text))
    pasted = Pasted(params=params)
    # Styles first: their text leaves the prompts that fill the fields (A1111's infotext_styles)
    found_styles = styles.from_infotext(params)
    if found_styles is not None:
        pasted.fields["styles"] = found_styles
    for key, name in PASTE_FIELDS:
        if key in params and (params[key] != "" or name in _TEXT_FIELDS):
            pasted.fields[name] = _labelled_value(name, params[key])
    if "Denoising strength" in params and any(key in params for key in _HIRES_KEYS):
        pasted.fields["enable_hr"] = True
    wanted = {}
    for key, info in opts.data_labels.items():
        if not info.infotext or info.infotext not in params or key in _NOT_PASTED:
            continue
        try:  # one option at a time: a value that does not fit rejects only its own entry
            value = infotext.infotext_to_overrides({info.infotext: params[info.infotext]}, {key: info})[key]
        except ValueError as e:
            pasted.unreadable[key] = str(e)
            continue
        if not same_value(value, opts.get(key)):
            wanted[key] = value
    check = opts.check(wanted, for_override=True)
    pasted.rejected = dict(check.errors)
    # A value that only normalises to the current one ("sharp" for "sharp.safetensors") is no change either.
    pasted.overrides = {k: v for k, v in wanted.items()
                        if k not in check.errors and not same_value(check.values[k], opts.get(k))}
    return pasted


def _labelled_value(name: str, value):
    labels, kind = _LABELLED.get(name, ((), None))
    return kind(labels.index(value)) if value in labels else value


def resolve_sampling(sampler_name, scheduler, *, sampler_field: str = "sampler_name") -> tuple[dict, dict]:
    """``({"sampler_name", "scheduler"} canonical, {})`` or ``({}, {field: why})``; A1111's old combined names
    ("DPM++ 2M Karras") are read too. ``sampler_field`` is the field the name came from, for the error."""
    from modules import sd_samplers  # imports torch: not when the UI only pastes

    try:
        sampler, schedule = sd_samplers.resolve_sampler_and_scheduler(sampler_name, scheduler)
    except ValueError:
        errors = {}
        for name, resolve, value in ((sampler_field, sd_samplers.resolve_sampler, sampler_name),
                                     ("scheduler", sd_samplers.resolve_scheduler, scheduler)):
            try:
                resolve(value)
            except ValueError as e:
                errors[name] = str(e)
        return {}, errors
    return {"sampler_name": sampler.name, "scheduler": schedule.label}, {}


# Every prompt a generation request may carry, hires fix ones too (ignored, but still parsed and echoed).
_PROMPT_FIELDS = ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt")


def check_limits(req) -> dict:
    """``{field: why}`` for this server's API limits (``api_max_*`` options) that ``req`` exceeds: an API request,
    or a processing object a script makes for one (each line of "Prompts from file" is held to them too)."""
    sizes = (("width", "api_max_width"), ("height", "api_max_height"), ("steps", "api_max_steps"))
    problems = {name: over_limit(key, getattr(req, name), str(getattr(req, name))) for name, key in sizes}
    count = req.batch_size * req.n_iter
    problems["batch_size"] = over_limit("api_max_images", count, f"batch_size x n_iter = {count} images")
    for name in _PROMPT_FIELDS:
        text = getattr(req, name, None) or ""
        problems[name] = over_limit("api_max_prompt_chars", len(text), f"{len(text)} characters", "are")
    problems.update(_hires_limits(req))
    return {name: problem for name, problem in problems.items() if problem}


def _hires_limits(req) -> dict:
    """Hires fix's second pass is the largest image a request makes: the size limits hold for it too."""
    scale = getattr(req, "hr_scale", None)
    if not getattr(req, "enable_hr", False) or not isinstance(scale, (int, float)) or scale <= 0:
        return {}  # a bad scale is the processing object's own error
    from modules import hires  # imports torch: not when the UI only pastes

    size = hires.target(req.width, req.height, scale, max(0, req.hr_resize_x), max(0, req.hr_resize_y))
    field = "hr_resize_x" if req.hr_resize_x or req.hr_resize_y else "hr_scale"
    return {field: over_limit("api_max_width", size.upscale_width, f"a second pass {size.upscale_width} wide")
            or over_limit("api_max_height", size.upscale_height, f"a second pass {size.upscale_height} high")}


def check_overrides(overrides: Mapping | None) -> None:
    """``OverrideError`` listing every override key that ``temporary_opts`` would refuse; nothing is applied."""
    check = shared.opts.check(overrides, for_override=True)
    if check.errors:
        raise OverrideError(check.errors)


def build_processing(cls, fields: Mapping, *, sampler_field: str = "sampler_name", errors: Mapping | None = None):
    """``cls(**fields)``, the processing object of one generation, or the error listing what is wrong with it.

    Checked in this order, each step only when the one before passed: the sampler and schedule type (made
    canonical) together with the front door's own ``errors`` (limits, scripts) as one ``RequestFieldError``; the
    object's ``check_inputs`` (a ``RequestFieldError`` naming its field); then every override key
    (``OverrideError``: nothing applied, no hook fired); then the scripts' own ``check`` with ``p`` built (a
    ``RequestFieldError``). Call it before queueing.
    """
    p = cls(**fields)  # a field not given is the class default, the sampler too
    return check_processing(p, sampler_field=sampler_field, errors=errors)


def check_processing(p, *, sampler_field: str = "sampler_name", errors: Mapping | None = None):
    """``p`` checked (and its sampler and schedule type made canonical) as ``build_processing`` describes."""
    sampling, problems = resolve_sampling(p.sampler_name, p.scheduler, sampler_field=sampler_field)
    problems.update(errors or {})
    if problems:
        raise RequestFieldError(problems)
    p.sampler_name, p.scheduler = sampling["sampler_name"], sampling["scheduler"]
    try:
        p.check_inputs()
    except ValueError as e:
        name = re.search(r"`(\w+)`", str(e))
        raise RequestFieldError({name.group(1) if name else "request": str(e)}) from None
    check_overrides(p.override_settings)
    if p.scripts is not None:  # the scripts' own checks, with every argument already fitting its schema
        problems = p.scripts.check(p)
        if problems:
            raise RequestFieldError(problems)
    return p


#: Largest side an extras request may produce: a scale of 8 on a big image would otherwise allocate gigabytes.
MAX_UPSCALED_SIDE = 8192


def prepare_extras(images: list, *, upscaler_1: str, upscaler_2: str = "None", visibility: float = 0.0,
                   resize_mode: int = 0, scale: float = 2.0, width: int = 512, height: int = 512, crop: bool = True,
                   warnings: list | None = None) -> upscalers.Plan:
    """The extras upscale of ``images`` as a plan, or a ``RequestFieldError`` naming every field that cannot be
    honoured: an unknown upscaler, or results over ``MAX_UPSCALED_SIDE`` a side or over ``api_max_output_pixels``
    together (checked before anything is upscaled). Fields are the API's names."""
    warnings = [] if warnings is None else warnings
    errors, found = {}, {}
    for name, value in (("upscaler_1", upscaler_1), ("upscaler_2", upscaler_2)):
        try:
            found[name] = upscalers.resolve(value, warnings)
        except ValueError as e:
            errors[name] = str(e)
    if errors:
        raise RequestFieldError(errors)
    plan = upscalers.Plan(upscaler_1=found["upscaler_1"], upscaler_2=found["upscaler_2"],
                          upscaler_2_visibility=visibility, resize_mode=resize_mode, scale=scale, width=width,
                          height=height, crop=crop, warnings=warnings)
    if not plan.active and plan.upscaler_2.upscale is not None and visibility > 0:
        warnings.append("`upscaler_2` was ignored: it blends into the result of `upscaler_1`, which is None")
    if plan.active:
        size_field = "upscaling_resize" if resize_mode == 0 else "upscaling_resize_w"
        largest = max((max(plan.scaled_size(image)) for image in images), default=0)
        if largest > MAX_UPSCALED_SIDE:
            raise RequestFieldError({size_field: f"the result would be {largest} pixels wide or high; the limit is "
                                                 f"{MAX_UPSCALED_SIDE}"})
        total = sum(w * h for w, h in map(plan.scaled_size, images))
        limit = shared.opts.api_max_output_pixels
        if total > limit:
            raise RequestFieldError({size_field: f"the results would hold {total} pixels together, above this "
                                                 f"server's limit of {limit} for one request (option "
                                                 f"api_max_output_pixels)"})
    return plan


def run_extras(plan: upscalers.Plan, images: list) -> list:
    """``plan`` applied to ``images`` as one queued job; an upscaler that fails is a ``RequestFieldError`` naming
    the field that chose it and the upscaler."""
    try:
        return jobs.run_job("extras", upscalers.run_plan, plan, images)
    except upscalers.UpscalerFailed as e:
        raise RequestFieldError({e.field or "upscaler_1": str(e)}) from None
