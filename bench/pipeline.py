"""Generation cost: Serena's runtime against a bare diffusers pipeline, and the loaded-models cache.

Run: ``venv/bin/python bench/pipeline.py [--repeat N] [--skip-sd15]``. Prints three tables, each with a ratio
against a baseline measured in the same run:

1. ``process_images`` vs ``diffusers.StableDiffusionPipeline`` on the same components, steps, size, seed and
   scheduler (target: Serena ≤ 1.05× — the runtime adds at most 5%).
2. A checkpoint override round trip (switch to B, generate, back to A) with the loaded-models cache vs without it
   (target: ≥ 20× faster with the cache), switch time alone and with a generation.
3. The cost of one SD1.5-size UNet step on this machine (random weights, nothing downloaded), so users know what
   a real checkpoint will cost here. Peak RSS is reported last.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from modules import cmd_args, initialize, processing, sd_models, shared  # noqa: E402
from modules.runtime_utils import temporary_opts  # noqa: E402

STEPS, SIZE, SEED, PROMPT, NEGATIVE, SAMPLER = 20, 64, 1234, "a red circle on a blue background", "blurry", "Euler a"


def timed(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def serena_generate():
    p = processing.StableDiffusionProcessingTxt2Img(prompt=PROMPT, negative_prompt=NEGATIVE, steps=STEPS, width=SIZE,
                                                    height=SIZE, seed=SEED, sampler_name=SAMPLER,
                                                    do_not_save_samples=True)
    return processing.process_images(p)


def bare_pipeline(model):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline
    scheduler = EulerAncestralDiscreteScheduler.from_config(model.scheduler_config)  # SAMPLER, diffusers' own
    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                   unet=model.unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def run():
        return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, height=SIZE, width=SIZE,
                    guidance_scale=7.0, generator=torch.Generator("cpu").manual_seed(SEED), output_type="pil")
    return run


def table(title, rows, header):
    print(f"\n{title}")
    print("  ".join(f"{h:>22}" for h in header))
    for row in rows:
        print("  ".join(f"{c:>22}" if isinstance(c, str) else f"{c:>22.4f}" for c in row))


def bench_runtime(repeat):
    model = sd_models.current_model()
    run_bare = bare_pipeline(model)
    serena_generate(), run_bare()  # warm both
    serena, bare = [], []
    for _ in range(repeat):  # alternate so machine noise hits both alike
        serena += timed(serena_generate, 1)
        bare += timed(run_bare, 1)
    s, b = statistics.median(serena), statistics.median(bare)
    table(f"1. {STEPS} steps {SIZE}x{SIZE} {SAMPLER}, median of {repeat} (seconds)",
          [("diffusers pipeline", b, 1.0), ("Serena process_images", s, s / b)],
          ("path", "seconds", "ratio to diffusers"))
    print(f"   target: Serena <= 1.05x  ->  {'met' if s / b <= 1.05 else 'NOT met'}")


def bench_cache(repeat):
    titles = [c.title for c in sd_models.list_checkpoints()]
    other = next(t for t in titles if sd_models.resolve_checkpoint(t) != sd_models.default_checkpoint())

    def round_trip(generate: bool):
        with temporary_opts({"sd_model_checkpoint": other}):
            sd_models.current_model()
            if generate:
                serena_generate()
        sd_models.current_model()  # back to A (lazy switch)
        if generate:
            serena_generate()

    rows = []
    for generate in (False, True):
        results = {}
        for limit in (1, 2):
            shared.opts.set("sd_checkpoints_limit", limit)
            sd_models.model_manager.unload_all()
            round_trip(generate)  # fill the cache (limit 2 keeps both models)
            loads = sd_models.model_manager.loads
            results[limit] = statistics.median(timed(lambda: round_trip(generate), repeat))
            results[f"loads{limit}"] = (sd_models.model_manager.loads - loads) / repeat
        label = "switch + 2 generations" if generate else "switch only"
        rows.append((f"{label}, no cache", results[1], f"{results['loads1']:.0f} loads/trip"))
        rows.append((f"{label}, cache", results[2], f"{results[1] / results[2]:.0f}x faster"))
    shared.opts.unset("sd_checkpoints_limit")
    table(f"2. checkpoint override round trip A -> B -> A, median of {repeat} (seconds)", rows,
          ("case", "seconds", "vs no cache"))


def bench_sd15():
    from diffusers import UNet2DConditionModel

    from modules import sd_models_loader
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(sd_models_loader.default_configs()["unet"]).eval()
    rows = []
    with torch.inference_mode():
        for latent in (32, 64):
            x = torch.randn(2, 4, latent, latent)
            ctx = torch.randn(2, 77, 768)
            unet(x, 10, encoder_hidden_states=ctx)  # warm
            t = statistics.median(timed(lambda: unet(x, 10, encoder_hidden_states=ctx), 2))
            rows.append((f"{latent * 8}x{latent * 8}", t, t * 20))
    table("3. SD1.5-size UNet, one step with CFG (batch 2), fp32, this CPU", rows,
          ("image size", "seconds per step", "20 steps (UNet only)"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-sd15", action="store_true", help="skip the (slow, ~4 GB) SD1.5-size estimate")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        initialize.initialize(cmd_args.parse_args(["--data-dir", data]), load_extensions=False)
        print(f"torch threads: {torch.get_num_threads()}, model: {sd_models.current_model().info.title}")
        bench_runtime(args.repeat)
        bench_cache(args.repeat)
        if not args.skip_sd15:
            bench_sd15()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
