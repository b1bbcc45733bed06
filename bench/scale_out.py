"""Cost and gain of serving through Ray Serve workers (``--workers N``) against one process, in one run.

Run: ``venv/bin/python bench/scale_out.py [--requests K] [--steps S] [--threads T] [--quick]``.

Three real servers on the embedded default checkpoint (``serena-shapes-v1``), started one after the other by
``tools/server_process.py`` (the smoke tests' starter) with their own data folders, each stopped before the next
starts so they never compete for the CPU:

1. ``webui.py --nowebui``, one process (no Ray): the baseline;
2. ``--workers 1``: the front plus one Ray Serve replica;
3. ``--workers 2``: the front plus two replicas.

Each server is warmed up (as many concurrent requests as it has workers, twice, so every replica has run a
generation), then measured: the mean time per request of K sequential 64x64 txt2img requests (servers 1 and 2) and
the throughput of C concurrent requests from a thread pool (all three; C = 16). Every request is a different seed,
the same list for every server. Over the sequential requests it also sums the CPU time of the server's whole
process tree (front, Ray's own processes, replicas), which other jobs on the machine move far less than wall
time. The table gives the ratios: Ray at one worker per request over the single process's, in wall time (target
<= 1.10) and in CPU time (the cost of the Ray path), and two workers' throughput over one worker's. Checks (exit
code 1 when any fails): every response is a 200, and every image from the Ray servers is byte-identical to the
single process's for the same request.

Torch's thread count differs between the two paths unless told: a single process uses every core, a Ray replica
with one CPU gets ``OMP_NUM_THREADS=1`` from Ray (set inside the worker process when unset). Float results depend
on the thread count, so the images are byte-identical only at the same count, and on a loaded machine two spinning
OpenMP threads cost far more than one. So every server (and so every replica) runs with ``OMP_NUM_THREADS`` set to
``--threads`` (default 1); ``--threads 0`` leaves each path its own default.

On a machine shared with other jobs the absolute numbers move with the load (the load average at the start and
end is printed), and the servers run minutes apart, so the wall-time ratios move with it from run to run. Ray
also starts its workers at nice 15 (``RAY_worker_niceness``): under competing load a replica yields the CPU to
every nice-0 process, the single process does not. ``--quick``: 3 sequential and 8 concurrent requests, 3 steps.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402

from tools.server_process import ServerProcess, start_server  # noqa: E402

MODEL = ROOT / "models" / "Stable-diffusion" / "serena-shapes-v1.safetensors"
GEN = {"prompt": "a red circle on a blue background", "negative_prompt": "blurry", "width": 64, "height": 64,
       "sampler_name": "Euler a", "cfg_scale": 7.0}
TIMEOUT = 600.0
OVERHEAD_TARGET = 1.10


@dataclass
class Reply:
    status: int
    digest: str  # sha256 of the first image's bytes; "" when there is none
    worker: str  # X-Serena-Worker: the replica that generated it (absent without --workers)
    seconds: float
    detail: str = ""


@dataclass
class Measured:
    label: str
    workers: int  # 0: the single process
    startup: float = 0.0
    sequential: list[Reply] = field(default_factory=list)
    sequential_cpu: float = 0.0  # CPU seconds of the server's whole process tree over the sequential requests
    concurrent: list[Reply] = field(default_factory=list)
    concurrent_wall: float = 0.0

    @property
    def per_request(self) -> float | None:
        return statistics.mean(r.seconds for r in self.sequential) if self.sequential else None

    @property
    def throughput(self) -> float:
        return len(self.concurrent) / self.concurrent_wall

    @property
    def cpu_per_request(self) -> float | None:
        return self.sequential_cpu / len(self.sequential) if self.sequential else None

    def replies(self) -> list[Reply]:
        return [*self.sequential, *self.concurrent]


def body(seed: int, steps: int) -> dict:
    return dict(GEN, seed=seed, steps=steps)


def post(client: httpx.Client, payload: dict) -> Reply:
    start = time.perf_counter()
    r = client.post("/sdapi/v1/txt2img", json=payload)
    seconds = time.perf_counter() - start
    if r.status_code != 200:
        return Reply(r.status_code, "", "", seconds, r.text[:300])
    digest = hashlib.sha256(base64.b64decode(r.json()["images"][0])).hexdigest()
    return Reply(200, digest, r.headers.get("x-serena-worker", ""), seconds)


def post_concurrently(client: httpx.Client, payloads: list[dict]) -> tuple[list[Reply], float]:
    start = time.perf_counter()
    with ThreadPoolExecutor(len(payloads)) as pool:
        replies = list(pool.map(lambda p: post(client, p), payloads))
    return replies, time.perf_counter() - start


def start(data_dir: Path, workers: int) -> tuple[ServerProcess, float]:
    began = time.perf_counter()
    server = start_server(data_dir, "--ckpt", MODEL, *(["--workers", workers] if workers else []), timeout=300)
    return server, time.perf_counter() - began


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and every process under it (the front, Ray's own processes and the
    replicas): less moved by other jobs on the machine than wall time."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:  # ended meanwhile
            continue
        total += times.user + times.system
    return total


def measure(label: str, workers: int, seq_seeds: list[int], conc_seeds: list[int], steps: int,
            data_dir: Path) -> Measured:
    print(f"{label}: starting", flush=True)
    server, startup = start(data_dir, workers)
    m = Measured(label, workers, startup)
    try:
        limits = httpx.Limits(max_connections=len(conc_seeds) + 4)
        with httpx.Client(base_url=server.url, timeout=TIMEOUT, limits=limits) as client:
            for _ in range(2):  # warm-up: every replica runs a generation (the single process: its first load)
                post_concurrently(client, [body(900 + i, steps) for i in range(max(1, workers))])
            if seq_seeds:
                cpu = tree_cpu(server.pid)
                m.sequential = [post(client, body(seed, steps)) for seed in seq_seeds]
                m.sequential_cpu = tree_cpu(server.pid) - cpu
                print(f"  {len(seq_seeds)} sequential: {m.per_request:.3f} s per request", flush=True)
            m.concurrent, m.concurrent_wall = post_concurrently(client, [body(s, steps) for s in conc_seeds])
            print(f"  {len(conc_seeds)} concurrent: {m.throughput:.3f} requests/s", flush=True)
    finally:
        server.stop()
    return m


def identical(m: Measured, base: Measured) -> tuple[int, int]:
    """How many of ``m``'s images match the single process's for the same request, of how many compared."""
    pairs = list(zip(m.sequential, base.sequential)) + list(zip(m.concurrent, base.concurrent))
    return sum(a.digest == b.digest and a.digest != "" for a, b in pairs), len(pairs)


def table(runs: list[Measured], load_start: tuple, load_end: tuple, args) -> tuple[str, bool]:
    single, one, two = runs
    lines = [f"Machine: {os.cpu_count()} cores; 1/5/15-min load average {'/'.join(f'{x:.1f}' for x in load_start)} "
             f"at start, {'/'.join(f'{x:.1f}' for x in load_end)} at end. Model serena-shapes-v1, 64x64, "
             f"{args.steps} steps, Euler a; {args.requests} sequential, {args.concurrent} concurrent requests; "
             f"OMP_NUM_THREADS {args.threads or 'unset (single process: every core; Ray replica: 1)'}.",
             "",
             "| server | start-up s | per request s (sequential, mean) | CPU s per request (process tree) "
             "| concurrent throughput req/s | replicas that served |",
             "|---|---:|---:|---:|---:|---:|"]
    for m in runs:
        per = f"{m.per_request:.3f}" if m.per_request is not None else "—"
        cpu = f"{m.cpu_per_request:.3f}" if m.cpu_per_request is not None else "—"
        served = len({r.worker for r in m.concurrent}) if m.workers else "—"
        lines.append(f"| {m.label} | {m.startup:.1f} | {per} | {cpu} | {m.throughput:.3f} | "
                     f"{served} |")
    overhead = one.per_request / single.per_request
    gain = two.throughput / one.throughput
    replies = [r for m in runs for r in m.replies()]
    ok_200 = [r for r in replies if r.status == 200]
    same = [identical(m, single) for m in (one, two)]
    all_200 = len(ok_200) == len(replies)
    all_same = all(n == total for n, total in same)
    lines += ["", "| measure | value |", "|---|---:|",
              f"| Ray 1 worker per request / single process per request (target <= {OVERHEAD_TARGET:.2f}) | "
              f"{overhead:.3f} |",
              f"| Ray 1 worker CPU per request / single process CPU per request | "
              f"{one.cpu_per_request / single.cpu_per_request:.3f} |",
              f"| Ray 1 worker throughput / single process throughput | {one.throughput / single.throughput:.3f} |",
              f"| Ray 2 workers throughput / Ray 1 worker throughput | {gain:.3f} |",
              f"| responses 200 | {len(ok_200)}/{len(replies)} {'ok' if all_200 else 'FAIL'} |",
              f"| Ray images byte-identical to the single process's (1 worker; 2 workers) | "
              f"{same[0][0]}/{same[0][1]}; {same[1][0]}/{same[1][1]} {'ok' if all_same else 'FAIL'} |"]
    failed = [r for r in replies if r.status != 200]
    if failed:
        lines.append(f"\nfirst failure: {failed[0].status} {failed[0].detail}")
    return "\n".join(lines), all_200 and all_same


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=8, help="sequential requests per server (default 8)")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps per request (default 4)")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS for every server and replica (default 1; 0: each path's own default)")
    parser.add_argument("--quick", action="store_true", help="3 sequential and 8 concurrent requests, 3 steps")
    args = parser.parse_args(argv)
    args.concurrent = 16
    if args.quick:
        args.requests, args.concurrent, args.steps = 3, 8, 3
    if args.requests < 1 or args.steps < 1:
        parser.error("--requests and --steps must be at least 1")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # start_server passes this environment on
    else:
        os.environ.pop("OMP_NUM_THREADS", None)
    load_start = os.getloadavg()
    seq_seeds = list(range(1000, 1000 + args.requests))
    conc_seeds = list(range(2000, 2000 + args.concurrent))
    began = time.perf_counter()
    # One data folder, as a user's: later starts read the starting checkpoint's checks from its cache.json.
    with tempfile.TemporaryDirectory(prefix="serena-scale-out-") as tmp:
        runs = [measure("single process", 0, seq_seeds, conc_seeds, args.steps, Path(tmp)),
                measure("Ray 1 worker", 1, seq_seeds, conc_seeds, args.steps, Path(tmp)),
                measure("Ray 2 workers", 2, [], conc_seeds, args.steps, Path(tmp))]
    text, ok = table(runs, load_start, os.getloadavg(), args)
    print(f"\n{time.perf_counter() - began:.0f} s in all\n")
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
