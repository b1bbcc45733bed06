"""The HTTP API: A1111's ``/sdapi/v1`` routes and Serena's ``/serena/v1``, registered on a FastAPI app.

Handlers are thin: they turn a request into a processing object (``build_processing``, over the preparation the UI
and the CLI share: ``modules.request_preparation``), queue it through ``dispatch.run`` and shape the result as
A1111 clients parse it. Everything a request can get wrong is checked before it queues: fields (sampler, scheduler,
size limits, images, scripts) and every override key (``opts.check``), so a bad request never waits behind a
running generation and never changes anything.

Errors keep A1111's JSON shape ``{"error", "detail", "body", "errors"}`` (``modules.api.errors``); request
validation stays FastAPI's own ``422 {"detail": [...]}``. Bodies are read within limits by
``modules.api.request_body``, images decoded and encoded by ``modules.api.image_codec``.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import secrets
import sys
from typing import Any

from fastapi import Depends, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from modules import (dispatch, extensions, extra_networks, hires, image_parameters, infotext, jobs, plugins,
                     processing, request_preparation, runtime_utils, scripts, sd_models, sd_samplers, sd_vae,
                     settings_change, shared, styles, textual_inversion, upscalers)
from modules.api import models
from modules.api.errors import validation_error_response
from modules.api.image_codec import check_image_count, decode_images, encode_image
from modules.api.request_body import ApiRoute
from modules.option_info import same_value
from modules.request_preparation import RequestFieldError

log = logging.getLogger("serena.api")



# -- from request to processing object --------------------------------------------------------------------------


def _check_infotext_size(text: str, field: str) -> None:
    # Parsing is linear, but a text of megabytes would still hold a worker thread for seconds.
    problem = request_preparation.over_limit("api_max_infotext_chars", len(text), f"infotext of {len(text)} characters")
    if problem:
        raise RequestFieldError({field: problem})


def apply_infotext(req):
    """``(req, warnings)``: ``req`` with the fields it did not set filled from ``req.infotext``, and the infotext's
    settings added to ``override_settings`` where not given (A1111's ``apply_infotext``, through the shared
    ``request_preparation.paste_infotext``).

    Settings read from someone else's infotext (a VAE this server lacks, say) are skipped with a warning; only
    overrides the client itself sent are an error. A value that is not of its option's type is a 422.
    """
    if not req.infotext:
        return req, []
    _check_infotext_size(req.infotext, "infotext")
    try:
        pasted = request_preparation.paste_infotext(req.infotext)
    except (TypeError, ValueError) as e:
        raise RequestFieldError({"infotext": str(e)}) from None
    if pasted.unreadable:
        raise RequestFieldError({"infotext": "; ".join(pasted.unreadable.values())})
    data = {name: value for name, value in pasted.fields.items() if name in type(req).model_fields}
    data.update(req.model_dump(exclude_unset=True))
    warnings = [f"infotext setting {k} not applied: {reason}" for k, reason in pasted.rejected.items()]
    data["override_settings"] = {**pasted.overrides, **(req.override_settings or {})}
    try:
        return type(req).model_validate(data), warnings
    except ValueError as e:
        raise RequestFieldError({"infotext": f"its values do not fit the request: {e}"}) from None


def fill_native_size(req):
    """``req`` with an omitted ``width``/``height`` set to the native size of the checkpoint it will run on
    (``sd_models.checkpoint_defaults``: ``override_settings.sd_model_checkpoint`` first); an explicit size is kept.

    An override naming no checkpoint gets 512 here: ``build_processing`` refuses it with the override's own error,
    so nothing runs at that size.
    """
    if req.width is not None and req.height is not None:
        return req
    size = sd_models.checkpoint_defaults(req.override_settings).size
    return req.model_copy(update={"width": size if req.width is None else req.width,
                                  "height": size if req.height is None else req.height})


def unsupported_warnings(req) -> list[str]:
    """A warning for every field set to something Serena does not act on, and for every unknown field."""
    warnings = []
    for field, (neutral, only_with) in models.UNSUPPORTED_FIELDS.items():
        if field not in type(req).model_fields or (only_with and not getattr(req, only_with, None)):
            continue
        value = getattr(req, field)
        if value is None or value == type(req).model_fields[field].default or value in neutral:
            continue
        warnings.append(f"`{field}`={value!r} is not supported by Serena and was ignored")
    for field in req.model_extra or {}:
        warnings.append(f"unknown field `{field}` was ignored")
    return warnings


def build_processing(req, cls, **fields) -> processing.StableDiffusionProcessing:
    """The processing object for a generation request, or the error listing everything wrong with it.

    The shared ``request_preparation.build_processing`` checks it before it queues; the API adds its own limits
    limits; the scripts it names are checked with them (``scripts.select``).
    """
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in req.model_dump(exclude=set(req.model_extra or ())).items()
              if k in names and v is not None}
    kwargs.update(fields, sampler_name=req.sampler_name or req.sampler_index,
                  override_settings=dict(req.override_settings or {}), is_api=True,
                  do_not_save_samples=not req.save_images, do_not_save_grid=not req.save_images)
    sampler_field = "sampler_name" if req.sampler_name else "sampler_index"
    errors = request_preparation.check_limits(req)
    kwargs["scripts"], problems = scripts.select(cls.mode, req.script_name, req.script_args, req.alwayson_scripts)
    errors.update(problems)
    p = request_preparation.build_processing(cls, kwargs, sampler_field=sampler_field, errors=errors)
    p.warnings.extend(unsupported_warnings(req))
    return p


def request_parameters(req, *, hide_images: bool = False) -> dict:
    """The request as echoed in ``parameters`` (A1111: ``vars(request)``); img2img hides its images by default."""
    params = req.model_dump(exclude={"include_init_images", *(req.model_extra or ())})
    if hide_images:
        params["init_images"] = params["mask"] = params["latent_mask"] = None
    return params


# -- auth ------------------------------------------------------------------------------------------------------


def parse_credentials(auth: str | None, flag: str = "--api-auth") -> dict[str, str]:
    """``"user:pass,user2:pass2"`` → ``{user: pass}``.

    Each pair splits at its first ``:``, so passwords may hold ``:`` (not ``,``, which separates pairs); white space
    around a pair is dropped. A1111 splits at every ``:`` and fails to start on such passwords.
    """
    credentials = {}
    for item in (auth or "").split(","):
        user, sep, password = item.strip().partition(":")
        if not item.strip():
            continue
        if not sep or not user:
            # The message names no part of the item: it may be a password missing its user.
            raise ValueError(f"{flag}: every credential must be USER:PASSWORD with a non-empty USER")
        credentials[user] = password
    return credentials


# -- the routes ------------------------------------------------------------------------------------------------


# Flags that hold credentials: never shown by the API or logged.
SECRET_FLAGS = ("api_auth", "gradio_auth")


class Api:
    """Registers every API route on ``app``. ``auth`` is ``--api-auth``: HTTP Basic on every route when given."""

    def __init__(self, app, auth: str | None = None):
        self.app = app
        self.credentials = parse_credentials(auth)
        m = models
        get, post = ["GET"], ["POST"]
        routes = [
            ("/sdapi/v1/txt2img", self.text2imgapi, post, m.TextToImageResponse),
            ("/sdapi/v1/img2img", self.img2imgapi, post, m.ImageToImageResponse),
            ("/sdapi/v1/extra-single-image", self.extras_single_image_api, post, m.ExtrasSingleImageResponse),
            ("/sdapi/v1/extra-batch-images", self.extras_batch_images_api, post, m.ExtrasBatchImagesResponse),
            ("/sdapi/v1/png-info", self.pnginfoapi, post, m.PNGInfoResponse),
            ("/sdapi/v1/progress", self.progressapi, get, m.ProgressResponse),
            ("/sdapi/v1/interrupt", self.interruptapi, post, dict[str, Any]),
            ("/sdapi/v1/skip", self.skip, post, None),
            ("/sdapi/v1/options", self.get_config, get, dict[str, Any]),
            ("/sdapi/v1/options", self.set_config, post, None),
            ("/sdapi/v1/cmd-flags", self.get_cmd_flags, get, dict[str, Any]),
            ("/sdapi/v1/samplers", self.get_samplers, get, list[m.SamplerItem]),
            ("/sdapi/v1/schedulers", self.get_schedulers, get, list[m.SchedulerItem]),
            ("/sdapi/v1/upscalers", self.get_upscalers, get, list[m.UpscalerItem]),
            ("/sdapi/v1/latent-upscale-modes", self.get_latent_upscale_modes, get, list[m.LatentUpscalerModeItem]),
            ("/sdapi/v1/sd-models", self.get_sd_models, get, list[m.SDModelItem]),
            ("/sdapi/v1/sd-vae", self.get_sd_vaes, get, list[m.SDVaeItem]),
            ("/sdapi/v1/hypernetworks", self.get_hypernetworks, get, list[m.HypernetworkItem]),
            ("/sdapi/v1/face-restorers", self.get_face_restorers, get, list[m.FaceRestorerItem]),
            ("/sdapi/v1/realesrgan-models", self.get_realesrgan_models, get, list[m.RealesrganItem]),
            ("/sdapi/v1/prompt-styles", self.get_prompt_styles, get, list[m.PromptStyleItem]),
            ("/sdapi/v1/embeddings", self.get_embeddings, get, m.EmbeddingsResponse),
            ("/sdapi/v1/loras", self.get_loras, get, list[m.LoraItem]),
            ("/sdapi/v1/refresh-checkpoints", self.refresh_checkpoints, post, None),
            ("/sdapi/v1/refresh-loras", self.refresh_loras, post, None),
            ("/sdapi/v1/refresh-vae", self.refresh_vae, post, None),
            ("/sdapi/v1/refresh-embeddings", self.refresh_embeddings, post, None),
            ("/sdapi/v1/unload-checkpoint", self.unloadapi, post, dict[str, Any]),
            ("/sdapi/v1/reload-checkpoint", self.reloadapi, post, dict[str, Any]),
            ("/sdapi/v1/memory", self.get_memory, get, m.MemoryResponse),
            ("/sdapi/v1/scripts", self.get_scripts_list, get, m.ScriptsList),
            ("/sdapi/v1/script-info", self.get_script_info, get, list[m.ScriptInfo]),
            ("/sdapi/v1/extensions", self.get_extensions_list, get, list[m.ExtensionItem]),
            ("/serena/v1/hooks", self.get_hooks, get, dict[str, list[str]]),
            ("/serena/v1/overrides/validate", self.validate_overrides, post, m.OverrideValidationResponse),
            ("/serena/v1/overrides/active", self.active_overrides, get, m.ActiveOverridesResponse),
        ]
        for path, endpoint, methods, response_model in routes:
            self.add_api_route(path, endpoint, methods=methods, response_model=response_model)
        # For the whole app (extension routes too): FastAPI's own handler fails on input it cannot encode.
        app.add_exception_handler(RequestValidationError, validation_error_response)

    def add_api_route(self, path: str, endpoint, **kwargs):
        """Add a route with the API's error shape and, with ``--api-auth``, its credentials check."""
        dependencies = [Depends(self.auth)] if self.credentials else []
        error_responses = {code: {"model": models.ErrorResponse} for code in (401, 403, 413, 422, 500)}
        self.app.router.add_api_route(path, endpoint, dependencies=dependencies, route_class_override=ApiRoute,
                                      responses=error_responses, **kwargs)

    async def auth(self, credentials: HTTPBasicCredentials | None = Depends(HTTPBasic(auto_error=False))):
        if credentials is not None:
            # Compare against every entry so the time taken does not tell which user names exist.
            matched = False
            for user, password in self.credentials.items():
                ok_user = secrets.compare_digest(credentials.username.encode(), user.encode())
                ok_password = secrets.compare_digest(credentials.password.encode(), password.encode())
                matched |= ok_user and ok_password
            if matched:
                return True
        raise HTTPException(status_code=401, detail="Incorrect username or password",
                            headers={"WWW-Authenticate": "Basic"})

    # -- generation ----------------------------------------------------------------------------------------------
    def text2imgapi(self, req: models.StableDiffusionTxt2ImgProcessingAPI):
        req, warnings = apply_infotext(req)
        req = fill_native_size(req)
        p = build_processing(req, processing.StableDiffusionProcessingTxt2Img)
        p.warnings.extend(warnings)
        processed = dispatch.run("txt2img", p)
        return models.TextToImageResponse(
            images=[encode_image(i) for i in processed.images] if req.send_images else [],
            parameters=request_parameters(req), info=processed.js(), warnings=processed.warnings)

    def img2imgapi(self, req: models.StableDiffusionImg2ImgProcessingAPI):
        req, warnings = apply_infotext(req)
        req = fill_native_size(req)
        if not req.init_images:
            raise RequestFieldError({"init_images": "img2img needs at least one init image"})
        check_image_count(req.init_images, "init_images")
        items = [(f"init_images[{i}]", data) for i, data in enumerate(req.init_images)]
        masks = [(name, getattr(req, name)) for name in ("mask", "latent_mask") if getattr(req, name)]
        decoded = decode_images(items + masks)
        init_images = decoded[:len(items)]
        masks = dict(zip([name for name, _ in masks], decoded[len(items):]))
        p = build_processing(req, processing.StableDiffusionProcessingImg2Img, init_images=init_images,
                             mask=masks.get("mask"), latent_mask=masks.get("latent_mask"))
        if req.latent_mask and not req.mask:  # as in A1111, a latent mask alone changes nothing
            warnings.append("`latent_mask` was ignored: it acts only together with a `mask`")
        p.warnings.extend(warnings)
        processed = dispatch.run("img2img", p)
        return models.ImageToImageResponse(
            images=[encode_image(i) for i in processed.images] if req.send_images else [],
            parameters=request_parameters(req, hide_images=not req.include_init_images), info=processed.js(),
            warnings=processed.warnings)

    # -- extras --------------------------------------------------------------------------------------------------
    def extras_single_image_api(self, req: models.ExtrasSingleImageRequest):
        [image] = decode_images([("image", req.image)])
        plan = _upscale_plan(req, [image])
        [result] = request_preparation.run_extras(plan, [image])
        return models.ExtrasSingleImageResponse(html_info=plan.describe(), image=encode_image(result))

    def extras_batch_images_api(self, req: models.ExtrasBatchImagesRequest):
        check_image_count(req.imageList, "imageList")
        batch = decode_images([(f"imageList[{i}].data", item.data) for i, item in enumerate(req.imageList)])
        plan = _upscale_plan(req, batch)
        results = request_preparation.run_extras(plan, batch)
        return models.ExtrasBatchImagesResponse(html_info=plan.describe(), images=[encode_image(r) for r in results])

    def pnginfoapi(self, req: models.PNGInfoRequest):
        [image] = decode_images([("image", req.image)])
        text, items = image_parameters.read_parameters(image)
        _check_infotext_size(text, "image")
        return models.PNGInfoResponse(info=text, items=items,
                                      parameters=infotext.parse_generation_parameters(text) if text else {})

    # -- progress and control (never take the queue lock) ----------------------------------------------------------
    # These are ``async def``: they never block, so they answer on the event loop even while queued generations
    # hold every worker thread of the pool (a hung /progress or /interrupt would leave a job unstoppable).
    async def progressapi(self, skip_current_image: bool = False):
        state = jobs.state
        current = state.current_image
        image = None
        if current is not None and not skip_current_image:
            buffer = io.BytesIO()
            current.save(buffer, format="PNG")
            image = base64.b64encode(buffer.getvalue()).decode("ascii")
        snapshot = {"job": state.job, "job_count": state.job_count, "job_no": state.job_no,
                    "sampling_step": state.sampling_step, "sampling_steps": state.sampling_steps,
                    "interrupted": state.interrupted, "skipped": state.skipped, "job_timestamp": state.job_timestamp,
                    # A1111's "stop generating" (finish the current image, then stop) does not exist in Serena.
                    "stopping_generation": False}
        return models.ProgressResponse(progress=state.progress(), eta_relative=state.eta_relative(), state=snapshot,
                                       current_image=image, textinfo=state.textinfo)

    async def interruptapi(self):
        jobs.state.interrupt()
        return {}

    async def skip(self):
        jobs.state.skip()  # A1111 answers null here (and {} for /interrupt)

    # -- options -------------------------------------------------------------------------------------------------
    async def get_config(self):
        # Runs in its own request context: a running generation's overrides are not visible here (seam rule 11).
        return _options_view()

    def set_config(self, req: dict[str, Any]):
        # Keys sent back unchanged (a client posting GET /options back) are not changes: they are not refused even
        # where the option is restricted, and are not stored.
        shown = _options_view()
        settings_change.change_settings({k: v for k, v in req.items() if k not in shown or not same_value(shown[k], v)},
                                        is_api=True)
        return None

    def get_cmd_flags(self):
        flags = dict(vars(shared.cmd_opts))
        # A1111 shows the resolved folders (its defaults are paths, never null).
        flags["data_dir"] = flags.get("data_dir") or shared.data_paths.data_dir
        flags["ui_settings_file"] = flags.get("ui_settings_file") or shared.data_paths.config_file
        for flag in SECRET_FLAGS:  # A1111 shows the passwords to anyone who can call the API
            if flags.get(flag):
                flags[flag] = "<hidden>"
        return flags

    # -- lists ---------------------------------------------------------------------------------------------------
    def get_samplers(self):
        return sd_samplers.samplers_for_api()

    def get_schedulers(self):
        return sd_samplers.schedulers_for_api()

    def get_upscalers(self):
        return [models.UpscalerItem(name=u.name, model_name=u.model_name, model_path=u.model_path,
                                    model_url=u.model_url, scale=u.scale) for u in upscalers.all_upscalers()]

    def get_latent_upscale_modes(self):
        return [models.LatentUpscalerModeItem(name=name) for name in hires.LATENT_UPSCALE_MODES]

    def get_sd_models(self):
        return [models.SDModelItem(title=c.title, model_name=c.model_name, hash=c.shorthash, sha256=c.sha256,
                                   filename=c.filename, config=None) for c in sd_models.list_checkpoints()]

    def get_sd_vaes(self):
        return [models.SDVaeItem(model_name=name, filename=path) for name, path in sd_vae.list_vaes().items()]

    def get_hypernetworks(self):
        return []

    def get_face_restorers(self):
        return []

    def get_realesrgan_models(self):
        return []

    def get_prompt_styles(self):
        return [models.PromptStyleItem(name=style.name, prompt=style.prompt, negative_prompt=style.negative_prompt)
                for style in styles.database().styles.values()]

    def get_embeddings(self):
        evaluation = textual_inversion.database().evaluate(textual_inversion.checkpoint_widths())

        def item(embedding):
            return models.EmbeddingItem(step=embedding.step, sd_checkpoint=embedding.sd_checkpoint,
                                        sd_checkpoint_name=embedding.sd_checkpoint_name, shape=embedding.shape,
                                        vectors=embedding.count)

        return models.EmbeddingsResponse(
            loaded={name: item(e) for name, e in evaluation.loaded.items()},
            skipped={name: item(e) for name, (e, _) in evaluation.skipped.items()})

    def get_loras(self):
        network = extra_networks.registered().get("lora")
        return network.items() if network is not None else []

    def refresh_loras(self):
        network = extra_networks.registered().get("lora")
        if network is not None:
            network.refresh()

    def get_memory(self):
        import psutil
        ram = psutil.virtual_memory()
        cuda: dict[str, Any] = {"error": "unavailable"}
        torch = sys.modules.get("torch")  # only if a model made it load: a memory query must not import torch
        if torch is not None and torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            cuda = {"system": {"free": free, "used": total - free, "total": total},
                    "allocated": {"current": torch.cuda.memory_allocated(), "peak": torch.cuda.max_memory_allocated()},
                    "reserved": {"current": torch.cuda.memory_reserved(), "peak": torch.cuda.max_memory_reserved()}}
        return models.MemoryResponse(ram={"free": ram.available, "used": ram.total - ram.available,
                                          "total": ram.total}, cuda=cuda)

    def get_scripts_list(self):
        # A1111 lists always-on scripts here too (its ``scripts`` holds both kinds), by lower-case title.
        return models.ScriptsList(**{tab: [s.name for s in scripts.available(tab)] for tab in scripts.TABS})

    def get_script_info(self):
        return [models.ScriptInfo(**info) for info in scripts.api_info()]

    def get_extensions_list(self):
        # A1111's git fields are strings; Serena does not read extensions' git state, so they are "".
        return [models.ExtensionItem(name=e.name, enabled=e.enabled, group=e.group, loaded=e.loaded,
                                     problems=list(e.problems)) for e in extensions.extensions()]

    # -- models (under the queue lock: the loaded-models cache belongs to the running job) -------------------------
    def refresh_checkpoints(self):
        with jobs.queue_lock:
            sd_models.refresh_checkpoints()

    def refresh_embeddings(self):
        with jobs.queue_lock:  # A1111's: a running generation keeps the files it started with
            textual_inversion.database().scan(force=True)

    def refresh_vae(self):
        sd_vae.list_vaes()  # read from disk on every call: there is no list to refresh, only a request to honour

    def unloadapi(self):
        with jobs.queue_lock:
            sd_models.model_manager.unload_all()
        return {}

    def reloadapi(self):
        if dispatch.is_remote():
            return {}  # scale-out: workers load what their generations need; the front holds no model
        with jobs.queue_lock:
            sd_models.current_model()
        return {}

    # -- Serena ----------------------------------------------------------------------------------------------------
    def get_hooks(self):
        return plugins.host.hook_order()

    def validate_overrides(self, req: dict[str, Any]):
        check = shared.opts.check(req, for_override=True)
        return models.OverrideValidationResponse(valid=not check.errors, errors=check.errors, warnings=check.warnings,
                                                 normalized=check.values)

    async def active_overrides(self):
        layers = [layer for stack in runtime_utils.running_overrides().values() for layer in stack]
        return models.ActiveOverridesResponse(job=jobs.state.job or None, overrides=layers)


