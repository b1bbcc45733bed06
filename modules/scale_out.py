"""Scale-out on Ray Serve: ``--workers N`` / ``--ray-address ADDR`` (docs/operations.md, "Scaling out").

This process is the front: it serves the same API and UI on ``--port``, checks every request exactly as a single
process does (``request_preparation``), and is the one writer of ``config.json``. Generations go to a Ray Serve
deployment of ``GenerationWorker`` replicas (``dispatch.use_remote``); each replica is a whole Serena runtime
(same flags, same data folder, extensions loaded in the same resolved order) that runs them in its own FIFO queue.

* Routing: the multiplexed model id of a call is the generation's *effective* checkpoint (its override, else the
  stored one), so Serve sends it to a replica that already holds that model; each replica's ``get_model`` keeps
  at most ``sd_checkpoints_limit`` of them, as the single-process model cache does.
* One settings state: every call carries this process's stored settings; a replica puts them in place (no
  callbacks, no file write) inside the job, before the generation's overrides are entered. A generation that
  starts after ``POST /options`` answered sees the new values on every replica; overrides stay per request.
* Control: a small Ray actor (``Control``) is the board replicas report to (pid, models held, the running job's
  progress) and read ``/interrupt``/``/skip`` from; this process mirrors the oldest running job into
  ``jobs.state``, so ``/progress`` and the UI's progress read what they read in one process.
* Failure: a replica that dies mid-generation fails that request with ``dispatch.WorkerUnavailable`` (503); Serve
  starts a new replica; other requests and the stored settings are untouched.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
import time
from typing import Any

from modules import dispatch, jobs, sd_models, shared

log = logging.getLogger("serena.scale_out")

APP_NAME = "serena"
CONTROL_NAME = "serena-control"
NAMESPACE = "serena"
REPORT_SECONDS = 0.2
#: Which replica served the request (``X-Serena-Worker``); a dict per request, set where the result comes back.
served_by: contextvars.ContextVar[dict | None] = contextvars.ContextVar("serena_served_by", default=None)
FRONT = "front"


def worker_argv(argv: list[str]) -> list[str]:
    """The flags a replica starts with: this process's, less those that make it serve or scale out."""
    drop_with_value = {"--workers", "--ray-address", "--port"}
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in drop_with_value:
            skip = "=" not in arg
            continue
        out.append(arg)
    return [*out, "--nowebui"]


def effective_model_id(p) -> str:
    """The title of the checkpoint ``p`` will run on (its override, else the stored one): the routing key."""
    overrides = {shared.opts.canonical_key(k) or k: v for k, v in (p.override_settings or {}).items()}
    name = overrides.get("sd_model_checkpoint") or shared.opts.sd_model_checkpoint
    info = sd_models.resolve_checkpoint(name) if name else sd_models.default_checkpoint()
    return info.title if info is not None else ""


# -- the control board -------------------------------------------------------------------------------------------


def control_class():
    import ray

    @ray.remote(num_cpus=0)
    class Control:
        """Replicas' reports (by replica name) and the interrupt/skip counters they act on."""

        def __init__(self):
            self.workers: dict[str, dict] = {}
            self.interrupts = 0
            self.skips = 0

        def report(self, name: str, info: dict) -> tuple[int, int]:
            self.workers[name] = dict(info, seen=time.time())
            return self.interrupts, self.skips

        def interrupt(self) -> None:
            self.interrupts += 1

        def skip(self) -> None:
            self.skips += 1

        def board(self) -> dict[str, dict]:
            return dict(self.workers)

        def forget(self, name: str) -> None:
            self.workers.pop(name, None)

    return Control


def job_snapshot() -> dict:
    state = jobs.state
    return {"job": state.job, "job_no": state.job_no, "job_count": state.job_count,
            "sampling_step": state.sampling_step, "sampling_steps": state.sampling_steps,
            "time_start": state.time_start, "textinfo": state.textinfo, "job_timestamp": state.job_timestamp}


# -- a replica ---------------------------------------------------------------------------------------------------


