"""Request and response bodies of the HTTP API, with A1111's field names and defaults.

The generation requests are written out field by field (A1111 builds them by introspecting its processing
classes; an explicit list keeps the schema reviewable and stable when the processing dataclasses change). Three
kinds of field exist:

* fields that become attributes of the processing object (the API handler copies every field that the processing
  dataclass also has);
* fields of the API itself: ``sampler_index``, ``script_name``, ``script_args``, ``send_images``, ``save_images``,
  ``alwayson_scripts``, ``force_task_id``, ``infotext`` (and ``include_init_images`` for img2img);
* fields A1111 clients send that Serena accepts but does not act on (``UNSUPPORTED_FIELDS``). A request that sets one
  of them to something other than its neutral value still succeeds; the response's ``warnings`` (and the
  ``"warnings"`` key of ``info``) say what was ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# -- generation requests ---------------------------------------------------------------------------------------


class _GenerationRequest(BaseModel):
    """Fields shared by txt2img and img2img (A1111's ``StableDiffusionProcessing`` plus the API's own)."""

    # Unknown fields are kept so the handler can report them as ignored (a typo such as ``sampler`` for
    # ``sampler_name`` would otherwise vanish without a word). No float is NaN or infinite: a body cannot send one
    # (the API refuses them), but an infotext's "CFG scale: nan" reaches these fields as text.
    model_config = ConfigDict(extra="allow", protected_namespaces=(), allow_inf_nan=False)

    prompt: str = Field("", description="The prompt.")
    negative_prompt: str = Field("", description="The negative prompt.")
    styles: list[str] | None = Field(
        None, description="Prompt style names (GET /prompt-styles), applied in order to the prompt and the negative "
                          "prompt; an unknown name is a 422 (A1111 skips it).")
    seed: int = Field(-1, description="Seed of the first image; -1 picks a random one. Image i uses seed + i.")
    subseed: int = Field(-1, description="Variation seed; -1 picks a random one.")
    subseed_strength: float = Field(0.0, description="How much of the variation seed's noise is mixed in (0 to 1).")
    seed_resize_from_h: int = Field(-1, description="A1111's 'resize seed from height' (not supported; ignored).")
    seed_resize_from_w: int = Field(-1, description="A1111's 'resize seed from width' (not supported; ignored).")
    sampler_name: str | None = Field(
        None, description="Sampler name or alias (GET /samplers); A1111's old 'DPM++ 2M Karras' form too. "
                          "Falls back to `sampler_index`.")
    scheduler: str | None = Field(None, description="Schedule type (GET /schedulers); null means 'Automatic'.")
    batch_size: int = Field(1, description="Images generated at once.")
    n_iter: int = Field(1, description="Number of batches.")
    steps: int = Field(50, description="Sampling steps.")
    cfg_scale: float = Field(7.0, description="Classifier-free guidance scale.")
    width: int | None = Field(
        None, description="Image width in pixels (a multiple of 8). Omitted or null: the native size of the "
                          "checkpoint the request runs on (64 for Serena's embedded models, 512 for SD 1.x files); "
                          "the response's `parameters` shows the size used.")
    height: int | None = Field(None, description="Image height in pixels (a multiple of 8); omitted or null as "
                                                 "for `width`.")
    restore_faces: bool | None = Field(None, description="Face restoration (not supported; true is ignored).")
    tiling: bool | None = Field(
        None, description="Seamless tiling: the image wraps at its edges. null: the `tiling` setting decides.")
    do_not_save_samples: bool = Field(False, description="Superseded by `save_images`, as in A1111.")
    do_not_save_grid: bool = Field(False, description="Superseded by `save_images`, as in A1111.")
    eta: float | None = Field(None, description="Noise multiplier for samplers whose step takes `eta`.")
    denoising_strength: float | None = Field(None, description="img2img: how much of the init image is replaced.")
    s_min_uncond: float | None = Field(None, description="A1111 sampler parameter (not supported; ignored).")
    s_churn: float | None = Field(None, description="A1111 sampler parameter (not supported; ignored).")
    s_tmax: float | None = Field(None, description="A1111 sampler parameter (not supported; ignored).")
    s_tmin: float | None = Field(None, description="A1111 sampler parameter (not supported; ignored).")
    s_noise: float | None = Field(None, description="A1111 sampler parameter (not supported; ignored).")
    override_settings: dict[str, Any] | None = Field(
        None, description="Settings in effect for this request only. Every key is validated before the request "
                          "queues; any bad key fails the request with 422 listing each one, and nothing is applied.")
    override_settings_restore_afterwards: bool | None = Field(
        True, description="false keeps the overrides as stored settings afterwards (not written to config.json).")
    refiner_checkpoint: str | None = Field(
        None, description="A checkpoint that takes over the end of sampling (SDXL's refiner); null, \"\" or "
                          "\"None\": none. Unknown names are a 422.")
    refiner_switch_at: float | None = Field(
        None, description="0-1: the part of the model's timesteps after which the refiner takes over (A1111); "
                          "null switches at the first step.")
    disable_extra_networks: bool | None = Field(
        False, description="true: no extra network (<lora:…> tags, the `sd_lora` option) acts; the tags are still "
                           "taken out of the prompt.")
    comments: dict[str, Any] | None = Field(None, description="Free-form comments (accepted, not used).")

    sampler_index: str = Field("Euler", description="Deprecated: the sampler used when `sampler_name` is not given.")
    script_name: str | None = Field(
        None, description="A selectable script's title, any case (GET /scripts); its `run` replaces the generation.")
    script_args: list[Any] = Field(
        default_factory=list, description="Arguments of `script_name` by position (GET /script-info); fewer take "
                                          "the defaults. Each is checked before the request queues.")
    send_images: bool = Field(True, description="false returns `images: []` (the info is still returned).")
    save_images: bool = Field(False, description="Save the images to the output folder as the UI does.")
    alwayson_scripts: dict[str, Any] = Field(
        default_factory=dict,
        description="Arguments of always-on scripts: {title: {\"args\": [...]}}; a script not named runs with its "
                    "defaults.")
    force_task_id: str | None = Field(None, description="Accepted for A1111 clients; not used.")
    infotext: str | None = Field(
        None, description="Generation parameters text (as in a PNG's 'parameters'): fills the fields not given, "
                          "and adds its settings to `override_settings` where not given.")


class StableDiffusionTxt2ImgProcessingAPI(_GenerationRequest):
    """Body of ``POST /sdapi/v1/txt2img``."""

    enable_hr: bool = Field(False, description="Hires fix: a second pass at `hr_scale` (or `hr_resize_x`/`y`) "
                                               "from the first pass, upscaled by `hr_upscaler`.")
    denoising_strength: float | None = Field(
        None, description="Hires fix: how much of the upscaled first pass is replaced (0 to 1); null is A1111's "
                          "0.75.")
    firstphase_width: int = Field(0, description="Legacy hires first-pass width (not supported; ignored).")
    firstphase_height: int = Field(0, description="Legacy hires first-pass height (not supported; ignored).")
    hr_scale: float = Field(2.0, description="Hires fix: the second pass's size as a multiple of the first's.")
    hr_upscaler: str | None = Field(
        None, description="Hires fix: a latent mode (GET /latent-upscale-modes) or an image upscaler "
                          "(GET /upscalers); null is 'Latent'.")
    hr_second_pass_steps: int = Field(0, description="Hires fix: second-pass steps; 0 is `steps`.")
    hr_resize_x: int = Field(0, description="Hires fix: second-pass width instead of `hr_scale`; 0 keeps the aspect "
                                            "ratio from `hr_resize_y` (both 0: use `hr_scale`).")
    hr_resize_y: int = Field(0, description="Hires fix: second-pass height instead of `hr_scale`; 0 keeps the aspect "
                                            "ratio from `hr_resize_x`.")
    hr_checkpoint_name: str | None = Field(
        None, description="Hires fix: the checkpoint of the second pass (GET /sd-models); null, '' or 'Use same "
                          "checkpoint' keeps the first pass's.")
    hr_sampler_name: str | None = Field(
        None, description="Hires fix: the second pass's sampler; null, '' or 'Use same sampler' is `sampler_name`.")
    hr_scheduler: str | None = Field(
        None, description="Hires fix: the second pass's schedule type; null, '' or 'Use same scheduler' is "
                          "`scheduler`.")
    hr_prompt: str = Field("", description="Hires fix: the second pass's prompt; '' is `prompt`.")
    hr_negative_prompt: str = Field("", description="Hires fix: the second pass's negative prompt; '' is "
                                                    "`negative_prompt`.")
    firstpass_image: str | None = Field(None, description="A1111 hires input image (not supported; ignored).")


class StableDiffusionImg2ImgProcessingAPI(_GenerationRequest):
    """Body of ``POST /sdapi/v1/img2img``."""

    init_images: list[str] | None = Field(
        None, description="Images to start from: base64 or data URLs, PNG/JPEG/WEBP. Image i of a batch uses "
                          "init image i (repeated when there are fewer).")
    resize_mode: int = Field(
        0, description="How an init image of another size becomes width x height: 0 just resize, 1 crop and resize, "
                       "2 resize and fill, 3 just resize (latent upscale).")
    denoising_strength: float | None = Field(0.75, description="How much of the init image is replaced (0 to 1).")
    image_cfg_scale: float | None = Field(None, description="instruct-pix2pix guidance (not supported; ignored).")
    mask: str | None = Field(
        None, description="Inpainting mask (white = repaint): base64 or data URL; an image with transparency is "
                          "read from its alpha channel. Another size than the init image is resized to it.")
    mask_blur_x: int = Field(4, description="Mask blur across, in pixels (a Gaussian; 0: none).")
    mask_blur_y: int = Field(4, description="Mask blur down, in pixels (a Gaussian; 0: none).")
    mask_blur: int | None = Field(None, description="Sets `mask_blur_x` and `mask_blur_y` both.")
    mask_round: bool = Field(True, description="Round the mask to black and white where it meets the latents (and "
                                               "an alpha mask's alpha at 128).")
    inpainting_fill: int = Field(
        0, description="Masked content: 0 fill (the image's blurred colours), 1 original, 2 latent noise, "
                       "3 latent nothing.")
    inpaint_full_res: bool = Field(
        True, description="Inpaint area 'Only masked': sample the mask's region (plus the padding) at width x height "
                          "and paste it back; false: the whole picture. The result has the init image's size.")
    inpaint_full_res_padding: int = Field(0, description="'Only masked': pixels added around the mask's region.")
    inpainting_mask_invert: int = Field(0, description="1 repaints the black area of the mask instead.")
    initial_noise_multiplier: float | None = Field(
        None, description="The initial noise scaled by this; null: the `initial_noise_multiplier` setting.")
    latent_mask: str | None = Field(
        None, description="A second mask (base64) for the latents and the fill only, resized to width x height; the "
                          "paste-back keeps following `mask`.")
    include_init_images: bool = Field(
        False, description="Echo `init_images` and `mask` in the response's `parameters` (null otherwise).")


# Fields accepted for A1111 clients that Serena does not act on, with the values at which A1111 would not act on
# them either (the field's own default is always neutral). Anything else is reported in the response's warnings.
# A second table entry restricts the check to requests where the condition field is set (mask options matter
# only with a mask).
UNSUPPORTED_FIELDS: dict[str, tuple[tuple, str | None]] = {
    "seed_resize_from_h": ((0,), None),
    "seed_resize_from_w": ((0,), None),
    "restore_faces": ((False,), None),
    "s_min_uncond": ((0,), None),
    # webuiapi sends s_tmax=0, s_tmin=0, s_churn=0, s_noise=1 by default: A1111 treats those as "off".
    "s_churn": ((0,), None),
    "s_tmax": ((0,), None),
    "s_tmin": ((0,), None),
    "s_noise": ((1,), None),
    "firstphase_width": ((), None),
    "firstphase_height": ((), None),
    "firstpass_image": (("",), None),
    "image_cfg_scale": ((), None),
}

# -- generation responses --------------------------------------------------------------------------------------


class _GenerationResponse(BaseModel):
    """What a generation returns: A1111's three fields plus Serena's ``warnings``."""

    images: list[str] | None = Field(
        None, title="Image", description="The images as raw base64 (no data: prefix), in `samples_format` with the "
                                         "generation parameters embedded; [] when `send_images` is false.")
    parameters: dict[str, Any] = Field(description="The request as the server understood it.")
    info: str = Field(description="A JSON string: seeds, prompts, infotexts, model, warnings... (A1111's `info`).")
    warnings: list[str] = Field(
        default_factory=list, description="Serena: what was ignored or went wrong without failing the request.")


class TextToImageResponse(_GenerationResponse):
    """Response of ``POST /sdapi/v1/txt2img``."""


class ImageToImageResponse(_GenerationResponse):
    """Response of ``POST /sdapi/v1/img2img``."""


# -- extras ----------------------------------------------------------------------------------------------------


class _ExtrasBase(BaseModel):
    """Fields shared by the extras requests (A1111's ``ExtrasBaseRequest``)."""

    model_config = ConfigDict(allow_inf_nan=False)

    resize_mode: int = Field(
        0, ge=0, le=1, description="0: scale by `upscaling_resize`; 1: to `upscaling_resize_w`x`upscaling_resize_h`.")
    show_extras_results: bool = Field(True, description="Accepted for A1111 clients; not used.")
    gfpgan_visibility: float = Field(0, ge=0, le=1, description="Face restoration (Serena has none; ignored).")
    codeformer_visibility: float = Field(0, ge=0, le=1, description="Face restoration (Serena has none; ignored).")
    codeformer_weight: float = Field(0, ge=0, le=1, description="Face restoration (Serena has none; ignored).")
    upscaling_resize: float = Field(2, ge=1, le=8, description="Scale factor for resize_mode 0.")
    upscaling_resize_w: int = Field(512, ge=1, description="Target width for resize_mode 1.")
    upscaling_resize_h: int = Field(512, ge=1, description="Target height for resize_mode 1.")
    upscaling_crop: bool = Field(True, description="resize_mode 1: crop to the exact target size after scaling.")
    upscaler_1: str = Field("None", description="Upscaler name (GET /upscalers).")
    upscaler_2: str = Field("None", description="Second upscaler, blended in by `extras_upscaler_2_visibility`.")
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1, description="Weight of `upscaler_2`'s result.")
    upscale_first: bool = Field(False, description="Accepted for A1111 clients; upscaling is the only step.")


