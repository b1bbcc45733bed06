"""The embedded default model draws what it is asked: a few benchmark prompts through ``process_images``.

A broken default model (noise, a wrong scheduler config, a loader that leaves weights random) fails here: each
image is scored by the prompt-adherence oracle (``bench/prompt_adherence.py``), the foreground colour must
match the prompt on nearly every prompt, and so must the shape. The prompts and seeds are fixed, so the
result is deterministic; the full benchmark (72 prompts) is ``venv/bin/python bench/prompt_adherence.py``.
"""

from __future__ import annotations

import os
import sys
import time

from modules import jobs, paths, processing, sd_models

ROOT = paths.script_path
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import prompt_adherence  # noqa: E402

DEFAULT, ALT = "serena-shapes-v1", "serena-shapes-alt"
#: Benchmark cases checked here: two per shape, over seven colours (all eight right with the shipped model).
CASES = [0, 8, 9, 21, 22, 30, 3, 59]
#: How the shipped checkpoint says it is to be sampled (``serena_config.sampling``; docs/models.md).
GUIDANCE_RESCALE, CFG_SCALE = 1.0, 4.0
#: Alt benchmark cases the alt model draws right: a diamond, a cross, a hexagon and another diamond.
ALT_CASES = [32, 37, 6, 56]


def run(case, steps=20, **kw):
    p = processing.StableDiffusionProcessingTxt2Img(
        prompt=case.prompt, negative_prompt="", steps=steps, width=64, height=64, seed=case.seed,
        sampler_name="Euler a", cfg_scale=CFG_SCALE, do_not_save_samples=True, **kw)
    return jobs.run_job("test", processing.process_images, p)


def test_default_checkpoint_is_the_shapes_model(real_env):
    assert sd_models.DEFAULT_CHECKPOINT_FILE == f"{DEFAULT}.safetensors"
    assert sd_models.default_checkpoint().name == f"{DEFAULT}.safetensors"


def test_default_model_follows_the_prompt(real_env):
    cases = [prompt_adherence.prompt_set()[i] for i in CASES]
    rows, times = [], []
    for case in cases:
        t0 = time.perf_counter()
        processed = run(case)
        times.append(time.perf_counter() - t0)
        assert processed.sd_model_name == DEFAULT
        a = prompt_adherence.analyse(processed.images[0])
        rows.append((case.prompt, a.colour, a.shape, a.colour == case.colour, a.shape == case.shape))
    report = "\n".join(f"{p!r}: got {c} {s}" for p, c, s, _, _ in rows)
    # One miss of each is allowed: another CPU's float rounding may tip a borderline image.
    assert sum(r[3] for r in rows) >= len(rows) - 1, f"colour does not follow the prompt:\n{report}"
    assert sum(r[4] for r in rows) >= len(rows) - 1, f"shape does not follow the prompt:\n{report}"


def test_default_model_declares_how_it_is_sampled(real_env):
    model = sd_models.current_model()
    assert (model.guidance_rescale, model.cfg_scale) == (GUIDANCE_RESCALE, CFG_SCALE)
    # What the UI and the CLI start with, and the API fills in: from the cached inspection, no weights read.
    assert sd_models.checkpoint_defaults() == sd_models.CheckpointDefaults(size=64, cfg_scale=CFG_SCALE)
    # The rescale is applied: without it the same request gives another image.
    case = prompt_adherence.prompt_set()[0]
    rescaled = run(case, steps=6).images[0].tobytes()
    model.guidance_rescale = 0.0
    try:
        plain = run(case, steps=6).images[0].tobytes()
    finally:
        model.guidance_rescale = GUIDANCE_RESCALE
    assert plain != rescaled


def test_different_prompts_give_different_colours(real_env):
    case = prompt_adherence.prompt_set()[0]
    colours = set()
    for colour in ("red", "blue", "yellow"):
        other = prompt_adherence.Case(f"a {colour} square on a white background", case.seed, colour, "square", "white")
        colours.add(prompt_adherence.analyse(run(other).images[0]).colour)
    assert colours == {"red", "blue", "yellow"}


def test_checkpoint_override_switches_to_the_alt_models_shapes(real_env):
    """The alt checkpoint knows other shapes (diamond, cross, hexagon, heart): an override visibly switches."""
    import shapes_dataset

    shapes_right = 0
    for case in [prompt_adherence.prompt_set(alt=True)[i] for i in ALT_CASES]:
        overridden = run(case, override_settings={"sd_model_checkpoint": ALT})
        assert overridden.sd_model_name == ALT
        drawn = prompt_adherence.analyse(overridden.images[0], shapes_dataset.ALT_SHAPES)
        assert drawn.colour == case.colour, case.prompt
        shapes_right += drawn.shape == case.shape
        # The default model never learnt these shapes: the same request without the override draws another picture.
        plain = run(case)
        assert plain.sd_model_name == DEFAULT
        assert plain.images[0].tobytes() != overridden.images[0].tobytes()
    # The alt model is weak at its own shapes (docs/models.md); one miss is allowed for float rounding elsewhere.
    assert shapes_right >= len(ALT_CASES) - 1
