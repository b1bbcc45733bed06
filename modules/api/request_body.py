"""Reading an API request body within this server's limits, before FastAPI parses and validates it.

A body above ``api_max_request_bytes`` or with more than ``api_max_json_values`` values is a 413; one that is not
JSON text (``NaN``, lone surrogates, invalid UTF-8, nesting too deep) a 422 naming each place. ``ApiRoute`` runs
the check on every API route and turns what a handler raises into A1111's error shape (``errors.error_response``).
"""

from __future__ import annotations

import math
import re

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from modules import shared
from modules.api.errors import MAX_LISTED_ERRORS, error_response
from modules.request_preparation import RequestFieldError


class RequestTooLarge(RequestFieldError):
    """A request body above ``api_max_request_bytes`` (before any of it is parsed) or holding more JSON values than
    ``api_max_json_values`` (before it is validated): 413."""

    status_code = 413


_SURROGATE = re.compile("[\ud800-\udfff]")


def _body_problems(body, max_values: int) -> list[dict]:
    """Where a parsed JSON body holds what is not JSON text: ``NaN``/``Infinity`` (Python's and JavaScript's
    encoders write them; RFC 8259 has no such numbers) and lone surrogates (``"\\ud800"``: valid JSON syntax, but no
    Unicode character), in values or keys. Each as a FastAPI validation error whose ``loc`` is its place in the
    body; the first ``MAX_LISTED_ERRORS``, in document order.

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
        return len(problems) >= MAX_LISTED_ERRORS

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
