"""Soak: a real Serena server under a seeded mix of valid and invalid API requests from 4 client threads.

Run: ``venv/bin/python bench/soak.py [--requests 1000] [--seed 0] [--timeout 900] [--model tiny|embedded]``.

It starts ``webui.py --nowebui`` (``tools/server_process.py``, the same starter as the smoke tests) on a free
127.0.0.1 port with a data folder in a temp directory, warms it up with every request kind from all threads, then
sends N requests in total: txt2img, img2img (sometimes with a mask), ``GET /options``, ``POST /options`` writes of
harmless options, invalid override sets and option writes, other invalid requests (unknown sampler, bad base64),
``/progress`` polls and ``/interrupt`` while a generation runs. The plan of every thread is drawn from ``--seed``
before the run, so the same seed sends the same requests (their interleaving across threads is up to the OS).

Checked at the end, printed as a table, exit code 1 when any fails:

- no 5xx; every invalid request a 4xx; every valid request a 200; every request answered before ``--timeout``;
- stored settings: ``GET /options`` and ``config.json`` hold, for each written key, the value of the last write
  that got a 200 (each thread writes only its own key, so that value is unambiguous), and never a key that only
  appeared in a rejected write or an override;
- server RSS: median over the last window of requests at most 5 % above the median over the first window
  (window: 200 requests, or N/4 when N < 800);
- no leaked threads or file descriptors: the server's ``num_threads()`` / ``num_fds()`` at the end, after a short
  idle pause, at most ``THREAD_SLACK`` / ``FD_SLACK`` above their values after warm-up.

Request counts by kind and status, and p50/p95 latency per kind, are printed too. ``run_soak`` is what
``test/smoke/test_soak.py`` calls with 100 requests.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
from PIL import Image  # noqa: E402

from tools.server_process import start_server  # noqa: E402

MODELS = {"tiny": ROOT / "models" / "Stable-diffusion" / "serena-tiny-v1.safetensors",
          "embedded": ROOT / "models" / "Stable-diffusion" / "serena-shapes-v1.safetensors"}
THREADS = 4
GEN = {"width": 64, "height": 64, "steps": 3, "sampler_name": "Euler a", "cfg_scale": 7.0}
# Weights of the request kinds in the mix (they need not sum to anything).
MIX = {"txt2img": 18, "img2img": 14, "get_options": 12, "set_options": 14, "bad_override": 10,
       "bad_options": 8, "bad_request": 10, "progress": 10, "interrupt": 4}
INVALID_KINDS = {"bad_override", "bad_options", "bad_request"}
# One key per thread (so the expected final value is that thread's last accepted write), with harmless values.
# CLIP_stop_at_last_layers stays within both shipped models' text encoders (the tiny one has 2 layers).
OWN_KEYS = [("samples_format", ["png", "jpg", "webp"]),
            ("CLIP_stop_at_last_layers", [1, 2]),
            ("eta_noise_seed_delta", [0, 31337, 1234, 7]),
            ("add_model_name_to_info", [True, False])]
BAD_OVERRIDES = [{"no_such_option_soak": 1},                 # unknown key
                 {"CLIP_stop_at_last_layers": "two"},         # wrong type
                 {"CLIP_stop_at_last_layers": True},          # a bool is not an int
                 {"samples_format": "gif"},                   # not one of the choices
                 {"outdir_samples": "/tmp/elsewhere"}]        # restricted for the API
# A thread's own key with a bad value, or a valid value next to a bad key: all or nothing, so neither changes it.
BAD_OPTION_VALUES = {"samples_format": "gif", "CLIP_stop_at_last_layers": "two",
                     "eta_noise_seed_delta": "lots", "add_model_name_to_info": "yes please"}
# After warm-up the thread pools are as big as 4 concurrent clients make them; uvicorn/anyio may still start a
# worker or two for a burst (and retires idle ones after 10 s), torch's pools are fixed after the first run.
# A leak grows with the request count (hundreds here), far above these.
THREAD_SLACK = 4
FD_SLACK = 4  # one keep-alive socket per client thread may be re-opened after a timeout or reset
RSS_LIMIT = 0.05
IDLE_PAUSE = 2.0


def png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


INIT_IMAGE = png_b64(Image.new("RGB", (64, 64), (200, 60, 40)))
def _centre_mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


MASK = png_b64(_centre_mask())


@dataclass
class Request:
    kind: str
    method: str
    path: str
    body: dict | None = None
    valid: bool = True
    # For POST /options of the thread's own key: the value that is stored if this request gets a 200.
    writes: tuple | None = None


@dataclass
class Result:
    kind: str
    valid: bool
    status: int | None  # None: no answer (transport error or timeout)
    latency: float
    detail: str = ""


def plan_for(thread: int, count: int, rng: random.Random) -> list[Request]:
    """The requests one client thread sends, in order; drawn only from ``rng``."""
    key, values = OWN_KEYS[thread]
    kinds, weights = zip(*MIX.items())
    plan = []
    last_write = values[0]  # what warm-up wrote
    for _ in range(count):
        kind = rng.choices(kinds, weights)[0]
        seed = rng.randrange(2**31)
        if kind == "txt2img":
            plan.append(Request(kind, "POST", "/sdapi/v1/txt2img", {**GEN, "prompt": "a red circle", "seed": seed}))
        elif kind == "img2img":
            body = {**GEN, "prompt": "a blue square", "seed": seed, "init_images": [INIT_IMAGE],
                    "denoising_strength": 0.6}
            if rng.random() < 0.5:
                body.update(mask=MASK, mask_blur=2, inpainting_fill=1)
            plan.append(Request(kind, "POST", "/sdapi/v1/img2img", body))
        elif kind == "get_options":
            plan.append(Request(kind, "GET", "/sdapi/v1/options"))
        elif kind == "set_options":
            # Every write changes the value, so a lost write (the last one included) shows in the final check.
            value = rng.choice([v for v in values if v != last_write])
            last_write = value
            plan.append(Request(kind, "POST", "/sdapi/v1/options", {key: value}, writes=(key, value)))
        elif kind == "bad_override":
            overrides = rng.choice(BAD_OVERRIDES)
            path = rng.choice(["/sdapi/v1/txt2img", "/sdapi/v1/img2img"])
            body = {**GEN, "prompt": "x", "seed": seed, "override_settings": overrides}
            if path.endswith("img2img"):
                body["init_images"] = [INIT_IMAGE]
            plan.append(Request(kind, "POST", path, body, valid=False))
        elif kind == "bad_options":
            body = rng.choice([{key: BAD_OPTION_VALUES[key]},
                               {key: rng.choice(values), "no_such_option_soak": 1}])
            plan.append(Request(kind, "POST", "/sdapi/v1/options", body, valid=False))
        elif kind == "bad_request":
            variant = rng.randrange(3)
            if variant == 0:
                plan.append(Request(kind, "POST", "/sdapi/v1/txt2img",
                                    {**GEN, "prompt": "x", "sampler_name": "No Such Sampler"}, valid=False))
            elif variant == 1:
                plan.append(Request(kind, "POST", "/sdapi/v1/img2img",
                                    {**GEN, "prompt": "x", "init_images": ["not base64 at all!!"]}, valid=False))
            else:
                plan.append(Request(kind, "POST", "/sdapi/v1/img2img",
                                    {**GEN, "prompt": "x", "init_images": [INIT_IMAGE], "mask": "%%%"},
                                    valid=False))
        elif kind == "progress":
            skip = rng.random() < 0.5
            plan.append(Request(kind, "GET", f"/sdapi/v1/progress?skip_current_image={str(skip).lower()}"))
        else:
            plan.append(Request(kind, "POST", "/sdapi/v1/interrupt"))
    return plan


def make_plans(requests: int, seed: int) -> list[list[Request]]:
    """Request ``i`` goes to thread ``i % THREADS``; each thread's requests come from its own seeded generator."""
    return [plan_for(t, len(range(t, requests, THREADS)), random.Random(f"{seed}:{t}")) for t in range(THREADS)]


