"""Processing objects and the generation entry points.

``process_images(p)`` fires ``on_before_process``, then enters ``temporary_opts(p.override_settings, p=p,
restore=p.override_settings_restore_afterwards)`` and calls ``process_images_inner(p)``, which is decorated with
``@with_overrides``: called directly (as extensions do), it applies ``p``'s overrides itself; reached through
``process_images``, it sees them already active and applies nothing twice. No code here sets or restores an
option by hand.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from dataclasses import dataclass, field
from typing import Any

from modules import (extra_networks, hires, image_resize, img2img_inputs, infotext, jobs, plugins, refiner, sd_models,
                     sd_samplers, shared, styles, textual_inversion)
from modules.runtime_utils import temporary_opts, with_overrides

log = logging.getLogger("serena.processing")

SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class GenerationSettings:
    """The options the diffusion reads, captured once per generation while its overrides are in effect.

    The pipeline receives this object instead of reading the global options store (M07), so what a generation
    ran with is explicit, and nothing in the sampling loop depends on which thread or context it runs in.
    """

    clip_skip: int = 1
    eta_noise_seed_delta: int = 0
    randn_source: str = "CPU"
    tiling: bool = False  # the "tiling" option: what a request that leaves ``tiling`` unset gets (A1111)
    inpainting_mask_weight: float = 1.0  # how much of an inpainting model's masked image is hidden (0 to 1)
    # SDXL: clip skip on CLIP-L too, the crop micro-conditioning, the refiner's aesthetic scores (A1111's options)
    sdxl_clip_l_skip: bool = False
    sdxl_crop_top: int = 0
    sdxl_crop_left: int = 0
    sdxl_refiner_low_aesthetic_score: float = 2.5
    sdxl_refiner_high_aesthetic_score: float = 6.0

    @classmethod
    def capture(cls, opts) -> "GenerationSettings":
        return cls(clip_skip=int(opts.CLIP_stop_at_last_layers), eta_noise_seed_delta=int(opts.eta_noise_seed_delta),
                   randn_source=opts.randn_source, tiling=bool(opts.tiling),
                   inpainting_mask_weight=float(opts.inpainting_mask_weight),
                   sdxl_clip_l_skip=bool(opts.sdxl_clip_l_skip), sdxl_crop_top=int(opts.sdxl_crop_top),
                   sdxl_crop_left=int(opts.sdxl_crop_left),
                   sdxl_refiner_low_aesthetic_score=float(opts.sdxl_refiner_low_aesthetic_score),
                   sdxl_refiner_high_aesthetic_score=float(opts.sdxl_refiner_high_aesthetic_score))

    def fit(self, model, warnings: list) -> "GenerationSettings":
        """These settings within what ``model`` can do. Values from a request were checked against its model
        before it queued; a stored clip skip deeper than a later-chosen model's text encoder is clamped here,
        with a warning, never a failure."""
        facts = getattr(model, "facts", None)
        problem = facts and sd_models.clip_skip_problem(self.clip_skip, model.info, facts)
        if not problem:
            return self
        message = f"Clip skip {problem}; using {facts.text_encoder_layers}"
        log.warning("%s", message)
        warnings.append(message)
        return dataclasses.replace(self, clip_skip=facts.text_encoder_layers)


@dataclass(frozen=True)
class ModelUsed:
    """Which checkpoint and VAE a batch ran on, recorded before any hook runs (hooks may switch the model), and
    whether its UNet took inpainting conditioning (``modules.inpaint_conditioning``)."""

    info: Any
    vae_name: str | None
    inpainting_conditioning: bool = False


@dataclass
class StableDiffusionProcessing:
    """One generation request as plain data. Field names and defaults are A1111's."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: list = field(default_factory=list)
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str = "Euler a"
    scheduler: str = "Automatic"
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    save_samples: bool | None = None  # None: follow the samples_save option; the CLI forces True
    eta: float | None = None
    denoising_strength: float | None = None
    refiner_checkpoint: str | None = None  # the checkpoint that takes over the end of sampling (modules.refiner)
    refiner_switch_at: float | None = None
    override_settings: dict = field(default_factory=dict)
    override_settings_restore_afterwards: bool = True
    disable_extra_networks: bool = False  # tags are still taken out of the prompts, but no network acts (A1111)
    extra_generation_params: dict = field(default_factory=dict)
    outpath_samples: str | None = None
    outpath_grids: str | None = None
    is_api: bool = False
    warnings: list = field(default_factory=list)
    # The scripts of this generation (``modules.scripts.ScriptRun``: the selected one and the always-on ones with
    # their checked arguments), set by the request preparation; ``None`` runs none (A1111's ``p.scripts``).
    scripts: Any = field(default=None, repr=False)
    settings: GenerationSettings = field(default_factory=GenerationSettings, init=False, repr=False)
    # The textual inversion embeddings the prompts used so far, by name: the infotext's "TI hashes".
    embeddings_used: dict = field(default_factory=dict, init=False, repr=False)
    # A1111's flag: a batch ran on an inpainting model, with its mask conditioning (infotext, ``Processed.js``)
    is_using_inpainting_conditioning: bool = field(default=False, init=False)

    mode = "txt2img"
    uses_hires = False  # Hires fix's second pass (txt2img with enable_hr)

    @property
    def denoises(self) -> bool:
        """Whether ``denoising_strength`` is used (and written to the infotext)."""
        return self.mode == "img2img" or self.uses_hires

    def mode_params(self, index: int) -> dict:
        """Infotext fields of this kind of generation only (Hires fix's), after the common ones."""
        return {}

    def __post_init__(self):
        if self.override_settings is None:
            self.override_settings = {}
        if self.override_settings_restore_afterwards is None:
            self.override_settings_restore_afterwards = True

    # -- steps of process_images_inner, one method each (diffusers-style) -------------------------------------
    def check_inputs(self):
        """Raise ``ValueError`` naming the field for anything that cannot run, before any model work."""
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 8 or value % 8:
                raise ValueError(f"`{name}` must be a positive multiple of 8, got {value!r}")
        for name in ("steps", "batch_size", "n_iter"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer of at least 1, got {value!r}")
        sd_samplers.resolve_sampler(self.sampler_name)
        sd_samplers.resolve_scheduler(self.scheduler)
        styles.check_names(self.styles)
        refiner.check_inputs(self)

    def init_seeds(self):
        """Seeds for every image: -1 picks a random seed; image i of the whole run uses seed + i (A1111)."""
        seed = int(self.seed) if self.seed not in (None, -1, "") else random.randrange(SEED_MAX)
        subseed = int(self.subseed) if self.subseed not in (None, -1, "") else random.randrange(SEED_MAX)
        self.seed, self.subseed = seed, subseed
        count = self.batch_size * self.n_iter
        self.all_seeds = [(seed + i) % (SEED_MAX + 1) for i in range(count)]
        self.all_subseeds = [(subseed + i) % (SEED_MAX + 1) for i in range(count)]
        # The styles' text goes into the prompts every image is made and recorded with (A1111's setup_prompts)
        style_db = styles.database()
        self.all_prompts = [style_db.apply_to_prompt(self.prompt, self.styles)] * count
        self.all_negative_prompts = [style_db.apply_to_negative_prompt(self.negative_prompt, self.styles)] * count

    def prepare_inputs(self):
        """Per-generation work before the first batch, under the generation's overrides (img2img's images)."""

    def uses_tiling(self) -> bool:
        """Whether this generation tiles: the request's ``tiling``, or the option when the request leaves it unset."""
        return bool(self.tiling) if self.tiling is not None else self.settings.tiling

    def sampling_request(self, prompts: list[str], negative_prompts: list[str], seeds: list[int],
                         subseeds: list[int]):
        """What the pipeline samples for one batch (``sd_pipeline.SamplingRequest``): this request's fields and
        its captured settings, frozen, so nothing the pipeline does depends on ``p`` or the options store."""
        from modules.sd_pipeline import SamplingRequest
        return SamplingRequest(
            prompts=tuple(prompts), negative_prompts=tuple(negative_prompts), seeds=tuple(seeds),
            subseeds=tuple(subseeds), subseed_strength=float(self.subseed_strength), width=self.width,
            height=self.height, sampler_name=self.sampler_name, scheduler=self.scheduler, steps=self.steps,
            cfg_scale=float(self.cfg_scale), eta=None if self.eta is None else float(self.eta),
            settings=self.settings, tiling=self.uses_tiling())

    def sample_batch(self, model, prompts: list[str], negative_prompts: list[str], seeds: list[int],
                     subseeds: list[int]) -> list:
        """Generate one batch of PIL images: the batch's ``sampling_request``, run by ``modules.sd_pipeline``.

        Tests and extensions without a model override this method (``docs/extensions/writing.md``).
        """
        from modules import sd_pipeline
        request = dataclasses.replace(self.sampling_request(prompts, negative_prompts, seeds, subseeds),
                                      embeddings=textual_inversion.lookup_for(model, used=self.embeddings_used))
        # A refiner is passed only when one switches: without, the pipeline is called exactly as before it existed.
        switch = refiner.switch_for(self, model)
        refine = {} if switch is None else {"refiner": switch}
        if self.uses_hires:  # two passes, each its own request through the same pipeline functions
            images = hires.sample(self, model, request, jobs.state, lambda r: _step_hook(self, r), **refine)
        else:
            images = sd_pipeline.sample_batch(request, model, jobs.state,
                                              callback_on_step_end=_step_hook(self, request), **refine)
        if self.embeddings_used and shared.opts.textual_inversion_add_hashes_to_infotext:
            self.extra_generation_params["TI hashes"] = textual_inversion.hashes_infotext(self.embeddings_used)
        return images

    def infotext_params(self, index: int, used: "ModelUsed") -> dict:
        """Generation parameters of image ``index``, read from the effective options of this generation."""
        opts, settings = shared.opts, self.settings
        clip_skip = settings.clip_skip
        params = {
            "Steps": self.steps,
            "Sampler": self.sampler_name,
            "Schedule type": self.scheduler if self.scheduler != "Automatic" else None,
            "CFG scale": self.cfg_scale,
            "Seed": self.all_seeds[index],
            "Size": f"{self.width}x{self.height}",
            "Model hash": used.info.shorthash if opts.add_model_hash_to_info else None,
            "Model": used.info.model_name if opts.add_model_name_to_info else None,
            "VAE": used.vae_name,
            "Denoising strength": self.denoising_strength if self.denoises else None,
            "Conditional mask weight": settings.inpainting_mask_weight if used.inpainting_conditioning else None,
            "Clip skip": clip_skip if clip_skip > 1 else None,
            "ENSD": settings.eta_noise_seed_delta or None,
            "RNG": settings.randn_source if settings.randn_source != "CPU" else None,
            "Tiling": "True" if self.uses_tiling() else None,
        }
        if self.subseed_strength:
            params.update({"Variation seed": self.all_subseeds[index],
                           "Variation seed strength": self.subseed_strength})
        params.update(self.mode_params(index))
        params.update(self.extra_generation_params)
        _fire("on_infotext", self, p=self, params=params)
        return params


@dataclass
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    """txt2img, with A1111's Hires fix (``modules.hires``) when ``enable_hr`` is set."""

    enable_hr: bool = False
    denoising_strength: float | None = 0.75  # A1111's txt2img default; used by Hires fix only
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    firstphase_width: int = 0
    firstphase_height: int = 0

    mode = "txt2img"

    @property
    def uses_hires(self) -> bool:
        return bool(self.enable_hr)

    def check_inputs(self):
        super().check_inputs()
        if self.enable_hr:
            hires.check_inputs(self)

    def mode_params(self, index: int) -> dict:
        return hires.infotext_params(self, index) if self.enable_hr else {}


@dataclass
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    """img2img and inpainting, with A1111's fields: the init images and mask are prepared once per generation
    (``prepare_inputs``, by ``modules.img2img_inputs``) and every image is pasted back over its original."""

    init_images: list = field(default_factory=list)
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float | None = None
    mask: Any = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None  # sets both axes; reads back as their blur when equal (a property, as A1111's)
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None  # None: the option of the same name, read under the overrides
    latent_mask: Any = None
    inputs: Any = field(default=None, init=False, repr=False)  # the prepared Img2ImgInputs of this generation

    mode = "img2img"

    def check_inputs(self):
        super().check_inputs()
        if not self.init_images:
            raise ValueError("`init_images` must hold at least one image for img2img")
        if not 0.0 <= float(self.denoising_strength) <= 1.0:
            raise ValueError(f"`denoising_strength` must be between 0 and 1, got {self.denoising_strength!r}")
        choices = {"resize_mode": image_resize.RESIZE_MODES, "inpainting_fill": img2img_inputs.MASKED_CONTENT}
        for name, labels in choices.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < len(labels):
                raise ValueError(f"`{name}` must be one of 0 to {len(labels) - 1} "
                                 f"({', '.join(labels)}), got {value!r}")
        for name in ("mask_blur_x", "mask_blur_y", "inpaint_full_res_padding"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1024:
                raise ValueError(f"`{name}` must be a whole number of pixels from 0 to 1024, got {value!r}")
        noise = self.initial_noise_multiplier
        if noise is not None and not 0.0 <= float(noise) <= 16.0:
            raise ValueError(f"`initial_noise_multiplier` must be between 0 and 16, got {noise!r}")

    def prepare_inputs(self):
        """A1111's ``init``: the images and mask made ready (under this generation's overrides), once."""
        opts = shared.opts
        if self.initial_noise_multiplier is None:
            self.initial_noise_multiplier = float(opts.initial_noise_multiplier)
        self.inputs = img2img_inputs.prepare(self, background=opts.img2img_background_color)
        self.warnings.extend(self.inputs.warnings)

    def sampling_request(self, prompts, negative_prompts, seeds, subseeds):
        """The txt2img request plus the prepared images to start from: holding init images makes it img2img."""
        if self.inputs is None:  # called outside process_images (a test, an extension sampling by hand)
            self.prepare_inputs()
        inputs = self.inputs
        return dataclasses.replace(
            super().sampling_request(prompts, negative_prompts, seeds, subseeds), init_images=inputs.images,
            denoising_strength=float(self.denoising_strength), mask=inputs.mask, mask_round=bool(self.mask_round),
            inpainting_fill=int(self.inpainting_fill), noise_multiplier=float(self.initial_noise_multiplier),
            latent_resize=self.resize_mode == image_resize.LATENT_RESIZE)

    def sample_batch(self, model, prompts, negative_prompts, seeds, subseeds) -> list:
        """The batch's images, each pasted back over its original (A1111's overlay, option ``overlay_inpaint``)."""
        images = super().sample_batch(model, prompts, negative_prompts, seeds, subseeds)
        if not shared.opts.overlay_inpaint:
            return images
        return [img2img_inputs.paste_back(image, self.inputs, i) for i, image in enumerate(images)]

    def mode_params(self, index: int) -> dict:
        params = dict(self.inputs.params) if self.inputs is not None else {}
        if self.initial_noise_multiplier is not None and self.initial_noise_multiplier != 1.0:
            params["Noise multiplier"] = self.initial_noise_multiplier
        return params


def _mask_blur(self) -> int | None:
    return self.mask_blur_x if self.mask_blur_x == self.mask_blur_y else None


def _set_mask_blur(self, value) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        self.mask_blur_x = self.mask_blur_y = value


# After the dataclass is made, so its __init__ still takes ``mask_blur`` (default None: the axes stay as given)
StableDiffusionProcessingImg2Img.mask_blur = property(_mask_blur, _set_mask_blur)


@dataclass
class Processed:
    """The result of a generation: images plus everything A1111 clients read from ``info``."""

    p: StableDiffusionProcessing
    images: list
    seed: int
    all_seeds: list
    subseed: int
    all_subseeds: list
    all_prompts: list
    all_negative_prompts: list
    infotexts: list
    sd_model_name: str | None = None
    sd_model_hash: str | None = None
    sd_vae_name: str | None = None
    clip_skip: int = 1
    job_timestamp: str = "0"
    warnings: list = field(default_factory=list)
    saved_paths: list = field(default_factory=list)

    def js(self) -> str:
        p = self.p
        return json.dumps({
            "prompt": p.prompt, "all_prompts": self.all_prompts,
            "negative_prompt": p.negative_prompt, "all_negative_prompts": self.all_negative_prompts,
            "seed": self.seed, "all_seeds": self.all_seeds, "subseed": self.subseed, "all_subseeds": self.all_subseeds,
            "subseed_strength": p.subseed_strength, "width": p.width, "height": p.height,
            "sampler_name": p.sampler_name, "scheduler": p.scheduler, "cfg_scale": p.cfg_scale, "steps": p.steps,
            "batch_size": p.batch_size, "restore_faces": bool(p.restore_faces), "face_restoration_model": None,
            "sd_model_name": self.sd_model_name, "sd_model_hash": self.sd_model_hash,
            "sd_vae_name": self.sd_vae_name, "sd_vae_hash": None,
            "seed_resize_from_w": p.seed_resize_from_w, "seed_resize_from_h": p.seed_resize_from_h,
            "denoising_strength": p.denoising_strength, "extra_generation_params": p.extra_generation_params,
            "index_of_first_image": 0, "infotexts": self.infotexts, "styles": p.styles,
            "job_timestamp": self.job_timestamp, "clip_skip": self.clip_skip,
            "is_using_inpainting_conditioning": p.is_using_inpainting_conditioning, "version": "serena",
            "warnings": self.warnings,
        })


def _model_for_batch(p):
    from modules.inpaint_conditioning import takes_image_conditioning
    model = sd_models.current_model(p.warnings)
    return model, ModelUsed(model.info, model.vae_name, takes_image_conditioning(model))


def _should_save(p) -> bool:
    if p.do_not_save_samples:
        return False
    return shared.opts.samples_save if p.save_samples is None else p.save_samples


def save_sample(p, image, text: str, seed: int, label: str) -> str | None:
    """Save ``image`` (its parameters ``text``) as a sample of ``p`` when ``p`` saves samples; its path, or ``None``.

    A full or read-only outputs folder costs the file, never the image: the failure is a warning of ``p`` naming
    ``label`` ("image 2").
    """
    if not _should_save(p):
        return None
    from modules import images as images_module
    try:
        return images_module.save_image(image, p, text, seed=seed)
    except OSError as e:
        p.warnings.append(f"{label} was not saved: {e}")
        log.warning("%s was not saved: %s", label, e)
        return None


def _fire(hook: str, p, /, **kwargs):
    """Fire a hook for this generation; contained failures become the generation's warnings."""
    plugins.host.call_reporting(hook, p.warnings, **kwargs)


def _step_hook(p, request):
    """``on_sampling_step`` as the pipeline's per-step callback, or ``None`` when no extension implements it:
    checked once per batch, so a generation without one pays nothing per step."""
    if not plugins.host.impls("on_sampling_step"):
        return None

    def on_step(**step):
        _fire("on_sampling_step", p, p=p, request=request, **step)
    return on_step


def process_images(p: StableDiffusionProcessing) -> Processed:
    """Run a generation: ``on_before_process``, then ``process_images_inner`` with ``p``'s overrides in effect."""
    _fire("on_before_process", p, p=p)
    with temporary_opts(p.override_settings, p=p, restore=p.override_settings_restore_afterwards,
                        owner="process_images"):
        return process_images_inner(p)


@with_overrides
def process_images_inner(p: StableDiffusionProcessing) -> Processed:
    """The generation itself, with the overrides of ``p`` in effect (applied here when called directly)."""
    # 1. Check inputs before any model work
    p.check_inputs()
    # 2. Extensions adjust p with the effective options visible
    _fire("on_process", p, p=p)
    # 3. Seeds, prompts and the effective options for every image; then what runs once per generation under
    #    them (img2img: its images and mask)
    p.init_seeds()
    p.settings = GenerationSettings.capture(shared.opts)
    p.prepare_inputs()
    # 4. The model that matches the effective checkpoint and VAE, and the settings fitted to it
    model, used = _model_for_batch(p)
    p.settings = p.settings.fit(model, p.warnings)
    state = jobs.state
    state.job_count = p.n_iter
    images, infotexts, saved_paths = [], [], []
    # 5. Sample batch by batch, each from its own frozen SamplingRequest (built by p.sample_batch); interrupt
    #    stops before the next batch (the pipeline checks every step)
    for n in range(p.n_iter):
        if state.interrupted:
            break
        state.job_no = n
        state.skipped = False
        lo, hi = n * p.batch_size, (n + 1) * p.batch_size
        # A nested generation run by an extension's hook may have switched the shared model's VAE: match this
        # generation's effective settings again, and record what this batch really ran on.
        model, used = _model_for_batch(p)
        p.is_using_inpainting_conditioning |= used.inpainting_conditioning
        # Extra networks (<lora:…> tags) act on this batch's model while it samples, and are undone after it
        prompts, networks = extra_networks.parse_prompts(p.all_prompts[lo:hi])
        with extra_networks.activated(p, model, networks):
            batch = p.sample_batch(model, prompts, p.all_negative_prompts[lo:hi], p.all_seeds[lo:hi],
                                   p.all_subseeds[lo:hi])
        for i, image in enumerate(batch):
            index = lo + i
            params = p.infotext_params(index, used)
            text = infotext.create_infotext(p.all_prompts[index], p.all_negative_prompts[index], params)
            image.info["parameters"] = text
            path = save_sample(p, image, text, p.all_seeds[index], f"image {index + 1}")
            if path is not None:
                saved_paths.append(path)
            images.append(image)
            infotexts.append(text)
    # 6. The result, built while the overrides are still in effect
    processed = Processed(
        p=p, images=images, seed=p.all_seeds[0], all_seeds=p.all_seeds, subseed=p.all_subseeds[0],
        all_subseeds=p.all_subseeds, all_prompts=p.all_prompts, all_negative_prompts=p.all_negative_prompts,
        infotexts=infotexts, sd_model_name=used.info.model_name, sd_model_hash=used.info.shorthash,
        sd_vae_name=used.vae_name,
        clip_skip=p.settings.clip_skip, job_timestamp=state.job_timestamp, warnings=p.warnings,
        saved_paths=saved_paths)
    _fire("on_postprocess", p, p=p, processed=processed)
    return processed