class ExtrasSingleImageRequest(_ExtrasBase):
    """Body of ``POST /sdapi/v1/extra-single-image``."""

    image: str = Field("", description="The image: base64 or data URL, PNG/JPEG/WEBP.")


class FileData(BaseModel):
    """One image of ``extra-batch-images``."""

    data: str = Field(description="Base64 or data URL of the file.")
    name: str = Field(description="File name.")


class ExtrasBatchImagesRequest(_ExtrasBase):
    """Body of ``POST /sdapi/v1/extra-batch-images``."""

    imageList: list[FileData] = Field(description="The images, each base64 or a data URL.")  # noqa: N815 - A1111's name


class ExtrasSingleImageResponse(BaseModel):
    """Response of ``POST /sdapi/v1/extra-single-image``."""

    html_info: str = Field(description="What was done, as text.")
    image: str = Field(description="The result, raw base64 PNG.")


class ExtrasBatchImagesResponse(BaseModel):
    """Response of ``POST /sdapi/v1/extra-batch-images``."""

    html_info: str = Field(description="What was done, as text.")
    images: list[str] = Field(description="The results, raw base64 PNG, in request order.")


# -- PNG info, progress ----------------------------------------------------------------------------------------


class PNGInfoRequest(BaseModel):
    """Body of ``POST /sdapi/v1/png-info``."""

    image: str = Field(description="The image: base64 or data URL, PNG/JPEG/WEBP.")


