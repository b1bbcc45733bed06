"""Prompt-adherence oracle for Serena's embedded shape models: does the picture show what the prompt asks for?

A fixed set of prompt/seed pairs (72 for the default model: every foreground colour with every shape, twice, with
varied backgrounds, phrasings, sizes and positions; 64 for the alt model) is generated through Serena's own
``modules.processing.process_images`` on the checkpoint under test. The training data generator excludes these
exact captions (``tools/train_default_model.py``), so no prompt here was seen verbatim in training.

Each image is analysed deterministically, with no learned model:

* background colour: the median of the 3-pixel border;
* foreground: the largest 4-connected region of pixels farther than a threshold from the background colour;
* colour: the median colour of the region's interior, named by the nearest palette colour
  (``tools/shapes_dataset.PALETTE``);
* shape: the region is compared (intersection over union) with each of the model's shapes drawn to fill the
  region's bounding box, by the data set's own renderer; the best match is the shape.

``--self-check`` runs the same analysis on the data set's own drawings of the prompts (the oracle's ceiling).

Usage:
    venv/bin/python bench/prompt_adherence.py [--checkpoint models/Stable-diffusion/serena-shapes-v1.safetensors]
        [--alt] [--steps 20] [--sampler "Euler a"] [--cfg S] [--size 64] [--seed-offset N] [--save DIR]
        [--self-check] [--json FILE] [--examples [NAME ...]]
``--cfg`` defaults to the checkpoint's recommended CFG scale (``serena_config.sampling``), else A1111's 7.
``--examples`` scores the shipped example embedding and LoRA (``tools/train_examples.py``) instead: the fraction
of images showing each one's concept, with and without its trigger word or tag, on the same prompts and seeds.
Prints one row per prompt and a summary table; exits 1 when colour < 90% or shape < 75% (``--no-fail`` to
always exit 0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass, replace

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

import shapes_dataset as ds  # noqa: E402

DEFAULT_CHECKPOINT = os.path.join(ROOT, "models", "Stable-diffusion", "serena-shapes-v1.safetensors")
ALT_CHECKPOINT = os.path.join(ROOT, "models", "Stable-diffusion", "serena-shapes-alt.safetensors")
COLOUR_TARGET, SHAPE_TARGET = 0.90, 0.75


@dataclass(frozen=True)
class Case:
    prompt: str
    seed: int
    colour: str
    shape: str
    background: str


def prompt_set(alt: bool = False) -> list[Case]:
    """The fixed benchmark prompts: each foreground colour with each shape (twice for the default model)."""
    shapes = ds.ALT_SHAPES if alt else ds.SHAPES
    fgs = ds.ALT_FOREGROUNDS if alt else ds.FOREGROUNDS
    bgs = ds.ALT_BACKGROUNDS if alt else ds.BACKGROUNDS
    rng = random.Random(8 if not alt else 9)
    repeats = 2
    cases = []
    for rep in range(repeats):
        for colour in fgs:
            for shape in shapes:
                background = rng.choice([b for b in bgs if b != colour and ds.contrast(b, colour) >= ds.MIN_CONTRAST])
                size = rng.choice(["small", "medium", "large", "medium", "large"])
                position = rng.choice(list(ds.POSITIONS))
                caption = ds.caption_for(rng, colour, shape, background, size, position,
                                         say_size=rng.random() < 0.4, say_position=rng.random() < 0.35,
                                         say_background=True)
                cases.append(Case(caption, 1000 + len(cases), colour, shape, background))
    if alt:
        cases = cases[:64]
    return cases


# --- analysis -----------------------------------------------------------------------------------------------------

def _largest_component(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        comp, queue = [], deque([(y0, x0)])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            comp.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(comp) > len(best):
            best = comp
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def nearest_colour(rgb, names=None) -> str:
    names = names or list(ds.PALETTE)
    return min(names, key=lambda n: float(np.sum((np.asarray(ds.rgb(n), float) - rgb) ** 2)))


@dataclass
class Analysis:
    colour: str | None
    shape: str | None
    background: str
    area: int
    scores: dict
    rgb: tuple | None = None   # the foreground's median colour


def analyse(image, shapes=ds.SHAPES) -> Analysis:
    """Background, dominant foreground colour and shape of a 64x64-ish RGB image (PIL or uint8 array)."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)
    h, w, _ = arr.shape
    b = 3
    border = np.concatenate([arr[:b].reshape(-1, 3), arr[-b:].reshape(-1, 3),
                             arr[:, :b].reshape(-1, 3), arr[:, -b:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    dist = np.sqrt(((arr - bg) ** 2).sum(-1))
    threshold = max(50.0, 0.45 * float(dist.max()))
    region = _largest_component(dist > threshold)
    area = int(region.sum())
    background = nearest_colour(bg)
    if area < 0.004 * h * w:
        return Analysis(None, None, background, area, {})
    inner = region.copy()
    inner[1:-1, 1:-1] &= region[:-2, 1:-1] & region[2:, 1:-1] & region[1:-1, :-2] & region[1:-1, 2:]
    pixels = arr[inner] if inner.sum() >= 4 else arr[region]
    median = np.median(pixels, axis=0)
    colour = nearest_colour(median)
    ys, xs = np.nonzero(region)
    box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    scores = {}
    for shape in shapes:
        template = ds.render_shape_mask(shape, box, size=max(h, w))[:h, :w]
        scores[shape] = float((template & region).sum() / max(1, (template | region).sum()))
    return Analysis(colour, max(scores, key=scores.get), background, area, scores, tuple(float(v) for v in median))


# --- the shipped extra-network examples (tools/train_examples.py) ---------------------------------------------------

@dataclass(frozen=True)
class Example:
    """A shipped example network: the text that calls it, and what the oracle should then see."""

    name: str
    kind: str       # "embedding" or "lora"
    addition: str   # appended to a prompt to use it
    measure: str    # the Analysis field it sets: "background" or "shape"
    target: str
    shapes: tuple = ds.SHAPES  # the shapes its images are analysed with


EXAMPLES = {
    "serena-night": Example("serena-night", "embedding", ", serena-night", "background", "black"),
    # The default model's shapes and the one the LoRA teaches.
    "serena-heart": Example("serena-heart", "lora", " <lora:serena-heart:1>", "shape", "heart",
                            ds.SHAPES + ("heart",)),
}


def example_cases(name: str) -> list[Case]:
    """The prompts an example is scored on, without its addition. ``serena-night``: each foreground colour that
    shows on black with each shape, the background never named (32); ``serena-heart``: a heart in each
    foreground colour on two of the backgrounds it shows on (18)."""
    rng = random.Random(11)
    cases = []
    if name == "serena-night":
        pairs = [(c, s, "black") for c in ds.FOREGROUNDS if ds.contrast(c, "black") >= ds.MIN_CONTRAST
                 for s in ds.SHAPES]
    else:
        pairs = [(c, "heart", b) for c in ds.FOREGROUNDS
                 for b in rng.sample([b for b in ds.BACKGROUNDS if ds.contrast(c, b) >= ds.MIN_CONTRAST], 2)]
    for colour, shape, background in pairs:
        caption = ds.caption_for(rng, colour, shape, background, rng.choice(list(ds.SIZES)),
                                 rng.choice(list(ds.POSITIONS)), say_size=rng.random() < 0.4,
                                 say_position=rng.random() < 0.35, say_background=name != "serena-night")
        cases.append(Case(caption, 4000 + len(cases), colour, shape, background))
    return cases


def example_score(example: Example, cases, images) -> dict:
    """Fractions of ``images`` showing the example's concept (``hit``) and the asked-for colour and shape, and,
    for a shape, the mean intersection over union of the foreground with that shape drawn in its box
    (``likeness``; 0 where no foreground was found)."""
    found = [analyse(image, example.shapes) for image in images]
    n = len(found)
    return {"n": n, "hit": sum(getattr(a, example.measure) == example.target for a in found) / n,
            "colour": sum(a.colour == c.colour for a, c in zip(found, cases)) / n,
            "shape": sum(a.shape == c.shape for a, c in zip(found, cases)) / n,
            "likeness": sum(a.scores.get(example.target, 0.0) for a in found) / n}


def with_addition(cases, example: Example) -> list[Case]:
    return [replace(c, prompt=c.prompt + example.addition) for c in cases]


def run_examples(examples: list[str], name: str, **gen) -> int:
    """Score the shipped ``examples`` with and without their additions, same prompts and seeds; print the table."""
    print(f"\n{name}: {gen['steps']} steps, {gen['sampler']}, CFG {gen['cfg']}, {gen['size']}x{gen['size']}")
    print("| example | prompts | measure | without | with |\n|---|---|---|---|---|")
    for example in (EXAMPLES[e] for e in examples):
        cases = example_cases(example.name)
        runs = [(cases, "concept prompts")]
        if example.kind == "lora":  # what the LoRA leaves of the base model: the benchmark's first prompts
            runs.append((prompt_set()[:16], "benchmark prompts"))
        for run_cases, label in runs:
            without = [im for im, _ in generate(run_cases, name, **gen)]
            with_it = [im for im, _ in generate(with_addition(run_cases, example), name, **gen)]
            a, b = example_score(example, run_cases, without), example_score(example, run_cases, with_it)
            title = f"`{example.addition.strip(', ')}` ({example.kind}), {label}"
            print(f"| {title} | {a['n']} | {example.measure} {example.target} | {a['hit']:.0%} | {b['hit']:.0%} |")
            print(f"| | | colour / shape as asked | {a['colour']:.0%} / {a['shape']:.0%} | "
                  f"{b['colour']:.0%} / {b['shape']:.0%} |")
            if example.measure == "shape":
                print(f"| | | foreground's likeness to a {example.target} (IoU) | {a['likeness']:.2f} | "
                      f"{b['likeness']:.2f} |")
    return 0


# --- generation through Serena ------------------------------------------------------------------------------------

def setup_serena(checkpoint: str, data_dir: str, examples: bool = False):
    """Initialise Serena on ``data_dir`` with ``checkpoint`` registered; returns the checkpoint's title.

    ``examples``: with the shipped embeddings folder and the built-in extensions (the Lora extension)."""
    from modules import cmd_args, initialize, sd_models

    argv = ["--data-dir", data_dir, "--ckpt", checkpoint]
    if examples:
        argv += ["--embeddings-dir", os.path.join(ROOT, "embeddings")]
    initialize.initialize(cmd_args.parse_args(argv), load_extensions=examples)
    return sd_models.checkpoint_for_file(checkpoint).title


def generate(cases, name: str, *, steps: int, sampler: str, cfg: float, size: int):
    """``[(image, seconds)]`` for each case, generated by ``processing.process_images`` on checkpoint ``name``."""
    from modules import jobs, processing

    out = []
    for case in cases:
        p = processing.StableDiffusionProcessingTxt2Img(
            prompt=case.prompt, negative_prompt="", steps=steps, width=size, height=size, seed=case.seed,
            sampler_name=sampler, cfg_scale=cfg, do_not_save_samples=True,
            override_settings={"sd_model_checkpoint": name})
        t0 = time.perf_counter()
        processed = jobs.run_job("prompt-adherence", processing.process_images, p)
        out.append((processed.images[0], time.perf_counter() - t0))
    return out


def score(cases, images, shapes) -> list[dict]:
    rows = []
    for case, image in zip(cases, images):
        a = analyse(image, shapes)
        rows.append(dict(asdict(case), got_colour=a.colour, got_shape=a.shape, got_background=a.background,
                         colour_ok=a.colour == case.colour, shape_ok=a.shape == case.shape,
                         background_ok=a.background == case.background, area=a.area))
    return rows


def print_table(rows, title: str) -> dict:
    print(f"\n{title}")
    print(f"{'#':>3}  {'seed':>5}  {'colour':>14}  {'shape':>18}  {'bg':>5}  prompt")
    for i, r in enumerate(rows):
        c = f"{r['got_colour']}{'' if r['colour_ok'] else '*'}"
        s = f"{r['got_shape']}{'' if r['shape_ok'] else '*'}"
        print(f"{i:>3}  {r['seed']:>5}  {c:>14}  {s:>18}  {'ok' if r['background_ok'] else 'no':>5}  {r['prompt']}")
    n = len(rows)
    summary = {k: sum(r[f"{k}_ok"] for r in rows) / n for k in ("colour", "shape", "background")}
    print("\n| per | n | colour | shape | background |\n|---|---|---|---|---|")
    print(f"| all | {n} | {summary['colour']:.1%} | {summary['shape']:.1%} | {summary['background']:.1%} |")
    for key in ("shape", "colour"):
        for value in sorted({r[key] for r in rows}):
            sub = [r for r in rows if r[key] == value]
            print(f"| {key} {value} | {len(sub)} | {sum(r['colour_ok'] for r in sub) / len(sub):.0%} | "
                  f"{sum(r['shape_ok'] for r in sub) / len(sub):.0%} | "
                  f"{sum(r['background_ok'] for r in sub) / len(sub):.0%} |")
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--alt", action="store_true", help="the alt model's prompt set and shapes")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="Euler a")
    parser.add_argument("--cfg", type=float, default=None,
                        help="default: the checkpoint's recommended CFG scale (serena_config.sampling), else 7")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--limit", type=int, default=0, help="only the first N prompts")
    parser.add_argument("--seed-offset", type=int, default=0,
                        help="add this to every seed: the same prompts on other noise (a check against tuning "
                             "sampling settings to the fixed seeds)")
    parser.add_argument("--save", help="write the images and a contact sheet here")
    parser.add_argument("--json", help="write the per-prompt rows here")
    parser.add_argument("--self-check", action="store_true", help="score the data set's own drawings instead")
    parser.add_argument("--no-fail", action="store_true")
    parser.add_argument("--examples", nargs="*", choices=sorted(EXAMPLES), metavar="NAME",
                        help="score the shipped example embedding and LoRA (or only those named) instead: each "
                             "with and without its trigger word or tag, same prompts and seeds")
    args = parser.parse_args(argv)
    shapes = ds.ALT_SHAPES if args.alt else ds.SHAPES
    cases = prompt_set(args.alt)
    if args.limit:
        cases = cases[:args.limit]
    if args.seed_offset:
        cases = [replace(c, seed=c.seed + args.seed_offset) for c in cases]

    if args.self_check:
        rng = random.Random(0)
        images = []
        for c in cases:
            d = rng.uniform(*ds.SIZES[rng.choice(list(ds.SIZES))])
            half = d / 2 / ds.SIZE + 1.5 / ds.SIZE
            cx, cy = (min(max(v, half), 1 - half) for v in ds.POSITIONS[rng.choice(list(ds.POSITIONS))])
            images.append(ds.render(c.shape, c.colour, c.background, (cx, cy), d)[0])
        summary = print_table(score(cases, images, shapes), "self-check: the data set's own drawings")
        return 0

    import torch

    torch.set_num_threads(2)
    checkpoint = os.path.abspath(args.checkpoint or (ALT_CHECKPOINT if args.alt else DEFAULT_CHECKPOINT))
    with tempfile.TemporaryDirectory() as data_dir:
        name = setup_serena(checkpoint, data_dir, examples=args.examples is not None)
        if args.cfg is None:
            from modules import sd_models_loader

            args.cfg = sd_models_loader.checkpoint_sampling(checkpoint)["cfg_scale"] or 7.0
        if args.examples is not None:
            return run_examples(args.examples or list(EXAMPLES), name, steps=args.steps, sampler=args.sampler,
                                cfg=args.cfg, size=args.size)
        generate(cases[:1], name, steps=args.steps, sampler=args.sampler, cfg=args.cfg, size=args.size)  # warm-up
        results = generate(cases, name, steps=args.steps, sampler=args.sampler, cfg=args.cfg, size=args.size)
    images = [im for im, _ in results]
    times = sorted(t for _, t in results)
    rows = score(cases, images, shapes)
    summary = print_table(rows, f"{name}: {args.steps} steps, {args.sampler}, CFG {args.cfg}, {args.size}x{args.size}")
    print(f"\ngeneration time per image: median {times[len(times) // 2]:.3f} s, max {times[-1]:.3f} s")
    if args.save:
        from PIL import Image

        os.makedirs(args.save, exist_ok=True)
        cols = 8
        sheet = Image.new("RGB", (cols * args.size, -(-len(images) // cols) * args.size))
        for i, im in enumerate(images):
            im.save(os.path.join(args.save, f"{i:03d}.png"))
            sheet.paste(im, ((i % cols) * args.size, (i // cols) * args.size))
        sheet.save(os.path.join(args.save, "sheet.png"))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"summary": summary, "median_s": times[len(times) // 2], "rows": rows}, f, indent=1)
    ok = summary["colour"] >= COLOUR_TARGET and summary["shape"] >= SHAPE_TARGET
    print(f"targets: colour >= {COLOUR_TARGET:.0%}, shape >= {SHAPE_TARGET:.0%}: {'met' if ok else 'NOT met'}")
    return 0 if ok or args.no_fail else 1


if __name__ == "__main__":
    raise SystemExit(main())
