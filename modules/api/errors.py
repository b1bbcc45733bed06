"""The API's error responses: A1111's JSON shape ``{"error", "detail", "body", "errors"}`` for what a handler
raises, and FastAPI's own ``422 {"detail": [...]}`` for request validation, made safe to encode."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from modules.dispatch import WorkerUnavailable
from modules.option_info import OptionError
from modules.options import OptionsRejected, SettingsFrozenError, SettingsSaveError
from modules.request_preparation import RequestFieldError
from modules.upscalers import UpscalerFailed

log = logging.getLogger("serena.api")


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
    if isinstance(e, UpscalerFailed):  # an upscaler the request chose failed mid-job: name the field that chose it
        return JSONResponse(_error_body(type(e).__name__, str(e), {e.field or "upscaler": str(e)}), status_code=422)
    if isinstance(e, OptionError):
        return JSONResponse(_error_body(type(e).__name__, str(e), {e.key: e.reason}), status_code=422)
    if isinstance(e, WorkerUnavailable):  # scale-out: the replica died; Ray Serve starts another one
        log.error("API error: %s", e)
        return JSONResponse(_error_body(type(e).__name__, str(e), str(e)), status_code=503)
    if isinstance(e, SettingsSaveError):  # the server's disk, not the client: a 5xx; nothing was changed
        log.error("API error: %s", e)
        return JSONResponse(_error_body(type(e).__name__, str(e), str(e)), status_code=500)
    log.error("API error: %s: %s", type(e).__name__, e, exc_info=e)
    return JSONResponse(_error_body(type(e).__name__, "", str(e)), status_code=500)


# What a 422 echoes of the input is cut to this: an error about a 100 MB field must not send it back.
_ECHO_CHARS, _ECHO_ITEMS, _ECHO_DEPTH = 200, 50, 8
# Errors listed in one 422: a list of a million wrong items is a million errors, and their JSON 50 times the body.
MAX_LISTED_ERRORS = 100


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
    """FastAPI's ``422 {"detail": [...]}``: the first ``MAX_LISTED_ERRORS`` errors, each made JSON-safe
    (``_json_safe``), and one ``too_many_errors`` entry counting the rest."""
    errors = exc.errors()
    detail = [_json_safe(error, -1) for error in errors[:MAX_LISTED_ERRORS]]  # -1: the input's depth counts from 0
    if len(errors) > MAX_LISTED_ERRORS:
        detail.append({"type": "too_many_errors", "loc": ["body"], "input": None,
                       "msg": f"{len(errors) - MAX_LISTED_ERRORS} more errors not listed"})
    return JSONResponse({"detail": detail}, status_code=422)