def warmup_plans() -> list[list[Request]]:
    """Every kind once per thread (a mask too), so the model, pools and caches are loaded before the baseline."""
    plans = []
    for t in range(THREADS):
        key, values = OWN_KEYS[t]
        plans.append([Request("txt2img", "POST", "/sdapi/v1/txt2img", {**GEN, "prompt": "warm", "seed": t}),
                      Request("img2img", "POST", "/sdapi/v1/img2img",
                              {**GEN, "prompt": "warm", "seed": t, "init_images": [INIT_IMAGE], "mask": MASK}),
                      Request("get_options", "GET", "/sdapi/v1/options"),
                      Request("set_options", "POST", "/sdapi/v1/options", {key: values[0]},
                              writes=(key, values[0])),
                      Request("bad_override", "POST", "/sdapi/v1/txt2img",
                              {**GEN, "prompt": "x", "override_settings": BAD_OVERRIDES[t]}, valid=False),
                      Request("progress", "GET", "/sdapi/v1/progress")])
    return plans


class Soak:
    """Runs plans against one server, recording results, accepted writes and the server's RSS per request."""

    def __init__(self, url: str, pid: int, deadline: float):
        self.url = url
        self.proc = psutil.Process(pid)
        self.deadline = deadline
        self.lock = threading.Lock()
        self.results: list[Result] = []
        self.rss: list[int] = []  # the server's RSS after each completed request, in completion order
        self.expected: dict[str, object] = {}
        self.interrupts_during_generation = 0

    def send(self, client: httpx.Client, req: Request) -> Result:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return Result(req.kind, req.valid, None, 0.0, "not sent: --timeout reached")
        if req.kind == "interrupt":
            self.wait_for_generation(client)
        start = time.perf_counter()
        try:
            r = client.request(req.method, req.path, json=req.body, timeout=min(120.0, remaining))
        except httpx.HTTPError as e:
            return Result(req.kind, req.valid, None, time.perf_counter() - start, f"{type(e).__name__}: {e}")
        latency = time.perf_counter() - start
        detail = r.text[:300] if r.status_code != 200 or not req.valid else ""
        return Result(req.kind, req.valid, r.status_code, latency, detail)

    def wait_for_generation(self, client: httpx.Client) -> None:
        """Poll ``/progress`` (at most 2 s) until a job runs, so the interrupt lands during a generation."""
        end = min(self.deadline, time.monotonic() + 2.0)
        while time.monotonic() < end:
            try:
                state = client.get("/sdapi/v1/progress?skip_current_image=true", timeout=5).json()["state"]
            except (httpx.HTTPError, ValueError, KeyError):
                return
            if state.get("job"):
                with self.lock:
                    self.interrupts_during_generation += 1
                return
            time.sleep(0.02)

    def run_thread(self, plan: list[Request], record: bool) -> None:
        with httpx.Client(base_url=self.url) as client:
            for req in plan:
                result = self.send(client, req)
                try:
                    rss = self.proc.memory_info().rss
                except psutil.Error:
                    rss = None
                with self.lock:
                    # The server applies POST /options one at a time and this thread is the only writer of its
                    # key, so this thread's last 200 is the stored value.
                    if req.writes and result.status == 200:
                        self.expected[req.writes[0]] = req.writes[1]
                    if record:
                        self.results.append(result)
                        if rss is not None:
                            self.rss.append(rss)

    def run(self, plans: list[list[Request]], record: bool = True) -> None:
        threads = [threading.Thread(target=self.run_thread, args=(plan, record), daemon=True) for plan in plans]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, self.deadline - time.monotonic()) + 130)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class SoakReport:
    requests: int
    seed: int
    checks: list[Check] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    elapsed: float = 0.0
    log_tail: str = ""

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def table(self) -> str:
        lines = ["| check | result | detail |", "|---|---|---|"]
        lines += [f"| {c.name} | {'ok' if c.ok else 'FAIL'} | {c.detail} |" for c in self.checks]
        lines += ["", "| kind | count | statuses | p50 ms | p95 ms |", "|---|---:|---|---:|---:|"]
        for kind in MIX:
            rs = [r for r in self.results if r.kind == kind]
            if not rs:
                continue
            statuses = {}
            for r in rs:
                statuses[r.status or "none"] = statuses.get(r.status or "none", 0) + 1
            status_text = ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items(), key=str))
            lat = [r.latency * 1000 for r in rs]
            lines.append(f"| {kind} | {len(rs)} | {status_text} | {percentile(lat, 0.5):.0f} | "
                         f"{percentile(lat, 0.95):.0f} |")
        lines.append(f"| all | {len(self.results)} | | | |")
        return "\n".join(lines)


