"""Headless generation: ``python launch.py --txt2img "a prompt" --override KEY=VALUE --out DIR``.

The same path as the API and UI (processing object, queue, the override seam); no server is started.
"""

from __future__ import annotations

import sys

from modules import jobs, native_size, processing, sd_models, shared
from modules.runtime_utils import OverrideError


def parse_overrides(items: list[str]) -> dict:
    """``["KEY=VALUE", ...]`` → ``{key: value cast to the option's type}``; a malformed item is a usage error."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--override {item!r}: expected KEY=VALUE")
        key = key.strip()
        overrides[key] = shared.opts.cast_value(key, value)
    return overrides


#: A1111's default CFG scale, for checkpoints that recommend none.
DEFAULT_CFG_SCALE = 7.0


def run_txt2img(cmd_opts, out=sys.stdout) -> int:
    try:
        overrides = parse_overrides(cmd_opts.override)
        check = shared.opts.check(overrides, for_override=True)
        if check.errors:
            raise OverrideError(check.errors)
    except (ValueError, OverrideError) as e:
        print(f"serena: error: {e}", file=sys.stderr)
        return 2
    size, cfg_scale = None, cmd_opts.cfg_scale
    if cmd_opts.width is None or cmd_opts.height is None:
        size = native_size.for_generation(overrides)
    if cfg_scale is None:
        cfg_scale = sd_models.current_model().cfg_scale or DEFAULT_CFG_SCALE
    p = processing.StableDiffusionProcessingTxt2Img(
        prompt=cmd_opts.txt2img, negative_prompt=cmd_opts.negative_prompt, steps=cmd_opts.steps,
        seed=cmd_opts.seed, sampler_name=cmd_opts.sampler, scheduler=cmd_opts.schedule_type,
        cfg_scale=cfg_scale, width=cmd_opts.width or size, height=cmd_opts.height or size,
        batch_size=cmd_opts.batch_size, n_iter=cmd_opts.n_iter, override_settings=overrides,
        outpath_samples=cmd_opts.out, save_samples=True)
    try:
        processed = jobs.run_job("txt2img", processing.process_images, p)
    except (ValueError, OverrideError) as e:
        print(f"serena: error: {e}", file=sys.stderr)
        return 2
    for warning in processed.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for path in processed.saved_paths:
        print(path, file=out)
    return 0