class PNGInfoResponse(BaseModel):
    """Response of ``POST /sdapi/v1/png-info``."""

    info: str = Field(description="The generation parameters text, '' when the image has none.")
    items: dict[str, Any] = Field(description="Other metadata of the image.")
    parameters: dict[str, Any] = Field(description="`info` parsed into fields, as the UI pastes it.")


class ProgressResponse(BaseModel):
    """Response of ``GET /sdapi/v1/progress``; read without waiting for the queue."""

    progress: float = Field(description="Fraction of the running job done, 0 to 1.")
    eta_relative: float = Field(description="Estimated seconds left.")
    state: dict[str, Any] = Field(
        description="job, job_count, job_no, sampling_step, sampling_steps, interrupted, skipped, "
                    "stopping_generation (always false: Serena has no 'stop generating'), job_timestamp.")
    current_image: str | None = Field(None, description="A preview of the running job, raw base64 PNG, or null.")
    textinfo: str | None = Field(None, description="Status text.")


# -- lists -----------------------------------------------------------------------------------------------------


class SamplerItem(BaseModel):
    """One entry of ``GET /samplers``; ``options`` holds A1111's sampler options (default schedule type...), every
    value a string as A1111 sends them (``"uses_ensd": "True"``): clients validate that type."""

    name: str
    aliases: list[str] = Field(default_factory=list)
    options: dict[str, str] = Field(default_factory=dict)


