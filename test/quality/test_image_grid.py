"""Tiles with overlap (``modules.image_grid``): joining untouched tiles gives the image back, a tiled local upscale
equals the whole-image one, and no tile is larger than asked (what keeps a model upscaler's memory bounded)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from modules.image_grid import combine_grid, split_grid, upscale_tiled


def noise(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


sizes = st.tuples(st.integers(1, 70), st.integers(1, 70))
tiles = st.integers(2, 40).flatmap(lambda t: st.tuples(st.just(t), st.integers(0, t - 1)))


@settings(max_examples=60, deadline=None)
@given(size=sizes, tile=tiles, seed=st.integers(0, 2**16))
@example(size=(1, 70), tile=(9, 0), seed=0)  # float steps left the last row uncovered
def test_untouched_tiles_join_to_the_same_image(size, tile, seed):
    image = noise(*size, seed)
    grid = split_grid(image, tile[0], tile[0], tile[1])
    for _, h, row in grid.tiles:
        for x, w, t in row:
            assert t.size == (w, h) and w <= tile[0] and h <= tile[0]
    assert combine_grid(grid).tobytes() == image.tobytes()


@settings(max_examples=40, deadline=None)
@given(size=sizes, tile=tiles, factor=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_a_tiled_local_upscale_equals_the_whole_one_and_tiles_stay_small(size, tile, factor, seed):
    image = noise(*size, seed)
    seen = []

    def nearest(t):
        seen.append(t.size)
        return t.resize((t.width * factor, t.height * factor), Image.Resampling.NEAREST)

    whole = image.resize((size[0] * factor, size[1] * factor), Image.Resampling.NEAREST)
    assert upscale_tiled(image, nearest, tile[0], tile[1]).tobytes() == whole.tobytes()
    assert max(max(s) for s in seen) <= tile[0]


def test_overlaps_are_blended_not_cut():
    # Two tiles of different flat colours across a 16 px overlap: the overlap ramps from one to the other.
    image = Image.new("RGB", (48, 8))
    grid = split_grid(image, 32, 32, 16)
    assert [x for x, _, _ in grid.tiles[0][2]] == [0, 16]
    grid.tiles[0][2][0][2] = Image.new("RGB", (32, 8), (0, 0, 0))
    grid.tiles[0][2][1][2] = Image.new("RGB", (32, 8), (240, 240, 240))
    row = [combine_grid(grid).getpixel((x, 4))[0] for x in range(48)]
    assert row[:16] == [0] * 16 and row[32:] == [240] * 16
    assert row[16:32] == sorted(row[16:32]) and 0 <= row[16] < 20 and 220 < row[31] < 240


def test_a1111_tiles_by_default_and_tile_size_zero_is_one_call_and_bad_tiles_are_refused():
    calls = []
    out = upscale_tiled(noise(400, 200, 1), lambda t: calls.append(t.size) or t.resize((t.width * 2, t.height * 2)))
    assert out.size == (800, 400) and calls and all(w <= 192 and h <= 192 for w, h in calls)
    calls.clear()
    out = upscale_tiled(Image.new("RGB", (300, 200)), lambda t: calls.append(t.size) or t.resize((600, 400)), 0, 8)
    assert out.size == (600, 400) and calls == [(300, 200)]
    with pytest.raises(ValueError, match="overlap must be"):
        split_grid(Image.new("RGB", (8, 8)), 8, 8, 8)
    with pytest.raises(ValueError, match="same whole factor"):
        sizes_back = iter([2, 3, 3, 3])
        upscale_tiled(Image.new("RGB", (20, 8)), lambda t: t.resize((t.width * next(sizes_back),) * 2), 8, 2)
