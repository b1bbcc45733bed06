"""Cost of checking a checkpoint before it is chosen, against loading it.

Run: ``venv/bin/python bench/checkpoint_check.py [--repeat N]``. For each shipped checkpoint: the header check
(``sd_models_loader.inspect_checkpoint``: the loader's steps on the meta device, no weight read), the same check
answered from the loaded-models cache (path, size and mtime unchanged: one ``os.stat``), and a full
``load_checkpoint`` on the CPU, each the median of N runs, measured in the same run. Target: the cold check costs
well under the load, the cached one next to nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from modules import sd_models, sd_models_loader  # noqa: E402
from modules.checkpoint_info import CheckpointInfo  # noqa: E402


def median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    folder = os.path.join(ROOT, "models", "Stable-diffusion")
    print("| checkpoint | MB | check (s) | cached check (s) | load (s) | check / load |")
    print("|---|---|---|---|---|---|")
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        info = CheckpointInfo(path, name, "0" * 64)
        manager = sd_models.LoadedModels(load_fn=None, inspect_fn=lambda kind, p: sd_models_loader.inspect_checkpoint(p))
        check = median_seconds(lambda: sd_models_loader.inspect_checkpoint(path), args.repeat)
        manager.facts(info)
        cached = median_seconds(lambda: manager.facts(info), args.repeat)
        load = median_seconds(lambda: sd_models_loader.load_checkpoint(info), args.repeat)
        print(f"| {name} | {os.path.getsize(path) / 1e6:.1f} | {check:.3f} | {cached:.6f} | {load:.3f} | "
              f"{check / load:.2f} |")


if __name__ == "__main__":
    main()
