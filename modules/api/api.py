"""The HTTP API: A1111's ``/sdapi/v1`` routes and Serena's ``/serena/v1``, registered on a FastAPI app.

Handlers are thin: they turn a request into a processing object (``build_processing``), queue it through
``jobs.run_job`` and shape the result as A1111 clients parse it. Everything a request can get wrong is checked
before it queues: fields (sampler, scheduler, size limits, images, scripts) and every override key
(``opts.check``), so a bad request never waits behind a running generation and never changes anything.

Errors keep A1111's JSON shape ``{"error", "detail", "body", "errors"}`` (see ``error_response``); request
validation stays FastAPI's own ``422 {"detail": [...]}``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import logging
import math
import re
import secrets
import sys
from collections.abc import Mapping
from typing import Any

from fastapi import Depends, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from modules import (extensions, images, infotext, jobs, native_size, plugins, processing, runtime_utils, sd_models,
                     sd_samplers, sd_vae, shared, upscalers)
from modules.api import models
from modules.option_info import OptionError, same_value
from modules.options import OptionsRejected, SettingsFrozenError, SettingsSaveError
from modules.runtime_utils import OverrideError

log = logging.getLogger("serena.api")

# Largest side extras may produce: a scale of 8 on a big image would otherwise allocate gigabytes.
MAX_UPSCALED_SIDE = 8192

# Infotext keys that fill request fields (A1111's paste fields for the API).
_INFOTEXT_FIELDS = {
    "Prompt": "prompt", "Negative prompt": "negative_prompt", "Steps": "steps", "Sampler": "sampler_name",
    "Schedule type": "scheduler", "CFG scale": "cfg_scale", "Seed": "seed", "Size-1": "width", "Size-2": "height",
    "Variation seed": "subseed", "Variation seed strength": "subseed_strength",
    "Denoising strength": "denoising_strength",
}


# -- errors ----------------------------------------------------------------------------------------------------


class RequestFieldError(ValueError):
    """Request fields Serena cannot act on (unknown sampler, too large, bad image...): ``errors`` maps each to why."""

    status_code = 422

    def __init__(self, errors: Mapping[str, str]):
        self.errors = dict(errors)
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.errors.items()))


class RequestTooLarge(RequestFieldError):
    """A request body above ``api_max_request_bytes`` (before any of it is parsed) or holding more JSON values than
    ``api_max_json_values`` (before it is validated): 413."""

    status_code = 413


def _error_body(error: str, detail: str, errors: Any = "") -> dict:
    return {"error": error, "detail": detail, "body": "", "errors": errors}


def error_response(e: Exception) -> JSONResponse:
    """A1111's error JSON for ``e``; 4xx for what the client can fix, 500 (traceback logged) for the rest."""
    if isinstance(e, StarletteHTTPException):  # FastAPI's HTTPException is one
        return JSONResponse(_error_body(type(e).__name__, str(e.detail or ""), str(e)), status_code=e.status_code,
                            headers=e.headers)
    if isinstance(e, SettingsFrozenError):
        return JSONResponse(_error_body(type(e).__name__, str(e), {e.key: e.reason}), status_code=403)
    if isinstance(e, (OptionsRejected, RequestFieldError)):  # OverrideError is an OptionsRejected
        return JSONResponse(_error_body(type(e).__name__, str(e), e.errors),
                            status_code=getattr(e, "status_code", 422))
    if isinstance(e, OptionError):
        return JSONResponse(_error_body(type(e).__name__, str(e), {e.key: e.reason}), status_code=422)
    if isinstance(e, SettingsSaveError):  # the server's disk, not the client: a 5xx; nothing was changed
        log.error("API error: %s", e)
        return JSONResponse(_error_body(type(e).__name__, str(e), str(e)), status_code=500)
    log.error("API error: %s: %s", type(e).__name__, e, exc_info=e)
    return JSONResponse(_error_body(type(e).__name__, "", str(e)), status_code=500)


# What a 422 echoes of the input is cut to this: an error about a 100 MB field must not send it back.
_ECHO_CHARS, _ECHO_ITEMS, _ECHO_DEPTH = 200, 50, 8
# Errors listed in one 422: a list of a million wrong items is a million errors, and their JSON 50 times the body.
_MAX_LISTED = 100