class WorkerRuntime:
    """What a replica holds: an initialised Serena runtime, and its report loop to the control board."""

    def __init__(self, argv: list[str], name: str, threads: int):
        import torch

        from modules import cmd_args, initialize

        # Ray gives a one-CPU replica one thread; CPU kernels can round differently with another thread count, so
        # a replica uses what a single process on this machine would, and its images are that process's bytes.
        torch.set_num_threads(threads)
        cmd_opts = cmd_args.parse_args(argv)
        initialize.initialize(cmd_opts)
        shared.opts.filename = None  # one writer: the front saves config.json; a replica never writes it
        self.name = name
        self.pid = os.getpid()
        self.settings: dict | None = None
        self.served = 0
        self.control = None
        with jobs.queue_lock:  # ready when the starting model is in memory, as a single process is
            try:
                sd_models.current_model()
            except (ValueError, OSError) as e:
                log.error("worker %s: no model loaded at start-up: %s", name, e)

    def start_reporting(self, control) -> None:
        self.control = control
        threading.Thread(target=self._report_loop, name="serena-worker-report", daemon=True).start()

    def report(self) -> dict:
        return {"pid": self.pid, "models": [os.path.basename(f) for f in sd_models.model_manager.cached()],
                "loads": sd_models.model_manager.loads,
                "busy": jobs.state.busy, "served": self.served, "job": job_snapshot() if jobs.state.busy else None,
                "hook_order": _hook_order_digest()}

    def _report_loop(self) -> None:
        import ray

        seen: tuple[int, int] | None = None
        while True:
            try:
                counters = ray.get(self.control.report.remote(self.name, self.report()))
            except Exception as e:  # noqa: BLE001 - the board may be restarting; try again next tick
                log.debug("report failed: %s", e)
                time.sleep(REPORT_SECONDS)
                continue
            if seen is not None and jobs.state.busy:
                if counters[0] > seen[0]:
                    jobs.state.interrupt()
                if counters[1] > seen[1]:
                    jobs.state.skip()
            seen = counters
            time.sleep(REPORT_SECONDS)

    def load(self, model_id: str) -> None:
        """Hold ``model_id`` in the model cache (in queue order: never under a running generation). A checkpoint
        this replica does not list yet was added after it started (the front found it on a refresh): look again."""
        with jobs.queue_lock:
            try:
                info = sd_models.resolve_checkpoint(model_id)
            except ValueError:
                sd_models.refresh_checkpoints()
                info = sd_models.resolve_checkpoint(model_id)
            sd_models.model_manager.get(info)

    def generate(self, name: str, p, stored: dict):
        from modules import scripts

        def body():
            if stored != self.settings:
                shared.opts.restore_stored(stored)
                self.settings = stored
            return scripts.run(p)

        try:
            return jobs.run_job(name, body, job_count=max(1, int(getattr(p, "n_iter", 1) or 1)))
        finally:
            self.served += 1


def _hook_order_digest() -> str:
    import hashlib
    import json

    from modules import plugins
    return hashlib.sha256(json.dumps(plugins.host.hook_order(), sort_keys=True).encode()).hexdigest()[:16]


def deployment(num_replicas: int, *, num_cpus: float, num_gpus: float, models_per_replica: int):
    from ray import serve

    @serve.deployment(name="GenerationWorker", num_replicas=num_replicas, max_ongoing_requests=1,
                      ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus})
    class GenerationWorker:
        def __init__(self, argv: list[str], threads: int):
            import ray

            context = serve.get_replica_context()
            self.runtime = WorkerRuntime(argv, context.replica_id.unique_id, threads)
            self.runtime.start_reporting(ray.get_actor(CONTROL_NAME, namespace=NAMESPACE))

        @serve.multiplexed(max_num_models_per_replica=models_per_replica)
        async def get_model(self, model_id: str):
            await asyncio.to_thread(self.runtime.load, model_id)
            return model_id

        async def generate(self, name: str, p, stored: dict):
            model_id = serve.get_multiplexed_model_id()
            if model_id:
                await self.get_model(model_id)
            processed = await asyncio.to_thread(self.runtime.generate, name, p, stored)
            return self.runtime.name, processed

    return GenerationWorker


# -- the front ---------------------------------------------------------------------------------------------------


