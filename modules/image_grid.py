"""Split an image into overlapping tiles and join them again, as A1111's ``images.split_grid``/``combine_grid``.

Tiled work keeps memory bounded by the tile, not the image: a model upscaler run on tiles (``upscale_tiled``, what
A1111's ESRGAN does), and SD upscale's img2img per tile. Overlaps are blended with a linear ramp so the seams do
not show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

#: A1111's defaults for model upscalers' tiles (its options ``ESRGAN_tile`` and ``ESRGAN_tile_overlap``).
ESRGAN_TILE, ESRGAN_TILE_OVERLAP = 192, 8


@dataclass
class Grid:
    """``tiles`` is ``[[y, tile_h, [[x, tile_w, tile image], ...]], ...]``, rows top to bottom (A1111's layout)."""

    tiles: list = field(default_factory=list)
    tile_w: int = 512
    tile_h: int = 512
    image_w: int = 0
    image_h: int = 0
    overlap: int = 0


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    # A1111 spreads the tiles evenly so the last one ends on the edge.
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    # Integer steps: A1111's float ``int(i * step)`` can stop a pixel short of the edge (70 px in 9 px tiles).
    return [i * (length - tile) // (count - 1) for i in range(count)]  # count >= 2: the image is longer


def split_grid(image: Image.Image, tile_w: int = 512, tile_h: int = 512, overlap: int = 64) -> Grid:
    """``image`` as tiles of ``tile_w`` x ``tile_h`` (smaller where the image is) overlapping by ``overlap``.

    Raises ``ValueError`` unless ``0 <= overlap < min(tile_w, tile_h)``.
    """
    if tile_w < 1 or tile_h < 1 or not 0 <= overlap < min(tile_w, tile_h):
        raise ValueError(f"tiles of {tile_w}x{tile_h} cannot overlap by {overlap}; the overlap must be at least 0 "
                         f"and smaller than the tile")
    w, h = image.size
    # A tile larger than the image would be cropped outside it (A1111 pads with black): the image is the tile.
    # An axis the image fits in has one tile and no seam, so the overlap only matters along the other one.
    tile_w, tile_h = min(tile_w, w), min(tile_h, h)
    grid = Grid([], tile_w, tile_h, w, h, overlap)
    for y in _starts(h, tile_h, overlap):
        row = [[x, tile_w, image.crop((x, y, x + tile_w, y + tile_h))] for x in _starts(w, tile_w, overlap)]
        grid.tiles.append([y, tile_h, row])
    return grid


def _ramp(length: int, across: int, vertical: bool) -> Image.Image:
    """A mask rising from 0 to 255 over ``length`` pixels, ``across`` wide."""
    ramp = (np.arange(length, dtype=np.float32) * 255 / length).astype(np.uint8)
    mask = np.repeat(ramp.reshape(length, 1), across, axis=1) if vertical else np.repeat(ramp.reshape(1, length),
                                                                                          across, axis=0)
    return Image.fromarray(mask, "L")


def combine_grid(grid: Grid) -> Image.Image:
    """The image the tiles of ``grid`` make, each overlap blended from the earlier tile into the later one."""
    if grid.overlap:
        mask_w = _ramp(grid.overlap, grid.tile_h, vertical=False)
        mask_h = _ramp(grid.overlap, grid.image_w, vertical=True)
    combined = Image.new("RGB", (grid.image_w, grid.image_h))
    for y, h, row in grid.tiles:
        line = Image.new("RGB", (grid.image_w, h))
        for x, w, tile in row:
            if x == 0 or grid.overlap == 0:
                line.paste(tile, (x, 0))
                continue
            line.paste(tile.crop((0, 0, grid.overlap, h)), (x, 0), mask=mask_w)
            line.paste(tile.crop((grid.overlap, 0, w, h)), (x + grid.overlap, 0))
        if y == 0 or grid.overlap == 0:
            combined.paste(line, (0, y))
            continue
        combined.paste(line.crop((0, 0, line.width, grid.overlap)), (0, y), mask=mask_h)
        combined.paste(line.crop((0, grid.overlap, line.width, h)), (0, y + grid.overlap))
    return combined


def upscale_tiled(image: Image.Image, upscale_tile: Callable[[Image.Image], Image.Image],
                  tile_size: int = ESRGAN_TILE, overlap: int = ESRGAN_TILE_OVERLAP) -> Image.Image:
    """``image`` upscaled one tile at a time: ``upscale_tile(tile)`` returns the tile scaled by a whole factor (the
    model's, e.g. 4), the same for every tile. ``tile_size`` 0 upscales the whole image at once (A1111's
    ``ESRGAN_tile`` 0). The most ``upscale_tile`` ever receives is ``tile_size`` x ``tile_size`` pixels.
    """
    image = image.convert("RGB")
    if tile_size <= 0:
        return upscale_tile(image)
    grid = split_grid(image, tile_size, tile_size, overlap)
    factor = None
    for _, _, row in grid.tiles:
        for cell in row:
            tile = cell[2]
            result = upscale_tile(tile)
            scale = result.width // tile.width
            if factor is None:
                factor = scale
            if scale < 1 or result.size != (tile.width * factor, tile.height * factor):
                raise ValueError(f"a {tile.width}x{tile.height} tile came back {result.width}x{result.height}; "
                                 f"tiled upscaling needs the same whole factor for every tile ({factor})")
            cell[2] = result
    return combine_grid(Grid([[y * factor, h * factor, [[x * factor, w * factor, t] for x, w, t in row]]
                              for y, h, row in grid.tiles],
                             grid.tile_w * factor, grid.tile_h * factor, grid.image_w * factor,
                             grid.image_h * factor, grid.overlap * factor))