class SchedulerItem(BaseModel):
    """One entry of ``GET /schedulers``: a schedule type by API name and label."""

    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class UpscalerItem(BaseModel):
    """One entry of ``GET /upscalers``: the PIL ones, and any an extension registered."""

    model_config = ConfigDict(protected_namespaces=())

    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float = Field(description="Nominal scale factor (A1111 shows 4 for 'None' and the PIL upscalers too).")


class LatentUpscalerModeItem(BaseModel):
    """One entry of ``GET /latent-upscale-modes``: a latent mode of Hires fix's ``hr_upscaler``."""

    name: str


class SDModelItem(BaseModel):
    """One entry of ``GET /sd-models``: a checkpoint found under ``models/Stable-diffusion``."""

    model_config = ConfigDict(protected_namespaces=())

    title: str = Field(description="'name [shorthash]': what `sd_model_checkpoint` shows.")
    model_name: str
    hash: str | None = Field(description="The first 10 hex digits of the sha256.")
    sha256: str | None
    filename: str
    config: str | None = None


class SDVaeItem(BaseModel):
    """One entry of ``GET /sd-vae``: a VAE file under ``models/VAE``."""

    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    filename: str


class HypernetworkItem(BaseModel):
    """A1111 shape; Serena lists none."""

    name: str
    path: str | None = None


