"""The generation queue and the running job's state, shared by the API, the UI and the CLI.

``queue_lock`` serialises generations in arrival order (A1111's FIFO lock). ``state`` is read without the lock by
progress endpoints; it is written only by the job that holds the lock.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any


class FIFOLock:
    """A non-reentrant lock that is granted in the order it was asked for."""

    def __init__(self):
        self._lock = threading.Lock()
        self._inner = threading.Lock()
        self._waiters: collections.deque = collections.deque()

    def acquire(self, blocking=True):
        with self._inner:
            if self._lock.acquire(False):
                return True
            if not blocking:
                return False
            ready = threading.Event()
            self._waiters.append(ready)
        ready.wait()
        return True

    def release(self):
        with self._inner:
            if self._waiters:
                # Hand the lock straight to the oldest waiter: it never becomes free in between.
                self._waiters.popleft().set()
            else:
                self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    __enter__ = acquire

    def __exit__(self, *exc):
        self.release()


@dataclass
class State:
    """Progress of the running job. Plain fields: readers tolerate a value one step old."""

    job: str = ""
    job_no: int = 0
    job_count: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    interrupted: bool = False
    skipped: bool = False
    time_start: float | None = None
    current_image: Any = None
    current_image_step: int = -1
    textinfo: str | None = None
    job_timestamp: str = "0"

    def begin(self, job: str, job_count: int = 1):
        self.job, self.job_no, self.job_count = job, 0, job_count
        self.sampling_step = self.sampling_steps = 0
        self.interrupted = self.skipped = False
        self.current_image, self.current_image_step = None, -1
        self.time_start = time.time()
        self.job_timestamp = time.strftime("%Y%m%d%H%M%S")

    def end(self):
        # A late interrupt must not reach the next job (or a direct process_images call by an extension).
        self.interrupted = self.skipped = False
        self.job, self.job_count, self.job_no = "", 0, 0
        self.sampling_step = self.sampling_steps = 0
        self.time_start = None
        self.current_image = None

    def interrupt(self):
        self.interrupted = True

    def skip(self):
        self.skipped = True

    @property
    def busy(self) -> bool:
        return self.time_start is not None

    def progress(self) -> float:
        if not self.busy or self.job_count == 0:
            return 0.0
        per_job = 1.0 / self.job_count
        step = self.sampling_step / self.sampling_steps if self.sampling_steps else 0.0
        return min(1.0, self.job_no * per_job + step * per_job)

    def eta_relative(self) -> float:
        done = self.progress()
        if not self.busy or done <= 0:
            return 0.0
        elapsed = time.time() - self.time_start
        return max(0.0, elapsed / done - elapsed)


queue_lock = FIFOLock()
state = State()


def run_job(name: str, func, *args, job_count: int = 1, **kwargs):
    """Run ``func`` as one queued job: wait for the queue lock (FIFO), track state, always close the record.

    The API, the UI and the CLI all generate through this, so two generations never run at once.
    """
    with queue_lock:
        state.begin(name, job_count)
        try:
            return func(*args, **kwargs)
        finally:
            state.end()
