"""Start-up time: from ``python launch.py --skip-install`` to the server answering 200, with and without the web UI.

Run: ``venv/bin/python bench/startup.py [--runs 3]``. Each run starts a fresh process on a free port with a
temporary data folder (shared by all runs, as a user's is), polls every 50 ms -- ``GET /`` with the UI,
``GET /sdapi/v1/progress`` with ``--nowebui`` -- and kills the process once it answered and its starting model is
loaded. The clock to HTTP 200 includes the interpreter start, imports, settings, extensions and, with the UI,
building the gradio page. ``webui.py`` loads the starting checkpoint (the embedded default) in the background once
the app is built, so the server answers before the model is in memory and generations wait for it; each run also
waits for the log line that says the model is loaded (``start-up took ... s``) and reports when it came, on the
same clock. The two modes alternate run by run so that drift (other processes on a shared machine) hits both
alike; the 1-minute load average before and after is printed with the table. Target: median <= 8 s to HTTP 200
with the UI.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_S = 8.0
TIMEOUT_S = 120.0
MODES = {"web UI": ([], "/"), "API only (--nowebui)": (["--nowebui"], "/sdapi/v1/progress")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def one_run(extra: list[str], path: str, data_dir: str) -> dict:
    """Start Serena, wait for 200 on ``path`` and for the starting model; returns seconds to 200, to "Serena
    ready" and to the log line saying the starting model is loaded, and that model's title."""
    port = free_port()
    command = [sys.executable, os.path.join(ROOT, "launch.py"), "--skip-install", "--port", str(port),
               "--data-dir", data_dir, *extra]
    lines: list[str] = []
    marks: dict = {}
    model_loaded = threading.Event()
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False"),
                            start_new_session=True)

    def read():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if "Serena ready" in line:
                marks.setdefault("ready", time.perf_counter() - start)
            m = re.search(r"start-up took ([\d.]+) s \(checkpoint: (.*)\)", line)
            if m:
                marks["model"], marks["checkpoint"] = time.perf_counter() - start, m.group(2)
                model_loaded.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}{path}"
    try:
        while True:
            if answers(url):
                marks["http"] = time.perf_counter() - start
                break
            if proc.poll() is not None:
                raise RuntimeError(f"{' '.join(command)} exited with {proc.returncode}:\n" + "\n".join(lines[-30:]))
            if time.perf_counter() - start > TIMEOUT_S:
                raise RuntimeError(f"no 200 from {url} after {TIMEOUT_S:.0f} s:\n" + "\n".join(lines[-30:]))
            time.sleep(0.05)
        if not model_loaded.wait(max(0.0, TIMEOUT_S - (time.perf_counter() - start))):
            raise RuntimeError(f"no 'start-up took' line after {TIMEOUT_S:.0f} s:\n" + "\n".join(lines[-30:]))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        reader.join(5)
        proc.stdout.close()
    return marks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per mode (default 3); the table shows medians")
    args = parser.parse_args(argv)
    results: dict[str, list[dict]] = {name: [] for name in MODES}
    checkpoint = None
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="serena-bench-startup-") as data_dir:
        for i in range(args.runs):
            for name, (extra, path) in MODES.items():
                marks = one_run(extra, path, data_dir)
                checkpoint = marks.get("checkpoint", checkpoint)
                results[name].append(marks)
                print(f"run {i + 1}/{args.runs} {name}: {marks['http']:.2f} s to 200", flush=True)

    print()
    print(f"Start-up: `launch.py --skip-install` to HTTP 200 (median of {args.runs}; checkpoint loaded: "
          f"{checkpoint or 'unknown'}; {os.cpu_count()} CPUs; 1-minute load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after)")
    print()
    print("| mode | to HTTP 200 (median) | runs | \"Serena ready\" printed | starting model loaded (log line) |")
    print("|---|---|---|---|---|")
    ok = True
    for name, runs in results.items():
        http = statistics.median(r["http"] for r in runs)
        ready = [r["ready"] for r in runs if "ready" in r]
        model = [r["model"] for r in runs if "model" in r]
        all_runs = ", ".join(f"{r['http']:.2f}" for r in runs)
        print(f"| {name} | {http:.2f} s | {all_runs} | "
              f"{statistics.median(ready):.2f} s | {statistics.median(model):.2f} s |" if ready and model else
              f"| {name} | {http:.2f} s | {all_runs} | - | - |")
        if name == "web UI":
            ok = http <= TARGET_S
    print()
    print(f"target: web UI <= {TARGET_S:.0f} s: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