class Front:
    """This process's side: the deployment's handle, the remote runner for ``dispatch``, the progress mirror."""

    def __init__(self, handle, control):
        self.handle = handle
        self.control = control
        self._stop = threading.Event()

    def __call__(self, name: str, p):
        import ray.exceptions

        call = self.handle.options(multiplexed_model_id=effective_model_id(p)).generate
        response = call.remote(name, p, shared.opts.stored())
        try:
            worker, processed = response.result()
        except ray.exceptions.RayTaskError as e:  # raised by Serena's code on the replica: the same error as here
            cause = getattr(e, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise
        except (ray.exceptions.RayError, RuntimeError) as e:
            raise dispatch.WorkerUnavailable(f"the worker running this generation stopped: {e}") from None
        holder = served_by.get()
        if holder is not None:
            holder["worker"] = worker
        return processed

    def workers(self) -> list[dict]:
        import ray

        board = ray.get(self.control.board.remote())
        fresh = {name: info for name, info in board.items() if time.time() - info["seen"] < 5 * REPORT_SECONDS + 2}
        return [{"name": name, "pid": info["pid"], "models": info["models"], "loads": info["loads"],
                 "busy": info["busy"], "queue_depth": int(info["busy"]), "served": info["served"],
                 "hook_order": info["hook_order"]}
                for name, info in sorted(fresh.items())]

    def mirror_progress(self) -> None:
        """Keep ``jobs.state`` showing the oldest running job on any replica; forward interrupt and skip."""
        import ray

        state = jobs.state
        while not self._stop.wait(REPORT_SECONDS):
            try:
                if state.interrupted:
                    state.interrupted = False
                    self.control.interrupt.remote()
                if state.skipped:
                    state.skipped = False
                    self.control.skip.remote()
                running = [w["job"] for w in ray.get(self.control.board.remote()).values()
                           if w.get("busy") and w.get("job") and time.time() - w["seen"] < 2]
            except Exception as e:  # noqa: BLE001 - Ray shutting down, or a board restart
                log.debug("progress mirror: %s", e)
                continue
            if running:
                job = min(running, key=lambda j: j["time_start"] or 0)
                for key, value in job.items():
                    setattr(state, key, value)
            elif state.busy:
                state.end()

    def stop(self) -> None:
        self._stop.set()


def single_process_threads() -> int:
    """The intra-op thread count a single Serena process here would run with: ``OMP_NUM_THREADS`` when set (as
    torch reads it), else every core."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1


def start_local_ray(num_cpus: int, attempts: int = 3) -> None:
    """A local Ray cluster with no dashboard. Ray's start-up waits a fixed time for its own processes (the raylet,
    its agent's port file), which a machine under load can miss: then shut the half-started cluster down and try
    again."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, namespace=NAMESPACE, log_to_driver=False,
                     configure_logging=False)
            return
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for this
            ray.shutdown()
            if attempt == attempts or "timed out during startup" not in str(e):
                raise
            log.warning("Ray did not start (%s); trying again (%d/%d)", e, attempt + 1, attempts)


def start(cmd_opts, argv: list[str]) -> Front:
    """Start (or join) Ray, the control board and the workers; route this process's generations to them."""
    import ray
    from ray import serve

    if cmd_opts.ray_address:
        ray.init(address=cmd_opts.ray_address, namespace=NAMESPACE, log_to_driver=False)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        replicas, num_cpus, num_gpus = cmd_opts.workers or max(1, gpus), 1, 1 if gpus else 0
    else:
        start_local_ray(max(cmd_opts.workers, os.cpu_count() or 1))
        replicas, num_cpus, num_gpus = cmd_opts.workers, 1, 0
    control = control_class().options(name=CONTROL_NAME, namespace=NAMESPACE, lifetime=None).remote()
    serve.start(http_options={"location": "NoServer"})
    limit = max(1, int(shared.opts.sd_checkpoints_limit))
    app = deployment(replicas, num_cpus=num_cpus, num_gpus=num_gpus, models_per_replica=limit).bind(
        worker_argv(argv), single_process_threads())
    handle = serve.run(app, name=APP_NAME, route_prefix=None)
    front = Front(handle, control)
    dispatch.use_remote(front)
    threading.Thread(target=front.mirror_progress, name="serena-progress-mirror", daemon=True).start()
    log.info("scale-out: %d worker(s) ready", replicas)
    return front


def stop(front: Front) -> None:
    """Stop the progress mirror, the deployment and (when this process started it) the local Ray cluster."""
    import ray
    from ray import serve

    front.stop()
    dispatch.use_remote(None)
    try:
        serve.shutdown()
    finally:
        ray.shutdown()


class WorkerHeader:
    """ASGI middleware: every response carries ``X-Serena-Worker``, the replica that generated it (``front`` for
    what this process answered itself)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        holder: dict[str, Any] = {"worker": FRONT}
        token = served_by.set(holder)  # handlers run in a copy of this context: they fill the same dict

        async def tagged(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message.get("headers", []),
                                                 (b"x-serena-worker", str(holder["worker"]).encode())])
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        finally:
            served_by.reset(token)