def check_results(soak: Soak, requests: int, window: int, warm: dict, end: dict, data_dir: Path,
                  stored: dict | None) -> list[Check]:
    results = soak.results
    checks = []
    answered = [r for r in results if r.status is not None]
    unanswered = [r for r in results if r.status is None]
    checks.append(Check("every request answered", len(answered) == requests and not unanswered,
                        f"{len(answered)}/{requests}" + (f"; first: {unanswered[0].detail}" if unanswered else "")))
    fives = [r for r in answered if r.status >= 500]
    checks.append(Check("no 5xx", not fives,
                        f"{len(fives)}" + (f"; first: {fives[0].kind} {fives[0].status} {fives[0].detail}"
                                           if fives else "")))
    invalid = [r for r in answered if not r.valid]
    not_4xx = [r for r in invalid if not 400 <= r.status < 500]
    checks.append(Check("every invalid request a 4xx", not not_4xx,
                        f"{len(invalid) - len(not_4xx)}/{len(invalid)}"
                        + (f"; first: {not_4xx[0].kind} {not_4xx[0].status} {not_4xx[0].detail}" if not_4xx else "")))
    valid = [r for r in answered if r.valid]
    not_200 = [r for r in valid if r.status != 200]
    checks.append(Check("every valid request a 200", not not_200,
                        f"{len(valid) - len(not_200)}/{len(valid)}"
                        + (f"; first: {not_200[0].kind} {not_200[0].status} {not_200[0].detail}" if not_200 else "")))

    expected = soak.expected
    if stored is None:
        checks.append(Check("GET /options holds the last accepted writes", False, "GET /options failed"))
    else:
        wrong = {k: stored.get(k) for k, v in expected.items() if stored.get(k) != v or type(stored.get(k)) is not type(v)}
        checks.append(Check("GET /options holds the last accepted writes", not wrong,
                            f"expected {expected}" + (f"; got {wrong}" if wrong else "")))
    try:
        config = json.loads((data_dir / "config.json").read_text(encoding="utf8"))
    except (OSError, ValueError) as e:
        config = None
        checks.append(Check("config.json holds the last accepted writes", False, f"unreadable: {e}"))
    if config is not None:
        wrong = {k: config.get(k, "<missing>") for k, v in expected.items()
                 if config.get(k) != v or type(config.get(k)) is not type(v)}
        strays = sorted(k for k in config if k == "no_such_option_soak" or k.startswith("outdir_")
                        and config[k] == "/tmp/elsewhere")
        checks.append(Check("config.json holds the last accepted writes", not wrong and not strays,
                            ("ok" if not wrong else f"got {wrong}") + (f"; rejected keys stored: {strays}"
                                                                        if strays else "")))

    rss = soak.rss
    if len(rss) >= 2 * window:
        first, last = statistics.median(rss[:window]), statistics.median(rss[-window:])
        growth = last / first - 1
        # The window medians lie (requests - window) requests apart; this share of them are generations.
        generations = (requests - window) * (MIX["txt2img"] + MIX["img2img"]) / sum(MIX.values())
        sensitivity = RSS_LIMIT * first / max(generations, 1)
        checks.append(Check(f"RSS growth first/last {window} requests < {RSS_LIMIT:.0%}", growth < RSS_LIMIT,
                            f"{first / 2**20:.0f} -> {last / 2**20:.0f} MiB ({growth:+.1%}); a leak of "
                            f">= {sensitivity / 2**10:.0f} KiB per generation fails"))
    else:
        checks.append(Check(f"RSS growth first/last {window} requests < {RSS_LIMIT:.0%}", False,
                            f"only {len(rss)} samples"))
    checks.append(Check(f"no leaked threads (slack {THREAD_SLACK})", end["threads"] <= warm["threads"] + THREAD_SLACK,
                        f"{warm['threads']} after warm-up -> {end['threads']} at the end"))
    checks.append(Check(f"no leaked fds (slack {FD_SLACK})", end["fds"] <= warm["fds"] + FD_SLACK,
                        f"{warm['fds']} after warm-up -> {end['fds']} at the end"))
    return checks


