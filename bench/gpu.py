"""Sampling speed on the device Serena would pick: Serena's sampling path against a bare diffusers loop.

Run: ``venv/bin/python bench/gpu.py [--quick] [--steps N]``. For an SD1.5-size UNet (512 px, from
``modules/sd_configs/v1``) and an SDXL-size UNet (1024 px, SDXL base's UNet config; random weights, nothing
downloaded), it measures it/s of

* Serena: ``sd_pipeline.Denoiser`` (CFG over one batch of two) driven by ``sd_samplers``' Euler, over the sigmas
  ``sd_samplers.sigmas_for`` gives, the UNet placed by ``modules.devices``/``modules.model_placement``;
* the baseline: diffusers' ``EulerDiscreteScheduler`` loop (``scale_model_input``, UNet, CFG, ``step``) with the
  same UNet, the same conditioning and the same number of steps, in the same run;

and prints a table with the ratio (Serena / baseline; 1.0 means Serena's loop adds nothing). Precision is what
``modules.devices`` picks: float16 on CUDA, float32 on the CPU. One timed run per case after one warm-up step.

``--quick`` uses tiny UNets of the same layouts at 64 px so that the script runs on a CPU in seconds (the check
that it works); its numbers say nothing about real checkpoints. The SDXL-size UNet gets its added conditioning
(pooled text embedding, size/crop ids) from a small wrapper, since Serena has no SDXL loading yet; prompt
encoding and the VAE are left out of both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from diffusers import EulerDiscreteScheduler, UNet2DConditionModel  # noqa: E402

from modules import cmd_args, devices, jobs, model_placement, prompt_parser, sd_samplers, sd_schedules  # noqa: E402
from modules import sd_pipeline, sd_models_loader  # noqa: E402

SDXL_UNET = {  # SDXL base 1.0's unet/config.json, the fields that differ from diffusers' defaults
    "sample_size": 128, "block_out_channels": [320, 640, 1280], "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20], "cross_attention_dim": 2048,
    "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
TINY = {"block_out_channels": [32, 64], "layers_per_block": 1, "attention_head_dim": 8, "cross_attention_dim": 32,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "sample_size": 8}
TINY_XL = {**TINY, "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
           "projection_class_embeddings_input_dim": 32 + 6 * 8}


def unet_configs(quick: bool) -> dict[str, tuple[dict, int]]:
    """name -> (UNet config, pooled text width for SDXL's added conditioning or 0)."""
    if quick:
        return {"SD1.5 layout (tiny)": (TINY, 0), "SDXL layout (tiny)": (TINY_XL, 32)}
    with open(os.path.join(sd_models_loader.V1_CONFIG_DIR, "unet", "config.json"), encoding="utf-8") as f:
        sd15 = json.load(f)
    return {"SD1.5-size UNet, 512 px": (sd15, 0), "SDXL-size UNet, 1024 px": (SDXL_UNET, 1280)}


class AddedConditioning(torch.nn.Module):
    """An SDXL UNet called as an SD1 one: fixed pooled embedding and size/crop ids, as SDXL's pipeline passes."""

    def __init__(self, unet, pooled_width: int, size: int):
        super().__init__()
        self.unet, self.config = unet, unet.config
        self.pooled_width, self.size = pooled_width, size

    def forward(self, sample, timestep, encoder_hidden_states):
        n = sample.shape[0]
        ids = torch.tensor([[self.size, self.size, 0, 0, self.size, self.size]], device=sample.device,
                           dtype=sample.dtype).expand(n, 6)
        pooled = torch.zeros(n, self.pooled_width, device=sample.device, dtype=sample.dtype)
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                         added_cond_kwargs={"text_embeds": pooled, "time_ids": ids})


class FixedEncoder:
    """A prompt encoder that returns one fixed conditioning: prompt encoding is not what is measured."""

    def __init__(self, context):
        self.context = context

    def encode(self, text):
        return self.context


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def serena_loop(unet, dtype, context, latents, steps: int, scheduler_config: dict):
    schedule = sd_schedules.ModelSchedule(scheduler_config)
    sampler, scheduler = sd_samplers.resolve_sampler_and_scheduler("Euler", None)
    sigmas = sd_samplers.sigmas_for(sampler, scheduler, steps, schedule)
    model = SimpleNamespace(unet=unet, dtype=dtype, guidance_rescale=0.0)
    request = SimpleNamespace(steps=steps, cfg_scale=7.0)
    cond = prompt_parser.get_learned_conditioning_prompt_schedules(["p"], steps)
    uncond = prompt_parser.get_learned_conditioning_prompt_schedules([""], steps)
    denoiser = sd_pipeline.Denoiser(request, model, schedule, FixedEncoder(context), cond, uncond, steps,
                                    jobs.State())
    x = latents * float(sigmas[0])
    return sampler.function(denoiser, x, sigmas, lambda: torch.zeros_like(x), 0.0)


def diffusers_loop(unet, dtype, context, latents, steps: int, scheduler_config: dict):
    scheduler = EulerDiscreteScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(steps, device=latents.device)
    x = latents * scheduler.init_noise_sigma
    both = torch.stack([context, context])
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(torch.cat([x, x]), t).to(dtype)
        pred = unet(model_in, t, encoder_hidden_states=both).sample.float()
        uncond, cond = pred.chunk(2)
        x = scheduler.step(uncond + 7.0 * (cond - uncond), t, x).prev_sample
    return x


def its(run, steps: int, device) -> float:
    """Iterations per second of one ``run(steps)`` (after a one-step warm-up)."""
    run(1)
    synchronize(device)
    start = time.perf_counter()
    run(steps)
    synchronize(device)
    return steps / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny UNets at 64 px: a CPU check that it runs")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps per run (default 20, quick 4)")
    parser.add_argument("--flags", default="", help="Serena flags that decide the placement, e.g. '--no-half'")
    args = parser.parse_args(argv)
    steps = args.steps or (4 if args.quick else 20)
    where = devices.placement_for(cmd_args.parse_args(args.flags.split()))
    device, dtype = torch.device(where.device), model_placement.torch_dtype(where.dtype)
    scheduler_config = sd_models_loader.default_configs()["scheduler"]
    rows = []
    for name, (config, pooled) in unet_configs(args.quick).items():
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(config).to(device).eval()
        if dtype != torch.float32:  # diffusers warns about every cast, even to what the model already is
            unet = unet.to(dtype)
        model_placement.set_attention(unet, where.attention)
        side = int(unet.config.sample_size)
        if pooled:
            unet = AddedConditioning(unet, pooled, side * 8)
        context = torch.randn(77, int(config["cross_attention_dim"]), generator=torch.Generator().manual_seed(1))
        context = context.to(device=device, dtype=dtype)
        latents = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(2)).to(device)
        with torch.inference_mode():
            serena = its(lambda n: serena_loop(unet, dtype, context, latents, n, scheduler_config), steps, device)
            bare = its(lambda n: diffusers_loop(unet, dtype, context, latents, n, scheduler_config), steps, device)
        rows.append((name, serena, bare))
    print(f"device {where.device}, {where.dtype}, attention {where.attention}, {steps} steps, batch 1 with CFG")
    print(f"{'UNet':<28}{'Serena it/s':>14}{'diffusers it/s':>16}{'ratio':>8}")
    for name, serena, bare in rows:
        print(f"{name:<28}{serena:>14.2f}{bare:>16.2f}{serena / bare:>8.2f}")


if __name__ == "__main__":
    main()