def _json_safe(value, depth: int = 0):
    """``value`` as JSON can always carry it (no NaN, no lone surrogate, no unencodable object), cut short.

    FastAPI's own handler echoes the input as it came, so ``NaN`` in an int field, a lone surrogate or nesting
    deeper than the encoder's recursion limit made the 422 itself fail with a 500.
    """
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else json.dumps(value)  # "NaN", "Infinity": what the client sent
    if isinstance(value, bytes):
        value = value[:_ECHO_CHARS * 4].decode("utf-8", "backslashreplace")
    if isinstance(value, str):
        text = value if len(value) <= _ECHO_CHARS else value[:_ECHO_CHARS] + "..."
        return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, (dict, list, tuple)) and depth >= _ECHO_DEPTH:
        return "..."
    if isinstance(value, dict):
        return {_json_safe(str(k)): _json_safe(v, depth + 1) for k, v in list(value.items())[:_ECHO_ITEMS]}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, depth + 1) for v in value[:_ECHO_ITEMS]]
    return _json_safe(str(value))


def validation_error_response(request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's ``422 {"detail": [...]}``: the first ``_MAX_LISTED`` errors, each made JSON-safe (``_json_safe``),
    and one ``too_many_errors`` entry counting the rest."""
    errors = exc.errors()
    detail = [_json_safe(error, -1) for error in errors[:_MAX_LISTED]]  # -1: the input's depth counts from 0
    if len(errors) > _MAX_LISTED:
        detail.append({"type": "too_many_errors", "loc": ["body"], "input": None,
                       "msg": f"{len(errors) - _MAX_LISTED} more errors not listed"})
    return JSONResponse({"detail": detail}, status_code=422)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _body_problems(body, max_values: int) -> list[dict]:
    """Where a parsed JSON body holds what is not JSON text: ``NaN``/``Infinity`` (Python's and JavaScript's
    encoders write them; RFC 8259 has no such numbers) and lone surrogates (``"\\ud800"``: valid JSON syntax, but no
    Unicode character), in values or keys. Each as a FastAPI validation error whose ``loc`` is its place in the
    body; the first ``_MAX_LISTED``, in document order.

    Anywhere in the body, not only in typed fields: ``override_settings``, ``comments`` or an option value would
    otherwise carry them into options, the tokenizer or the response. A body of more than ``max_values`` values is
    ``RequestTooLarge``. Depth first with a stack of iterators and paths as linked ``(parent, key)`` pairs: memory
    grows with the depth only, and a value costs the same at any depth.
    """
    problems: list[dict] = []

    def report(path, key, kind, value) -> bool:
        loc = [key]
        while path is not None:
            path, step = path
            loc.append(step)
        message = ("Input should be a finite number" if kind == "finite_number"
                   else "Input should be Unicode text; it holds a lone surrogate")
        problems.append({"type": kind, "loc": tuple(reversed(loc)), "msg": message, "input": value})
        return len(problems) >= _MAX_LISTED

    stack = [(None, iter((("body", body),)))]
    count = 0
    while stack:
        path, children = stack[-1]
        for key, value in children:
            count += 1
            if count > max_values:
                raise RequestTooLarge({"body": f"more than {max_values} JSON values are above this server's limit "
                                               f"(option api_max_json_values)"})
            if type(key) is str and not key.isascii() and _SURROGATE.search(key):  # the key is the bad text
                if report(path, key, "string_unicode", key):
                    return problems
                continue
            kind = type(value)
            if kind is str:
                if not value.isascii() and _SURROGATE.search(value) and report(path, key, "string_unicode", value):
                    return problems
            elif kind is float:
                if not math.isfinite(value) and report(path, key, "finite_number", value):
                    return problems
            elif kind is dict or kind is list:
                stack.append(((path, key), iter(value.items()) if kind is dict else enumerate(value)))
                break
        else:
            stack.pop()
    return problems


def _is_json(request) -> bool:
    # FastAPI's rule: a body is parsed as JSON when its content type is application/json or application/*+json.
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


async def read_request(request, has_body: bool) -> None:
    """Read the body within ``api_max_request_bytes`` (``RequestTooLarge``) and, for a route with a JSON body,
    parse it and check it (``RequestValidationError``); the route then uses what was read here.

    A body that is not JSON text (invalid UTF-8, nested too deep for the parser, an integer of more digits than
    Python converts, a syntax error) is FastAPI's ``422 json_invalid``, as FastAPI answers a syntax error; what
    ``_body_problems`` finds is a 422 naming each place.
    """
    limit = shared.opts.api_max_request_bytes

    def too_large(size: str) -> RequestTooLarge:
        return RequestTooLarge({"body": f"{size} is above this server's limit of {limit} bytes "
                                        f"(option api_max_request_bytes)"})

    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large(f"a body of {int(length)} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():  # a chunked body has no Content-Length: counted as it arrives
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise too_large(f"a body of at least {size} bytes")
    body = request._body = b"".join(chunks)  # Starlette's cache of the body: the route reads it from there
    if not (has_body and body and _is_json(request)):
        return
    try:
        parsed = await request.json()  # cached too, for the route
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        position = getattr(e, "pos", None) or getattr(e, "start", None) or 0
        reason = "nested too deeply" if isinstance(e, RecursionError) else getattr(e, "msg", None) or str(e)
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", position), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": reason}}]) from None
    # In a worker thread: walking a big body must not stall /progress and /interrupt on the event loop.
    problems = await run_in_threadpool(_body_problems, parsed, shared.opts.api_max_json_values)
    if problems:
        raise RequestValidationError(problems)


class ApiRoute(APIRoute):
    """A route whose errors come back in A1111's shape. Scoped to the API's routes: the UI's stay untouched."""

    def get_route_handler(self):
        handler = super().get_route_handler()
        has_body = self.body_field is not None

        async def shaped_handler(request):
            try:
                await read_request(request, has_body)
                return await handler(request)
            except RequestValidationError:
                raise  # FastAPI's 422 {"detail": [...]} (made JSON-safe by ``validation_error_response``)
            except Exception as e:  # noqa: BLE001 - every failure becomes a response; none may hang the client
                return error_response(e)

        return shaped_handler


# -- images ----------------------------------------------------------------------------------------------------

_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
_ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")


def _open_image(data: str, field: str) -> Image.Image:
    """A PIL image from base64 or a data URL, its header read but not its pixels; ``RequestFieldError`` naming
    ``field`` when it is not one.

    URLs are refused: the server never fetches what a request points at.
    """
    if not isinstance(data, str) or not data.strip():
        raise RequestFieldError({field: "no image given"})
    if data.startswith(("http://", "https://")):
        raise RequestFieldError({field: "URLs are not fetched; send the image as base64 or a data URL"})
    payload = _DATA_URL.sub("", data.strip(), count=1)
    try:
        raw = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestFieldError({field: "not valid base64"}) from None
    try:
        image = Image.open(io.BytesIO(raw))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise RequestFieldError({field: f"not a readable image ({e})"}) from None
    if image.format not in _ACCEPTED_FORMATS:
        raise RequestFieldError({field: f"{image.format} images are not accepted; send PNG, JPEG or WEBP"})
    return image


def check_image_count(images: list, field: str) -> None:
    """``RequestFieldError`` naming ``field`` when a request sends more images than ``api_max_input_images``."""
    limit = shared.opts.api_max_input_images
    if len(images) > limit:
        raise RequestFieldError({field: f"{len(images)} images are above this server's limit of {limit} "
                                        f"(option api_max_input_images)"})


def decode_images(items: list[tuple[str, str]]) -> list[Image.Image]:
    """The images of ``(field, base64)`` pairs, decoded; ``RequestFieldError`` naming the field when one is not an
    image, or when together they hold more pixels than ``api_max_input_pixels``.

    The pixel limit is checked from the headers, before any pixel is decoded: a 13,000 x 13,000 PNG of one colour
    is 27 KB of base64 and 565 MB once decoded.
    """
    opts = shared.opts
    opened = [(field, _open_image(data, field)) for field, data in items]
    total = 0
    for field, image in opened:
        total += image.width * image.height
        if total > opts.api_max_input_pixels:
            raise RequestFieldError({field: f"the images up to this one hold {total} pixels, above this server's "
                                            f"limit of {opts.api_max_input_pixels} for one request (option "
                                            f"api_max_input_pixels)"})
    for field, image in opened:
        try:
            image.load()
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise RequestFieldError({field: f"not a readable image ({e})"}) from None
    return [image for _, image in opened]


# EXIF segments hold at most 64 KiB; longer parameters only fit in a PNG text chunk.
_EXIF_TEXT_LIMIT = 60000


def encode_image(image: Image.Image) -> str:
    """Raw base64 of ``image`` in ``samples_format`` with its ``parameters`` embedded (as saved files are).

    JPEG/WEBP is used when it keeps everything: no alpha channel and parameters short enough for EXIF;
    otherwise PNG (a text chunk holds any length and keeps transparency).
    """
    parameters = image.info.get("parameters")
    fmt = str(shared.opts.samples_format).lower()
    simple = image.mode in ("RGB", "L") and len((parameters or "").encode("utf-16-be")) < _EXIF_TEXT_LIMIT
    if fmt not in ("jpg", "jpeg", "webp") or not simple:
        fmt = "png"
    buffer = io.BytesIO()
    images.encode_image(image, fmt, parameters, buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def read_parameters(image: Image.Image) -> tuple[str, dict]:
    """The ``parameters`` text of an image (PNG text chunk or EXIF UserComment) and its other metadata."""
    items = {k: v for k, v in image.info.items() if isinstance(v, (str, int, float, bool))}
    text = items.pop("parameters", None)
    if text is None:
        exif = image.getexif()
        comment = exif.get(0x9286) or exif.get_ifd(0x8769).get(0x9286)
        text = _exif_text(comment) if comment else None
    for key in ("exif", "icc_profile"):
        items.pop(key, None)
    return text or "", items


def _exif_text(value) -> str:
    if isinstance(value, str):
        return value
    if value[:8] == b"UNICODE\0":
        body = value[8:]
        # Writers disagree on the byte order of UNICODE; a BOM or the zero bytes of ASCII text tell.
        return body.decode("utf-16-le" if body[1:2] == b"\0" else "utf-16-be", errors="replace")
    if value[:8] in (b"ASCII\0\0\0", b"\0" * 8):
        value = value[8:]
    return value.decode("utf-8", errors="replace")


# -- from request to processing object --------------------------------------------------------------------------


# Every prompt a generation request may carry, hires fix ones too (ignored, but still parsed and echoed).
_PROMPT_FIELDS = ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt")


def _check_limits(req) -> dict:
    opts = shared.opts
    errors = {}
    for field, key in (("width", "api_max_width"), ("height", "api_max_height"), ("steps", "api_max_steps")):
        limit = opts.get(key)
        if getattr(req, field) > limit:
            errors[field] = f"{getattr(req, field)} is above this server's limit of {limit} (option {key})"
    count = req.batch_size * req.n_iter
    if count > opts.api_max_images:
        errors["batch_size"] = (f"batch_size x n_iter = {count} images is above this server's limit of "
                                f"{opts.api_max_images} (option api_max_images)")
    for field in _PROMPT_FIELDS:
        text = getattr(req, field, None) or ""
        if len(text) > opts.api_max_prompt_chars:
            errors[field] = (f"{len(text)} characters are above this server's limit of {opts.api_max_prompt_chars} "
                             f"(option api_max_prompt_chars)")
    return errors


def _check_scripts(req) -> dict:
    # Serena has no A1111 scripts: a request that depends on one would silently do something else.
    errors = {}
    if req.script_name:
        errors["script_name"] = f"no script named {req.script_name!r}; this server has none (GET /sdapi/v1/scripts)"
    if req.alwayson_scripts:
        names = ", ".join(map(repr, req.alwayson_scripts))
        errors["alwayson_scripts"] = f"no always-on script named {names}; this server has none"
    return errors


def _resolve_sampling(req) -> tuple[dict, dict]:
    """Canonical sampler and schedule type names; A1111's old combined names ("DPM++ 2M Karras") are read too."""
    sampler_field = "sampler_name" if req.sampler_name else "sampler_index"
    name = req.sampler_name or req.sampler_index
    try:
        sampler, scheduler = sd_samplers.resolve_sampler_and_scheduler(name, req.scheduler)
    except ValueError:
        errors = {}
        for field, resolve, value in ((sampler_field, sd_samplers.resolve_sampler, name),
                                      ("scheduler", sd_samplers.resolve_scheduler, req.scheduler)):
            try:
                resolve(value)
            except ValueError as e:
                errors[field] = str(e)
        return {}, errors
    return {"sampler_name": sampler.name, "scheduler": scheduler.label}, {}


def _check_infotext_size(text: str, field: str) -> None:
    # Parsing is linear, but a text of megabytes would still hold a worker thread for seconds.
    limit = shared.opts.api_max_infotext_chars
    if len(text) > limit:
        raise RequestFieldError({field: f"infotext of {len(text)} characters is above this server's limit of "
                                        f"{limit} (option api_max_infotext_chars)"})


def apply_infotext(req):
    """``(req, warnings)``: ``req`` with the fields it did not set filled from ``req.infotext``, and the infotext's
    settings added to ``override_settings`` where not given (A1111's ``apply_infotext``).

    The checkpoint in an infotext is not applied: A1111 does not switch models on paste by default
    (``disable_weights_auto_swap``), and an image made on a model this server lacks must still be reproducible.
    """
    if not req.infotext:
        return req, []
    _check_infotext_size(req.infotext, "infotext")
    try:
        params = infotext.parse_generation_parameters(req.infotext)
        from_text = infotext.infotext_to_overrides(params, shared.opts.data_labels)
    except (TypeError, ValueError) as e:
        raise RequestFieldError({"infotext": str(e)}) from None
    data = {field: params[key] for key, field in _INFOTEXT_FIELDS.items() if key in params and params[key] != ""}
    data.update(req.model_dump(exclude_unset=True))
    from_text.pop("sd_model_checkpoint", None)
    from_text = {k: v for k, v in from_text.items() if v != shared.opts.get(k)}
    # Settings read from someone else's infotext (a VAE this server lacks, say) are skipped with a warning; only
    # overrides the client itself sent are an error.
    check = shared.opts.check(from_text, for_override=True)
    warnings = [f"infotext setting {k} not applied: {reason}" for k, reason in check.errors.items()]
    overrides = {k: v for k, v in from_text.items() if k not in check.errors}
    overrides.update(req.override_settings or {})
    data["override_settings"] = overrides
    try:
        return type(req).model_validate(data), warnings
    except ValueError as e:
        raise RequestFieldError({"infotext": f"its values do not fit the request: {e}"}) from None


def fill_native_size(req):
    """``req`` with an omitted ``width``/``height`` set to the native size of the checkpoint it will run on
    (``override_settings.sd_model_checkpoint`` first); an explicit size is kept as sent.

    An override naming no checkpoint falls back to 512 here: ``build_processing`` refuses it with the override's
    own error, so nothing runs at that size.
    """
    if req.width is not None and req.height is not None:
        return req
    try:
        size = native_size.for_generation(req.override_settings)
    except (ValueError, OSError):
        size = native_size.SD_DEFAULT_SIZE
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

    Checked here, before the request queues: scripts, sampler and scheduler names, size limits, the processing
    object's own input checks, and every override key (``OverrideError``: nothing applied, no hook fired).
    """
    # 1. Fields: scripts, sampler/scheduler names, limits (all reported together)
    sampling, errors = _resolve_sampling(req)
    errors.update(_check_scripts(req))
    errors.update(_check_limits(req))
    if errors:
        raise RequestFieldError(errors)
    # 2. Build p from every request field the processing class also has; None means "the class default"
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in req.model_dump(exclude=set(req.model_extra or ())).items()
              if k in names and v is not None}
    kwargs.update(sampling, **fields)
    kwargs.update(override_settings=dict(req.override_settings or {}), is_api=True,
                  do_not_save_samples=not req.save_images, do_not_save_grid=not req.save_images)
    p = cls(**kwargs)
    try:
        p.check_inputs()
    except ValueError as e:
        field = re.search(r"`(\w+)`", str(e))
        raise RequestFieldError({field.group(1) if field else "request": str(e)}) from None
    # 3. Overrides: the same checks temporary_opts makes, before the queue lock
    check = shared.opts.check(p.override_settings, for_override=True)
    if check.errors:
        raise OverrideError(check.errors)
    p.warnings.extend(unsupported_warnings(req))
    return p


def request_parameters(req, *, hide_images: bool = False) -> dict:
    """The request as echoed in ``parameters`` (A1111: ``vars(request)``); img2img hides its images by default."""
    params = req.model_dump(exclude={"include_init_images", *(req.model_extra or ())})
    if hide_images:
        params["init_images"] = params["mask"] = None
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
            ("/sdapi/v1/refresh-vae", self.refresh_vae, post, None),
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
        processed = jobs.run_job("txt2img", processing.process_images, p)
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
        decoded = decode_images(items + [("mask", req.mask)] if req.mask else items)
        init_images, mask = decoded[:len(items)], (decoded[-1] if req.mask else None)
        p = build_processing(req, processing.StableDiffusionProcessingImg2Img, init_images=init_images, mask=mask)
        p.warnings.extend(warnings)
        processed = jobs.run_job("img2img", processing.process_images, p)
        return models.ImageToImageResponse(
            images=[encode_image(i) for i in processed.images] if req.send_images else [],
            parameters=request_parameters(req, hide_images=not req.include_init_images), info=processed.js(),
            warnings=processed.warnings)

    # -- extras --------------------------------------------------------------------------------------------------
    def extras_single_image_api(self, req: models.ExtrasSingleImageRequest):
        [image] = decode_images([("image", req.image)])
        plan = _upscale_plan(req, [image])
        [result] = jobs.run_job("extras", upscalers.run_plan, plan, [image])
        return models.ExtrasSingleImageResponse(html_info=plan.describe(), image=encode_image(result))

    def extras_batch_images_api(self, req: models.ExtrasBatchImagesRequest):
        check_image_count(req.imageList, "imageList")
        batch = decode_images([(f"imageList[{i}].data", item.data) for i, item in enumerate(req.imageList)])
        plan = _upscale_plan(req, batch)
        results = jobs.run_job("extras", upscalers.run_plan, plan, batch)
        return models.ExtrasBatchImagesResponse(html_info=plan.describe(), images=[encode_image(r) for r in results])

    def pnginfoapi(self, req: models.PNGInfoRequest):
        [image] = decode_images([("image", req.image)])
        text, items = read_parameters(image)
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
        opts = shared.opts
        if opts.frozen:
            raise SettingsFrozenError()
        # Keys sent back unchanged (a client posting GET /options back) are not changes: they are not refused even
        # where the option is restricted, and are not stored.
        shown = _options_view()
        changed = {k: v for k, v in req.items() if k not in shown or not same_value(shown[k], v)}
        check = opts.check(changed, is_api=True)
        if check.errors:
            raise OptionsRejected(check.errors)
        if not changed:
            return None
        # Under the queue lock: a generation never sees stored options (or its model) change half-way.
        with jobs.queue_lock:
            opts.set_many(changed, is_api=True, save=True)
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
        return []  # latent upscaling belongs to hires fix, which Serena does not implement

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
        return []

    def get_embeddings(self):
        return models.EmbeddingsResponse(loaded={}, skipped={})

    def get_loras(self):
        return []

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
        return models.ScriptsList(txt2img=[], img2img=[])

    def get_script_info(self):
        return []

    def get_extensions_list(self):
        # A1111's git fields are strings; Serena does not read extensions' git state, so they are "".
        return [models.ExtensionItem(name=e.name, enabled=e.enabled, group=e.group, loaded=e.loaded,
                                     problems=list(e.problems)) for e in extensions.extensions()]

    # -- models (under the queue lock: the loaded-models cache belongs to the running job) -------------------------
    def refresh_checkpoints(self):
        with jobs.queue_lock:
            sd_models.refresh_checkpoints()

    def refresh_vae(self):
        sd_vae.list_vaes()  # read from disk on every call: there is no list to refresh, only a request to honour

    def unloadapi(self):
        with jobs.queue_lock:
            sd_models.model_manager.unload_all()
        return {}

    def reloadapi(self):
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
    """The extras request as an upscale plan, or the error naming the fields that cannot be honoured."""
    errors, found = {}, {}
    for field in ("upscaler_1", "upscaler_2"):
        try:
            found[field] = upscalers.resolve(getattr(req, field))
        except ValueError as e:
            errors[field] = str(e)
    if errors:
        raise RequestFieldError(errors)
    warnings = [f"`{f}` is not supported by Serena (no face restorers) and was ignored"
                for f in ("gfpgan_visibility", "codeformer_visibility") if getattr(req, f)]
    plan = upscalers.Plan(upscaler_1=found["upscaler_1"], upscaler_2=found["upscaler_2"],
                          upscaler_2_visibility=req.extras_upscaler_2_visibility, resize_mode=req.resize_mode,
                          scale=req.upscaling_resize, width=req.upscaling_resize_w, height=req.upscaling_resize_h,
                          crop=req.upscaling_crop, warnings=warnings)
    if not plan.active and found["upscaler_2"].upscale is not None and plan.upscaler_2_visibility > 0:
        warnings.append("`upscaler_2` was ignored: it blends into the result of `upscaler_1`, which is None")
    if plan.active:
        largest = max((max(plan.scaled_size(image)) for image in batch), default=0)
        if largest > MAX_UPSCALED_SIDE:
            field = "upscaling_resize" if req.resize_mode == 0 else "upscaling_resize_w"
            raise RequestFieldError({field: f"the result would be {largest} pixels wide or high; the limit is "
                                            f"{MAX_UPSCALED_SIDE}"})
        total = sum(w * h for w, h in map(plan.scaled_size, batch))
        limit = shared.opts.api_max_output_pixels
        if total > limit:
            field = "upscaling_resize" if req.resize_mode == 0 else "upscaling_resize_w"
            raise RequestFieldError({field: f"the results would hold {total} pixels together, above this server's "
                                            f"limit of {limit} for one request (option api_max_output_pixels)"})
    return plan