class FaceRestorerItem(BaseModel):
    """A1111 shape; Serena lists none."""

    name: str
    cmd_dir: str | None = None


class RealesrganItem(BaseModel):
    """A1111 shape; Serena lists none."""

    name: str
    path: str | None = None
    scale: int | None = None


class PromptStyleItem(BaseModel):
    """One style of the styles files (A1111's shape)."""

    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class LoraItem(BaseModel):
    """One LoRA file (the built-in Lora extension lists them), A1111's shape."""

    name: str
    alias: str | None = None
    path: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class EmbeddingItem(BaseModel):
    step: int | None = Field(default=None, description="Training steps of the embedding, if its file says.")
    sd_checkpoint: str | None = Field(default=None, description="Hash of the checkpoint it was trained on, if known.")
    sd_checkpoint_name: str | None = Field(default=None,
                                           description="Name of the checkpoint it was trained on, if known.")
    shape: int = Field(description="Width of each vector (summed over an SDXL file's clip_l and clip_g).")
    vectors: int = Field(description="Number of vectors: the token positions it takes in a prompt.")


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem] = Field(description="Embeddings the current checkpoint can use, by name.")
    skipped: dict[str, EmbeddingItem] = Field(
        description="Embeddings found that the current checkpoint cannot use (another text encoder width).")


class MemoryResponse(BaseModel):
    ram: dict[str, Any] = Field(description="System memory in bytes: free, used, total.")
    cuda: dict[str, Any] = Field(description="GPU memory in bytes, or {'error': ...} without CUDA.")


class ScriptsList(BaseModel):
    """Script names (lower-case titles) per tab, selectable and always-on ones, as A1111 lists them."""

    txt2img: list[str] = Field(default_factory=list)
    img2img: list[str] = Field(default_factory=list)