def counts(proc: psutil.Process) -> dict:
    return {"threads": proc.num_threads(), "fds": proc.num_fds()}


def rss_window(requests: int) -> int:
    """200 requests, as the soak target says; a quarter of the run when it is too short for two such windows."""
    return 200 if requests >= 800 else max(1, requests // 4)


def run_soak(requests: int = 1000, seed: int = 0, timeout: float = 900.0, model: str = "tiny",
             data_dir: str | os.PathLike | None = None, log=print) -> SoakReport:
    """Start a server, warm it up, send ``requests`` seeded requests from 4 threads, check, stop the server."""
    start = time.monotonic()
    deadline = start + timeout
    report = SoakReport(requests=requests, seed=seed)
    with tempfile.TemporaryDirectory(prefix="serena-soak-") as tmp:
        data = Path(data_dir) if data_dir is not None else Path(tmp) / "data"
        server = start_server(data, "--ckpt", MODELS[model], timeout=min(300.0, timeout))
        try:
            soak = Soak(server.url, server.pid, deadline)
            log(f"server {server.url} (pid {server.pid}), warming up")
            soak.run(warmup_plans(), record=False)
            time.sleep(IDLE_PAUSE)
            warm = counts(soak.proc)
            log(f"after warm-up: {warm}; sending {requests} requests (seed {seed})")
            run_start = time.monotonic()
            soak.run(make_plans(requests, seed))
            report.elapsed = time.monotonic() - run_start
            time.sleep(IDLE_PAUSE)
            end = counts(soak.proc)
            try:
                stored = httpx.get(f"{server.url}/sdapi/v1/options", timeout=30).json()
            except (httpx.HTTPError, ValueError):
                stored = None
            report.results = soak.results
            report.checks = check_results(soak, requests, rss_window(requests), warm, end, data, stored)
            report.checks.append(Check("interrupts that landed during a generation", True,
                                       f"{soak.interrupts_during_generation}/"
                                       f"{sum(r.kind == 'interrupt' for r in soak.results)}"))
        finally:
            server.stop()
            report.log_tail = server.log()[-6000:]
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=900.0, help="overall limit in seconds, startup included")
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    report = run_soak(args.requests, args.seed, args.timeout, args.model)
    # Other processes on a shared machine slow requests down (latencies) but must not change any check.
    print(f"\n{args.requests} requests, seed {args.seed}, model {args.model}, {THREADS} threads, "
          f"{report.elapsed:.1f} s ({args.requests / max(report.elapsed, 1e-9):.1f} req/s), "
          f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, {os.cpu_count()} CPUs\n")
    print(report.table())
    if not report.ok:
        print("\nserver log (tail):\n" + report.log_tail)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
