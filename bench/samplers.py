"""Per-step time of Serena's sigma-space sampling loop vs diffusers' scheduler loop, same model, same run.

    venv/bin/python bench/samplers.py [--steps 20] [--repeats 3]

Both loops run the shipped default checkpoint's UNet at 64x64 with CFG (batch of 2 through the UNet) from the
checkpoint's own scheduler config. "loop only" replaces the UNet by a function of the same output shape, so the
samplers' own per-step cost shows; "with UNet" is what a user waits for. Ratios are new / diffusers (<1 is faster).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modules import sd_models_loader, sd_samplers, sd_schedules  # noqa: E402
from modules.checkpoint_info import CheckpointInfo  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINT = os.path.join(ROOT, "models", "Stable-diffusion", "serena-shapes-v1.safetensors")
# Serena sampler -> (diffusers class, its extra arguments) that Serena used before the sigma-space loop.
DIFFUSERS = {
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DDIM": ("DDIMScheduler", {"clip_sample": False}),
    "UniPC": ("UniPCMultistepScheduler", {"solver_type": "bh1", "solver_order": 3}),
}


def diffusers_loop(name, config, unet, context, latents, steps):
    import diffusers

    cls_name, extra = DIFFUSERS[name]
    scheduler = getattr(diffusers, cls_name).from_config(config, **extra)
    scheduler.set_timesteps(steps)
    x = latents * scheduler.init_noise_sigma
    generator = [torch.Generator().manual_seed(1)]
    kwargs = {"generator": generator} if "generator" in scheduler.step.__code__.co_varnames else {}
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(torch.cat([x, x]), t)
        pred = unet(model_in, t, context).chunk(2)
        x = scheduler.step(pred[0] + 4 * (pred[1] - pred[0]), t, x, **kwargs).prev_sample
    return x


def sigma_loop(name, config, unet, context, latents, steps):
    schedule = sd_schedules.ModelSchedule(config)
    sampler = sd_samplers.resolve_sampler(name)
    sigmas = sd_samplers.sigmas_for(sampler, sd_samplers.resolve_scheduler("Automatic"), steps, schedule)
    generator = torch.Generator().manual_seed(1)

    def denoise(x, sigma, step):
        c_in, c_skip, c_out = schedule.scalings(sigma)
        t = schedule.sigma_to_t(sigma).float().expand(2)
        pred = unet(torch.cat([x, x]) * c_in, t, context).chunk(2)
        return x * c_skip + (pred[0] + 4 * (pred[1] - pred[0])) * c_out

    return sampler.function(denoise, latents * float(sigmas[0]), sigmas,
                            lambda: torch.randn(latents.shape, generator=generator), sampler.default_eta)


def timed(fn, repeats, steps):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best / steps * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    info = CheckpointInfo(CHECKPOINT, os.path.basename(CHECKPOINT), "")
    model = sd_models_loader.load_checkpoint(info)
    config = dict(model.scheduler_config)
    context = torch.zeros(2, 77, model.text_encoder.config.hidden_size)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))

    def real_unet(x, t, c):
        return model.unet(x, t, encoder_hidden_states=c).sample

    def no_unet(x, t, c):
        return x * 0.5

    print(f"\nms per step, {args.steps} steps, best of {args.repeats} (model: {os.path.basename(CHECKPOINT)})")
    print(f"{'sampler':>10} {'part':>10} {'diffusers':>10} {'sigma loop':>11} {'ratio':>7}")
    with torch.inference_mode():
        for name in DIFFUSERS:
            for part, unet in (("loop only", no_unet), ("with UNet", real_unet)):
                old = timed(lambda: diffusers_loop(name, config, unet, context, latents, args.steps),
                            args.repeats, args.steps)
                new = timed(lambda: sigma_loop(name, config, unet, context, latents, args.steps),
                            args.repeats, args.steps)
                print(f"{name:>10} {part:>10} {old:>10.3f} {new:>11.3f} {new / old:>7.2f}")


if __name__ == "__main__":
    main()
