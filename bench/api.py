"""Cost of the HTTP API: a 64x64, 4-step txt2img on the embedded model through HTTP vs the same call in-process.

Run: ``venv/bin/python bench/api.py [--requests N]``. Both sides run in this process on the same loaded
model: "in-process" is ``jobs.run_job("txt2img", processing.process_images, p)``; "HTTP" is ``POST
/sdapi/v1/txt2img`` to a real uvicorn server (on a thread, 127.0.0.1) that makes exactly that call, plus request
parsing, checks, PNG + base64 encoding of the image and JSON. The two sides alternate request by request, so drift
(other processes on a shared machine) hits both alike; the table shows medians, and the overhead is the median of
the paired differences. Target: HTTP overhead <= 10%.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import httpx  # noqa: E402
import uvicorn  # noqa: E402

import webui  # noqa: E402
from modules import cmd_args, initialize, jobs, processing, sd_models  # noqa: E402

REQUEST = {"prompt": "a lighthouse at dusk", "negative_prompt": "blurry", "width": 64, "height": 64, "steps": 4,
           "seed": 1234, "sampler_name": "Euler a", "cfg_scale": 7.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_process() -> None:
    p = processing.StableDiffusionProcessingTxt2Img(**REQUEST, do_not_save_samples=True, do_not_save_grid=True)
    processed = jobs.run_job("txt2img", processing.process_images, p)
    assert len(processed.images) == 1


def over_http(client: httpx.Client) -> None:
    r = client.post("/sdapi/v1/txt2img", json=REQUEST)
    r.raise_for_status()
    assert len(r.json()["images"]) == 1


def timed(func) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="requests per side, alternating (default 40)")
    args = parser.parse_args(argv)

    data_dir = tempfile.mkdtemp(prefix="serena-bench-api-")
    cmd_opts = cmd_args.parse_args(["--nowebui", "--data-dir", data_dir])
    initialize.initialize(cmd_opts)
    model = sd_models.current_model()
    port = free_port()
    app = webui.create_app(cmd_opts)
    app.state.url = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        with httpx.Client(base_url=app.state.url, timeout=120) as client:
            for _ in range(2):  # warm up both paths (first-call allocations, scheduler construction)
                in_process()
                over_http(client)
            local, remote = [], []
            for _ in range(args.requests):
                local.append(timed(in_process))
                remote.append(timed(lambda: over_http(client)))
    finally:
        server.should_exit = True
        thread.join(10)

    local_s, remote_s = statistics.median(local), statistics.median(remote)
    extra_s = statistics.median(r - lo for lo, r in zip(local, remote))
    print(f"model: {model.info.title}; 64x64, 4 steps, Euler a; {args.requests} requests per side, alternating; "
          f"torch threads: {__import__('torch').get_num_threads()}\n")
    print(f"{'path':<12} {'req/s':>8} {'median ms':>10} {'p10 ms':>8} {'p90 ms':>8}")
    for name, times in (("in-process", local), ("HTTP", remote)):
        deciles = statistics.quantiles(times, n=10)
        print(f"{name:<12} {1 / statistics.median(times):>8.2f} {1000 * statistics.median(times):>10.1f} "
              f"{1000 * deciles[0]:>8.1f} {1000 * deciles[-1]:>8.1f}")
    print(f"\nHTTP / in-process (medians): {remote_s / local_s:.3f}; median paired extra time per request: "
          f"{1000 * extra_s:.1f} ms = {100 * extra_s / local_s:+.1f}% (target <= 10%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
