"""Where a prepared generation runs: in this process's queue, or on a scale-out worker (``--workers``).

The three front doors build and check a processing object (``request_preparation``), then hand it to ``run``. In
one process that is ``jobs.run_job`` around ``scripts.run``: the FIFO queue, the job's state. Under ``--workers``
(``modules.scale_out``) start-up installs a remote runner with ``use_remote``; ``run`` then sends the processing
object to a Ray Serve worker, which runs the same ``jobs.run_job`` in its own queue, and this process takes no
queue lock: workers generate side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modules import jobs, scripts

#: ``(name, p) -> Processed``, installed by ``use_remote``; ``None``: generate here.
_remote: Callable[[str, Any], Any] | None = None


class WorkerUnavailable(RuntimeError):
    """The worker that held a generation died or could not be reached: the request gets a 503, no retry (the
    generation may have had effects, e.g. saved images)."""


def use_remote(runner: Callable[[str, Any], Any] | None) -> None:
    """Send every later generation to ``runner`` (``None``: back to this process's queue)."""
    global _remote
    _remote = runner


def is_remote() -> bool:
    return _remote is not None


def run(name: str, p, *, job_count: int = 1, wrap: Callable[[Callable[[], Any]], Any] | None = None):
    """Run the prepared processing ``p`` as one generation job named ``name``; its ``Processed``.

    ``wrap(generate)`` runs when the job's turn comes and must call ``generate()`` (the UI marks its job started
    there, or returns ``None`` to drop a job cancelled while it waited).
    """
    wrap = wrap or (lambda generate: generate())
    if _remote is not None:
        return wrap(lambda: _remote(name, p))
    return jobs.run_job(name, wrap, lambda: scripts.run(p), job_count=job_count)
