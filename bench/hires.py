"""Cost of Hires fix against its two passes run separately, in the same run, on the embedded checkpoint.

Run: ``venv/bin/python bench/hires.py [--repeat N]``. "Hires" is one txt2img with ``enable_hr`` and the "Latent"
upscaler through ``process_images``; "separate" is the same two passes called directly on the pipeline (a
txt2img ``sample_latents``, the same latent upscale, an img2img ``sample_batch`` at the target size). The ratio is
Hires over separate; target <= 1.05 (what Hires fix adds is bookkeeping, not sampling).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from timing import best_times  # noqa: E402

from modules import cmd_args, hires, initialize, jobs, processing, sd_models, sd_pipeline, shared  # noqa: E402

REQUEST = dict(prompt="a red circle on a blue background", negative_prompt="blurry", steps=8, seed=1234, width=64,
               height=64, sampler_name="Euler", enable_hr=True, hr_upscaler="Latent", hr_second_pass_steps=8,
               denoising_strength=0.6, do_not_save_samples=True)


def hires_fix() -> None:
    jobs.run_job("bench", processing.process_images, processing.StableDiffusionProcessingTxt2Img(**REQUEST))


def separate() -> None:
    p = processing.StableDiffusionProcessingTxt2Img(**REQUEST)
    p.init_seeds()
    p.settings = processing.GenerationSettings.capture(shared.opts)
    model = sd_models.current_model()
    first = p.sampling_request(p.all_prompts, p.all_negative_prompts, p.all_seeds, p.all_subseeds)
    latents = sd_pipeline.sample_latents(first, model, jobs.state)
    size = hires.target(p.width, p.height, p.hr_scale, 0, 0)
    up = hires.upscale_latents(latents, "Latent", size, p.width // latents.shape[-1])
    second = dataclasses.replace(first, width=size.width, height=size.height, steps=p.hr_second_pass_steps,
                                 denoising_strength=p.denoising_strength, init_latents=up)
    sd_pipeline.sample_batch(second, model, jobs.state)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    initialize.initialize(cmd_args.parse_args(["--data-dir", tempfile.mkdtemp()]))
    hires_fix(), separate()  # warm: load the model, fill caches
    h, s = best_times((hires_fix, separate), args.repeat)
    print(f"{'case':<28}{'best s':>10}")
    print(f"{'Hires fix (Latent)':<28}{h:>10.3f}")
    print(f"{'two passes separately':<28}{s:>10.3f}")
    print(f"{'ratio (target <= 1.05)':<28}{h / s:>10.3f}")


if __name__ == "__main__":
    main()