class ScriptArg(BaseModel):
    """One argument of a script, in the order ``script_args`` gives them (A1111's shape)."""

    label: str | None = Field(None, description="Name of the argument in the UI; errors name it.")
    value: Any | None = Field(None, description="Default value of the argument.")
    minimum: Any | None = Field(None, description="Smallest allowed value, or null.")
    maximum: Any | None = Field(None, description="Largest allowed value, or null.")
    step: Any | None = Field(None, description="Step of the UI's slider, or null.")
    choices: list[str] | None = Field(None, description="The allowed values, or null for any.")


class ScriptInfo(BaseModel):
    """A script on one tab (a script on both tabs is listed twice, as in A1111)."""

    name: str | None = Field(None, description="The lower-case title.")
    is_alwayson: bool | None = Field(None, description="Runs on every generation, with `alwayson_scripts` args.")
    is_img2img: bool | None = Field(None, description="Listed for img2img (else txt2img).")
    args: list[ScriptArg] = Field(default_factory=list, description="Its arguments, in order.")


class ExtensionItem(BaseModel):
    """A1111's fields ('' where Serena does not track them) plus Serena's load status."""

    name: str
    remote: str = Field("", description="Git remote URL (Serena does not read it: '').")
    branch: str = Field("", description="Git branch (Serena does not read it: '').")
    commit_hash: str = Field("", description="Git commit (Serena does not read it: '').")
    version: str = Field("", description="Short commit hash in A1111 (Serena: '').")
    commit_date: str = Field("", description="Commit time in A1111 (Serena: '').")
    enabled: bool
    group: str | None = Field(None, description="Serena: 'builtin', 'user' or 'package'.")
    loaded: bool | None = Field(None, description="Serena: whether its scripts were registered.")
    problems: list[str] = Field(default_factory=list, description="Serena: why it did not load, or what to fix.")


# -- errors and Serena's own endpoints -------------------------------------------------------------------------


class ErrorResponse(BaseModel):
    """A1111's error body. Serena puts ``{field or key: reason}`` in ``errors`` for 4xx it can attribute."""

    error: str = Field(description="The exception's type name, e.g. 'OverrideError'.")
    detail: str = Field("", description="A message for people.")
    body: str = Field("", description="Unused (A1111 compatibility).")
    errors: dict[str, str] | str = Field(
        "", description="{key: reason} for every bad key or field; a message otherwise.")


class OverrideValidationResponse(BaseModel):
    """Response of ``POST /serena/v1/overrides/validate``: the checks a generation makes, with no side effects."""

    valid: bool = Field(description="Whether a generation with these overrides would start.")
    errors: dict[str, str] = Field(description="Every bad key and why.")
    warnings: list[str] = Field(description="E.g. deprecated option names that were mapped to their current names.")
    normalized: dict[str, Any] = Field(description="The values as they would be applied, by current option name.")


class OverrideLayerItem(BaseModel):
    """One level of overrides in effect."""

    keys: list[str]
    values: dict[str, Any]
    owner: str = Field(description="Who entered the layer (module or function).")
    depth: int = Field(description="1 for the outermost layer.")


class ActiveOverridesResponse(BaseModel):
    """Response of ``GET /serena/v1/overrides/active``."""

    job: str | None = Field(description="The running job's name, or null when idle.")
    overrides: list[OverrideLayerItem] = Field(
        description="The override layers in effect in the running job, outermost first.")


class WorkerItem(BaseModel):
    """One generation worker in ``GET /serena/v1/workers`` (``--workers``/``--ray-address`` only)."""

    name: str = Field(description="The Ray Serve replica's id, as the X-Serena-Worker header names it.")
    pid: int = Field(description="The replica's process id on its machine.")
    models: list[str] = Field(description="Checkpoint files the replica holds in memory, most recently used last.")
    loads: int = Field(description="Checkpoint loads from disk since it started (switches to a model it already "
                                   "held are not loads).")
    busy: bool = Field(description="Whether it is generating now.")
    queue_depth: int = Field(description="Generations on the replica now (0 or 1: each runs one at a time; the "
                                         "rest wait in the deployment's FIFO queue).")
    served: int = Field(description="Generations it has finished since it started.")
    hook_order: str = Field(description="A digest of its extensions' resolved hook order (the same on every "
                                        "replica).")
