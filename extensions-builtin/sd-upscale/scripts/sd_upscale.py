"""SD upscale (img2img): upscale the init image, then img2img it tile by tile, as A1111's script.

The first init image is upscaled by ``Scale Factor`` with the chosen upscaler (to a multiple of 8 a side, as A1111's
upscalers round; "None" leaves it as it is, as in A1111), cut into tiles of the request's width x height that
overlap by ``Tile overlap`` pixels, and every tile goes through img2img with the request's prompt, steps and
denoising strength. The tiles are joined again, each overlap a linear blend of its two tiles.

Arguments in A1111's order: ``info`` (a note, ignored), ``overlap``, ``upscaler_index``, ``scale_factor``. The
upscaler is its position in ``GET /sdapi/v1/upscalers`` (A1111's ``shared.sd_upscalers[upscaler_index]``) or its
name, in any case. Tile i of upscale n uses seed ``seed + n + i`` (A1111's seeds with batch size 1; tiles run one
at a time here, whatever ``batch_size``); ``n_iter`` upscales are made.

Written against ``modules.extensions_api`` only.
"""

from __future__ import annotations

import random

from modules.extensions_api import (Script, ScriptArg, ScriptArgError, UpscalerFailed, combine_grid,
                                    combine_processed, hookimpl, interrupted, list_upscalers, opts, process_item,
                                    save_result, split_grid, upscale_image)

SEED_MAX = 4294967294  # A1111's random.randrange bound
SEED_LIMIT = 2**32  # seeds wrap around, as processing's
NOTE = "Will upscale the image by the selected scale factor; use width and height sliders to set tile size"
UPSCALER_ARG = 2


def upscaled_size(image, upscaler: str, scale: float) -> tuple[int, int]:
    """The size SD upscale works at: ``scale`` times ``image``, rounded down to a multiple of 8 (A1111's
    ``Upscaler.upscale``), or the image's own size for "None"."""
    if upscaler.lower() == "none":
        return image.size
    return int(image.width * scale // 8 * 8), int(image.height * scale // 8 * 8)


def tile_size(p, size: tuple[int, int]) -> tuple[int, int]:
    """The request's width x height, or the image's side (to a multiple of 8) where the image is smaller."""
    return min(p.width, size[0] // 8 * 8), min(p.height, size[1] // 8 * 8)


class SdUpscale(Script):
    title = "SD upscale"
    tabs = ("img2img",)

    def __init__(self):
        # The upscalers as listed now (extensions list theirs through a hook): the scripts are listed afresh each
        # time they are read, so the choices follow the list.
        self.args = (
            ScriptArg("Info", NOTE, type="note"),
            ScriptArg("Tile overlap", 64, minimum=0, maximum=256, step=16),
            ScriptArg("Upscaler", 0, choices=tuple(u.name for u in list_upscalers()), index=True),
            ScriptArg("Scale Factor", 2.0, minimum=0, maximum=4, step=1),
        )

    def upscaler(self, upscaler_index: int) -> str:
        """The name of the upscaler at ``upscaler_index`` in this listing (what the argument was checked against)."""
        return self.args[UPSCALER_ARG].choices[upscaler_index]

    def check(self, p, info, overlap, upscaler_index, scale_factor):
        upscaler = self.upscaler(upscaler_index)
        if not p.init_images:
            return  # img2img's own check names init_images
        if getattr(p, "mask", None) is not None:  # a mask of the whole image means nothing to one tile
            raise ValueError("SD upscale redraws the whole image, tile by tile: send no mask")
        size = upscaled_size(p.init_images[0], upscaler, scale_factor)
        if min(size) < 8:
            raise ScriptArgError(3, f"upscaling a {p.init_images[0].width}x{p.init_images[0].height} image by "
                                    f"{scale_factor:g} makes it {size[0]}x{size[1]}; a side must be at least 8")
        if p.is_api and (size[0] > opts.api_max_width or size[1] > opts.api_max_height):
            raise ScriptArgError(3, f"the upscaled image would be {size[0]}x{size[1]}, above this server's "
                                    f"limit of {opts.api_max_width}x{opts.api_max_height} "
                                    f"(options api_max_width, api_max_height)")
        tile = tile_size(p, size)
        if overlap >= min(tile):
            raise ScriptArgError(1, f"an overlap of {overlap} needs tiles larger than that; the tiles are "
                                    f"{tile[0]}x{tile[1]} (the request's width and height)")

    def run(self, p, info, overlap, upscaler_index, scale_factor):
        upscaler = self.upscaler(upscaler_index)
        seed = p.seed if p.seed not in (None, -1, "") else random.randrange(SEED_MAX)
        p.extra_generation_params["SD upscale overlap"] = overlap
        p.extra_generation_params["SD upscale upscaler"] = upscaler
        source = p.init_images[0]
        size = upscaled_size(source, upscaler, scale_factor)
        try:
            image = source if upscaler.lower() == "none" else upscale_image(source, upscaler, *size)
        except UpscalerFailed as e:  # the request chose it: reported as that argument, as Hires fix does
            raise UpscalerFailed(e.name, e.reason, f"script_args[{UPSCALER_ARG}] (Upscaler)") from e.__cause__
        tile_w, tile_h = tile_size(p, size)
        firsts, every, images, saved = [], [], [], []
        for n in range(p.n_iter):
            grid = split_grid(image.convert("RGB"), tile_w, tile_h, overlap)
            cells = [cell for _, _, row in grid.tiles for cell in row]
            parts = []
            for i, cell in enumerate(cells):
                if interrupted():
                    break
                part = process_item(p, init_images=[cell[2]], width=grid.tile_w, height=grid.tile_h,
                                    seed=(seed + n + i) % SEED_LIMIT, batch_size=1, n_iter=1,
                                    do_not_save_samples=True, do_not_save_grid=True)
                if not part.images:  # interrupted before it sampled
                    break
                cell[2] = part.images[0]
                parts.append(part)
            if not parts:
                break
            # An interrupted upscale keeps the upscaled image where its tiles were not run.
            combined = combine_grid(grid)
            text = parts[0].infotexts[0]
            combined.info["parameters"] = text
            path = save_result(p, combined, text, (seed + n) % SEED_LIMIT)
            saved += [path] if path else []
            firsts.append(parts[0])
            every.extend(parts)
            images.append(combined)
            if interrupted():
                break
        result = combine_processed(p, firsts)
        result.images, result.saved_paths = images, saved
        result.warnings = combine_processed(p, every).warnings
        return result


@hookimpl
def on_list_scripts():
    return [SdUpscale()]
