"""Running a UI generation through the shared queue and streaming its progress to the page.

A Generate click runs a generator function (gradio streams every ``yield`` to the browser). It starts the job in
a worker thread through ``dispatch.run`` -- the same FIFO queue the API uses, so UI and API generations never
run at once -- and then, every ``POLL_SECONDS``, yields a progress bar (percent, step, batch, ETA) built from
``jobs.state`` and, when the sampler published a newer one, the preview image. ``jobs.state`` describes this
job only while the job holds the lock; before that, the page says it is waiting in the queue.

Interrupt and Skip act on the job of the same browser session and tab (``UiJob``): a waiting job is cancelled
before it starts; a running one gets ``state.interrupt()`` / ``state.skip()``, which the sampler checks every step.
With no job of its own, Interrupt stops whatever is generating (A1111's button does that too; it is how a page
that was reloaded mid-generation stops it).
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Generator

from modules import dispatch, jobs
from modules.ui.common import esc

POLL_SECONDS = 0.4


@dataclass
class UiJob:
    """One generation started from the page: where it stands and what it returned."""

    key: tuple
    name: str
    started: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False
    interrupted: bool = False
    result: Any = None
    error: BaseException | None = None
    time_queued: float = field(default_factory=time.time)
    time_started: float | None = None
    time_done: float | None = None
    number: int = field(default_factory=lambda: next(_numbers))


_numbers = itertools.count(1)
_jobs: dict[tuple, UiJob] = {}
_jobs_lock = threading.Lock()


def session_key(request, tab: str) -> tuple:
    """Jobs are tracked per browser session and tab; a request without a session shares one anonymous key."""
    return (getattr(request, "session_hash", None) or "anonymous", tab)


def active_job(key: tuple) -> UiJob | None:
    with _jobs_lock:
        return _jobs.get(key)


@dataclass
class Tick:
    """What the page shows while a job runs: the progress bar and, if new, a preview image."""

    html: str
    preview: Any = None


def run_streaming(key: tuple, name: str, p, *, job_count: int = 1,
                  poll: float = POLL_SECONDS) -> Generator[Tick, None, UiJob]:
    """Run the prepared processing ``p`` as a queued generation (``dispatch.run``) in a worker thread; yield a
    ``Tick`` per poll; return the finished ``UiJob``.

    Use as ``job = yield from run_streaming(...)``. The job keeps running if the page goes away (the browser
    closing the stream stops only the polling); it is forgotten by the session when it ends.
    """
    job = UiJob(key=key, name=name)
    with _jobs_lock:
        _jobs[key] = job

    def body(generate):
        if job.cancelled:
            return None
        job.time_started = time.time()
        job.started.set()
        try:
            return generate()
        finally:
            job.interrupted = jobs.state.interrupted

    def target():
        try:
            job.result = dispatch.run(name, p, job_count=job_count, wrap=body)
        except BaseException as e:  # noqa: BLE001 - handed to the page, which shows it
            job.error = e
        finally:
            job.time_done = time.time()
            with _jobs_lock:
                if _jobs.get(key) is job:
                    del _jobs[key]
            job.done.set()

    worker = threading.Thread(target=target, name=f"serena-ui-{name}", daemon=True)
    worker.start()
    last_preview_step = -1
    yield Tick(progress_html(job))
    while not job.done.wait(poll):
        preview = None
        state = jobs.state
        if job.started.is_set() and state.current_image is not None \
                and state.current_image_step != last_preview_step:
            preview, last_preview_step = state.current_image, state.current_image_step
        yield Tick(progress_html(job), preview)
    return job


def interrupt(key: tuple) -> str:
    """Interrupt the session's job (cancel it if still waiting); with none, the running generation."""
    job = active_job(key)
    if job is not None and not job.done.is_set():
        if not job.started.is_set():
            job.cancelled = True
            return "Cancelled before it started"
        jobs.state.interrupt()
        return "Interrupting..."
    if jobs.state.busy:
        jobs.state.interrupt()
        return "Interrupting the running generation..."
    return "Nothing is running"


def skip(key: tuple) -> str:
    """Skip the current batch of the session's running job (the next batch still runs)."""
    job = active_job(key)
    if job is not None and job.started.is_set() and not job.done.is_set():
        jobs.state.skip()
        return "Skipping the current batch..."
    return "Nothing of yours is running"


def _format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds}s"


def _bar(percent: float, text: str) -> str:
    percent = max(0.0, min(100.0, percent))
    return (
        '<div class="serena-progress" style="margin:4px 0">'
        '<div style="position:relative;height:20px;border-radius:4px;background:#e5e7eb;overflow:hidden">'
        f'<div class="serena-progress-fill" style="width:{percent:.1f}%;height:100%;background:#f97316;'
        'transition:width .3s"></div>'
        '<div class="serena-progress-text" style="position:absolute;inset:0;font-size:12px;line-height:20px;'
        f'padding-left:6px;color:#111">{esc(text)}</div></div></div>'
    )


def progress_html(job: UiJob) -> str:
    """The progress bar of a job that is waiting or running."""
    if not job.started.is_set():
        waited = time.time() - job.time_queued
        running = jobs.state.job or "another generation"
        return _bar(0, f"Waiting in queue ({_format_seconds(waited)}): {running} is running")
    state = jobs.state
    fraction = state.progress()
    parts = [f"{fraction * 100:.0f}%"]
    if state.sampling_steps:
        parts.append(f"step {state.sampling_step}/{state.sampling_steps}")
    if state.job_count > 1:
        parts.append(f"batch {state.job_no + 1}/{state.job_count}")
    if fraction > 0:
        parts.append(f"ETA {_format_seconds(state.eta_relative())}")
    else:
        parts.append("loading model" if not state.sampling_steps else "starting")
    if state.interrupted:
        parts.append("interrupting")
    elif state.skipped:
        parts.append("skipping")
    return _bar(fraction * 100, " \u00b7 ".join(parts))


def finished_html(job: UiJob, images: int, warnings=()) -> str:
    """The line shown in place of the bar when a job ended (``data-job`` numbers the UI's jobs)."""

    return f'<div class="serena-finished" data-job="{job.number}">{_finished_body(job, images, warnings)}</div>'


def _finished_body(job: UiJob, images: int, warnings) -> str:
    from modules.ui.common import message_list_html, status_html

    if job.error is not None:
        return status_html(f"Error: {error_message(job.error)}", "error")
    if job.result is None:
        return status_html("Cancelled before it started", "warn")
    elapsed = (job.time_done or time.time()) - (job.time_started or job.time_queued)
    waited = (job.time_started or job.time_queued) - job.time_queued
    verb = "Interrupted" if job.interrupted else "Done"
    text = f"{verb}: {images} image{'s' if images != 1 else ''} in {elapsed:.1f} s"
    if waited >= 0.5:
        text += f" (waited {waited:.1f} s in the queue)"
    out = status_html(text, "warn" if job.interrupted else "ok")
    return out + message_list_html("Warnings", warnings, "warn")


def error_message(error: BaseException) -> str:
    """A readable message for an exception: an ``OptionsRejected`` lists each bad key and why."""
    errors = getattr(error, "errors", None)
    if isinstance(errors, dict) and errors:
        return "; ".join(f"{k}: {v}" for k, v in errors.items())
    return f"{type(error).__name__}: {error}" if not isinstance(error, ValueError) else str(error)
