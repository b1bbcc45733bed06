"""Cost of a LoRA: one generation with one LoRA against the same generation without, on the embedded model.

Run: ``venv/bin/python bench/networks.py [--repeat N] [--steps N]``. A kohya LoRA (rank 4, attention projections,
text encoder and ResNet convs: ``tools/make_tiny_lora.py``) is written for the embedded checkpoint into a temporary
data folder, and the built-in Lora extension is loaded as at start-up. Rows, each over N runs interleaved (plain,
cold, warm, patch in turn, so a change in machine load hits every row alike), with the median, the best (the
least disturbed run, as ``timeit`` advises on a shared machine) and the best's ratio against the plain
generation's best, measured in the same run:

* plain: no tag;
* cold: the tag, with the extension's delta cache emptied before each run (reads the file, computes every delta);
* warm: the tag again, deltas cached (what the second and later generations with the same LoRA cost);
* patch only: entering and leaving the weight patch alone (backup, add, restore), without a generation.

Every timed generation includes the restore. Exact restore is checked in the same run: the weights' sha256 after
every LoRA generation equals the one before, and a plain generation after them gives the same bytes as the first.
Target: warm ≤ 1.05× plain.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from modules import cmd_args, initialize, plugins, processing, sd_models  # noqa: E402
from tools import make_tiny_lora  # noqa: E402

SIZE, SEED, PROMPT, SAMPLER = 64, 1234, "a red circle on a blue background", "Euler a"


def digest(model) -> str:
    h = hashlib.sha256()
    for component in (model.unet, model.text_encoder):
        for name, tensor in component.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def generate(prompt: str, steps: int):
    p = processing.StableDiffusionProcessingTxt2Img(prompt=prompt, steps=steps, width=SIZE, height=SIZE, seed=SEED,
                                                    sampler_name=SAMPLER, do_not_save_samples=True)
    processed = processing.process_images(p)
    if processed.warnings:
        raise SystemExit(f"unexpected warnings: {processed.warnings}")
    return processed.images[0].tobytes()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        initialize.initialize(cmd_args.parse_args(["--data-dir", data]))
        model = sd_models.current_model()
        make_tiny_lora.write(model, os.path.join(data, "models", "Lora", "bench.safetensors"), "kohya", std=0.2)
        script = plugins.pm.get_plugin("Lora")
        tag = f"{PROMPT} <lora:bench:0.8>"
        print(f"torch threads: {torch.get_num_threads()}, model: {model.info.title}, {args.steps} steps, "
              f"{SIZE}x{SIZE}, {SAMPLER}, repeat {args.repeat}")
        before, first = digest(model), generate(PROMPT, args.steps)
        lora_image = generate(tag, args.steps)
        if lora_image == first:
            raise SystemExit("the LoRA did not change the image")
        rows = {"plain": [], "cold": [], "warm": [], "patch only": []}
        checks = 0
        for _ in range(args.repeat):
            rows["plain"].append(timed(lambda: generate(PROMPT, args.steps)))
            script.patch._states.clear()  # cold: no cached deltas for this model
            rows["cold"].append(timed(lambda: generate(tag, args.steps)))
            rows["warm"].append(timed(lambda: generate(tag, args.steps)))
            if digest(model) != before:
                raise SystemExit("weights differ after a LoRA generation")
            checks += 1
            state = script.patch.state_for(model)
            applied = tuple(script.patch.Applied(k, d, 0.8, 0.8) for k, (d, _) in state.deltas.items())

            def patch_only():
                with script.patch.applied(model, applied):
                    pass
            rows["patch only"].append(timed(patch_only))
        if generate(PROMPT, args.steps) != first or digest(model) != before:
            raise SystemExit("a plain generation after the LoRA ones differs from the first")
        layers = sum(len(d) for d in script.patch.state_for(model).deltas.values())
        plain = min(rows["plain"])
        print(f"\nLoRA: kohya rank {make_tiny_lora.RANK}, {layers} layers; exact restore checked "
              f"{checks + 1} times (weights sha256 and image bytes)\n")
        print(f"| {'case':<10} | {'median s':>9} | {'best s':>9} | {'best x plain':>12} |")
        print(f"|{'-' * 12}|{'-' * 11}|{'-' * 11}|{'-' * 14}|")
        for name, times in rows.items():
            print(f"| {name:<10} | {statistics.median(times):>9.4f} | {min(times):>9.4f} | "
                  f"{min(times) / plain:>12.3f} |")


if __name__ == "__main__":
    main()
