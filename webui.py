"""The composition root: parse flags, initialise, build the FastAPI app (API + web UI), serve it with uvicorn while
the starting checkpoint loads behind the generation queue.

``python launch.py`` prepares the environment and runs this file with the same flags.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import threading
import time

from modules import cmd_args, extensions, initialize, jobs, plugins, shared

log = logging.getLogger("serena")


def create_app(cmd_opts, workers=None):
    """The FastAPI app: A1111 API under /sdapi/v1, Serena's under /serena/v1, the gradio UI at / (unless --nowebui).

    Extension routes (``on_app_started``) are added before the UI is mounted: a route declared after gradio is
    mounted at ``/`` is shadowed by it. ``workers`` (``scale_out.Front``, with ``--workers``) adds
    ``/serena/v1/workers`` and the ``X-Serena-Worker`` header.
    """
    from fastapi import FastAPI

    from modules.api.api import Api

    @contextlib.asynccontextmanager
    async def lifespan(app):
        print(f"Serena ready on {getattr(app.state, 'url', 'an ASGI server')}", flush=True)
        yield

    # With --api-auth the API's description is protected like the API itself (docs/security.md).
    hidden_docs = {"docs_url": None, "redoc_url": None, "openapi_url": None} if cmd_opts.api_auth else {}
    app = FastAPI(title="Serena", description="Stable Diffusion web UI runtime with an A1111-compatible API",
                  lifespan=lifespan, **hidden_docs)
    api = Api(app, auth=cmd_opts.api_auth)
    if workers is not None:
        from modules.api.models import WorkerItem
        api.add_api_route("/serena/v1/workers", workers.workers, methods=["GET"], response_model=list[WorkerItem])
    if cmd_opts.api_auth:
        add_protected_docs(app, api.auth)
    plugins.host.call("on_app_started", app=app)
    if not cmd_opts.nowebui:
        import gradio as gr

        from modules.ui import create_ui
        blocks = create_ui()
        from modules.api.api import parse_credentials
        logins = list(parse_credentials(cmd_opts.gradio_auth, "--gradio-auth").items()) or None
        if cmd_opts.listen and logins is None:
            log.warning("--listen without --gradio-auth: anyone who can reach this machine can use the web UI "
                        "(generate, change settings); --api-auth does not cover it (docs/security.md)")
        app = gr.mount_gradio_app(app, blocks, path="/", footer_links=["api"], auth=logins)
    add_middleware(app, cmd_opts)
    if workers is not None:
        from modules.scale_out import WorkerHeader
        app.add_middleware(WorkerHeader)
    return app


def add_protected_docs(app, auth):
    """``/openapi.json``, ``/docs`` and ``/redoc`` behind the API's credentials: they name every route, extensions'
    included, so a server that asks for credentials does not describe itself to someone without them."""
    from fastapi import Depends
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.responses import JSONResponse

    def openapi():
        return JSONResponse(app.openapi())

    def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - Swagger UI")

    def redoc():
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")

    for path, endpoint in (("/openapi.json", openapi), ("/docs", docs), ("/redoc", redoc)):
        app.add_api_route(path, endpoint, methods=["GET"], include_in_schema=False, dependencies=[Depends(auth)])


def add_middleware(app, cmd_opts):
    """A1111's ``X-Process-Time`` header and ``--api-log``, and CORS (``--cors-allow-origins[-regex]``), as A1111
    sets them up.

    CORS is added only when a flag asks for it: without one no response carries CORS headers and browsers keep
    their same-origin rule. It is the outermost layer, so a preflight is answered before ``--api-auth`` (browsers
    send no credentials with a preflight).
    """
    app.add_middleware(ProcessTime, log=bool(cmd_opts.api_log))
    if cmd_opts.cors_allow_origins or cmd_opts.cors_allow_origins_regex:
        from starlette.middleware.cors import CORSMiddleware

        # A1111's options: every method and header, credentials allowed, origins exactly as given.
        origins = [o.strip() for o in (cmd_opts.cors_allow_origins or "").split(",") if o.strip()]
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_origin_regex=cmd_opts.cors_allow_origins_regex,
                           allow_methods=["*"], allow_headers=["*"], allow_credentials=True)


api_log = logging.getLogger("serena.api.requests")


class ProcessTime:
    """ASGI middleware: every HTTP response carries ``X-Process-Time`` (seconds, as A1111 sends it); with ``log``
    (``--api-log``) each /sdapi request is also logged: method, path, status, client, seconds taken.

    Plain ASGI rather than ``BaseHTTPMiddleware``: streamed responses (the UI's event stream) pass through as they
    are, and the request runs in the caller's context.
    """

    def __init__(self, app, log: bool = False):
        self.app = app
        self.log = log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {}

        async def timed_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                seconds = f"{time.perf_counter() - started:.4f}"
                message = dict(message, headers=[*message.get("headers", []),
                                                 (b"x-process-time", seconds.encode())])
            await send(message)

        await self.app(scope, receive, timed_send)
        if self.log and scope["path"].startswith("/sdapi"):
            client = (scope.get("client") or ("-",))[0]
            api_log.info("API %s %s %s %s %.4f", scope["method"], scope["path"], status.get("code", "-"), client,
                         time.perf_counter() - started)


def load_starting_model(started: float) -> threading.Thread:
    """Check the starting checkpoint, then load its weights in a thread that holds the generation queue until
    the model is in memory.

    The check (its header, on PyTorch's meta device) runs here, before serving: what requests read about the
    starting checkpoint without running it (its title in ``GET /options``, the facts that overrides are validated
    against) is known when the server answers. The server then answers while the weights load (as A1111's does),
    and every request that needs the model queues behind the load, in arrival order: generations, settings
    changes, checkpoint refresh, reload and unload all take ``jobs.queue_lock``. None of them fails for want of a
    model or runs on another one. The lock is taken here, before the server accepts a connection, so no request
    can get ahead of the load.
    """
    from modules import sd_models

    try:
        sd_models.model_manager.facts(sd_models.effective_checkpoint())
    except ValueError:
        pass  # the load below falls back to a working checkpoint and logs why
    jobs.queue_lock.acquire()

    def load():
        try:
            sd_models.current_model()
        except (ValueError, OSError) as e:
            log.error("no model loaded at start-up: %s", e)
        finally:
            jobs.queue_lock.release()
        log.info("start-up took %.1f s (checkpoint: %s)", time.perf_counter() - started,
                 getattr(sd_models.model_manager.current, "title", None))

    # A copy of the start-up context: the load and on_model_loaded see what they saw on the main thread.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(load,), name="serena-model-load",
                              daemon=True)
    thread.start()
    return thread


def serve(cmd_opts, started: float, argv: list[str]) -> int:
    import uvicorn

    host = "0.0.0.0" if cmd_opts.listen else "127.0.0.1"
    port = cmd_opts.port or (7861 if cmd_opts.nowebui else 7860)
    if cmd_args.scales_out(cmd_opts):
        # Workers first: the server answers once they are ready, and this process never loads a model.
        from modules import scale_out
        front = scale_out.start(cmd_opts, argv)
        app = create_app(cmd_opts, workers=front)
    else:
        app = create_app(cmd_opts)
        load_starting_model(started)
    app.state.url = f"http://{host}:{port}"
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    try:
        server.run()
    finally:
        if cmd_args.scales_out(cmd_opts):
            scale_out.stop(front)  # the local Ray cluster ends with the server, its workers with it
    return 0


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cmd_opts = cmd_args.parse_args(argv)
    for line in cmd_args.notices(cmd_opts):
        print(line, file=sys.stderr, flush=True)
    started = time.perf_counter()
    initialize.initialize(cmd_opts)
    if cmd_opts.list_hooks:
        print(extensions.format_hook_order(plugins.host))
        return 0
    if cmd_opts.exit:
        print(f"Serena initialised in {time.perf_counter() - started:.1f} s; exiting (--exit)", flush=True)
        return 0
    if cmd_opts.txt2img is not None:
        from modules import cli
        return cli.run_txt2img(cmd_opts)
    return serve(shared.cmd_opts, started, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
