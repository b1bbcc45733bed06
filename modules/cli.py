"""Headless generation: ``python launch.py --txt2img "a prompt" --override KEY=VALUE --out DIR``.

The same path as the API and UI (processing object, queue, the override seam); no server is started.
"""

from __future__ import annotations

import sys

from modules import cmd_args, dispatch, processing, request_preparation, scripts, sd_models, shared


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


def hires_fields(cmd_opts) -> dict:
    """The Hires fix fields the flags set (``cmd_args.HIRES_FLAGS``); none without ``--enable-hr``."""
    if not cmd_opts.enable_hr:
        return {}
    names = [flag[2:].replace("-", "_") for flag, _, _ in cmd_args.HIRES_FLAGS]
    return {"enable_hr": True, **{n: getattr(cmd_opts, n) for n in names if getattr(cmd_opts, n) is not None}}


def run_txt2img(cmd_opts, out=sys.stdout) -> int:
    # Built and checked as the API and the UI do (request_preparation): a bad sampler, size or override is a usage
    # error before any model loads.
    try:
        overrides = parse_overrides(cmd_opts.override)
        defaults = sd_models.checkpoint_defaults(overrides)
        p = request_preparation.build_processing(processing.StableDiffusionProcessingTxt2Img, dict(
            prompt=cmd_opts.txt2img, negative_prompt=cmd_opts.negative_prompt, steps=cmd_opts.steps,
            seed=cmd_opts.seed, sampler_name=cmd_opts.sampler, scheduler=cmd_opts.schedule_type,
            cfg_scale=defaults.cfg_scale if cmd_opts.cfg_scale is None else cmd_opts.cfg_scale,
            width=cmd_opts.width or defaults.size, height=cmd_opts.height or defaults.size,
            batch_size=cmd_opts.batch_size, n_iter=cmd_opts.n_iter, override_settings=overrides,
            styles=list(cmd_opts.styles), tiling=True if cmd_opts.tiling else None,
            outpath_samples=cmd_opts.out, save_samples=True, **hires_fields(cmd_opts),
            scripts=scripts.select("txt2img", None)[0]))  # no script flags: always-on scripts with their defaults
    except ValueError as e:  # OverrideError and RequestFieldError are ValueErrors
        print(f"serena: error: {e}", file=sys.stderr)
        return 2
    try:
        processed = dispatch.run("txt2img", p)
    except ValueError as e:
        print(f"serena: error: {e}", file=sys.stderr)
        return 2
    for warning in processed.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for path in processed.saved_paths:
        print(path, file=out)
    return 0