def _options_view() -> dict:
    """Every registered option's effective value in this context (stored, else default).

    An unset ``sd_model_checkpoint`` shows the checkpoint generations use (A1111 always shows one; clients such as
    webuiapi's ``util_get_current_model`` read it).
    """
    opts = shared.opts
    view = {key: opts.get(key) for key in opts.data_labels}
    if view.get("sd_model_checkpoint") is None:
        default = sd_models.default_checkpoint()
        view["sd_model_checkpoint"] = default.title if default is not None else None
    return view


def _upscale_plan(req, batch: list) -> upscalers.Plan:
    """The extras request as an upscale plan (``request_preparation.prepare_extras``, as the Extras tab), or the
    error naming the fields that cannot be honoured."""
    warnings = [f"`{f}` is not supported by Serena (no face restorers) and was ignored"
                for f in ("gfpgan_visibility", "codeformer_visibility") if getattr(req, f)]
    return request_preparation.prepare_extras(
        batch, upscaler_1=req.upscaler_1, upscaler_2=req.upscaler_2, visibility=req.extras_upscaler_2_visibility,
        resize_mode=req.resize_mode, scale=req.upscaling_resize, width=req.upscaling_resize_w,
        height=req.upscaling_resize_h, crop=req.upscaling_crop, warnings=warnings)
