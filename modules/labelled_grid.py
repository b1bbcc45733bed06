"""Images in rows and columns with their labels in the margins (A1111's ``image_grid`` and
``draw_grid_annotations``, as the X/Y/Z plot draws them), and the tile that marks an image that failed.

Text is drawn with PIL's own font (``ImageFont.load_default``): nothing is downloaded, and the same request gives
the same pixels on every machine with the same Pillow.
"""

from __future__ import annotations

import textwrap
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

BACKGROUND, TEXT, ERROR = (255, 255, 255), (0, 0, 0), (200, 0, 0)
PAD = 4  # pixels around a label


def font_for(width: int, height: int) -> ImageFont.ImageFont:
    """PIL's default font at A1111's size for a grid of ``width`` x ``height`` tiles (legible at 64 px)."""
    return ImageFont.load_default(max(10, (width + height) // 25))


def _lines(text: str, font, width: int) -> list[str]:
    """``text`` wrapped to ``width`` pixels (at least one word a line); no lines for empty text."""
    if not text:
        return []
    average = max(1.0, font.getlength("x"))
    lines = []
    for paragraph in text.splitlines() or [""]:
        lines += textwrap.wrap(paragraph, max(1, int(width / average))) or [""]
    return lines


def _line_height(font) -> int:
    left, top, right, bottom = font.getbbox("Ag")
    return bottom - top + 2


def _draw_lines(draw, lines, font, box: tuple[int, int, int, int], fill=TEXT):
    """``lines`` centred in ``box`` (left, top, right, bottom)."""
    height = _line_height(font)
    y = box[1] + (box[3] - box[1] - height * len(lines)) // 2
    for line in lines:
        x = box[0] + (box[2] - box[0] - int(font.getlength(line))) // 2
        draw.text((x, y), line, font=font, fill=fill)
        y += height


def draw_grid(rows: Sequence[Sequence[Image.Image]], column_labels: Sequence[str] = (),
              row_labels: Sequence[str] = (), *, margin: int = 0) -> Image.Image:
    """One image of ``rows`` (lists of images, all rows as long), ``margin`` pixels between tiles, with
    ``column_labels`` above the columns and ``row_labels`` left of the rows (A1111's legend). A margin with only
    empty labels is left out. Tiles of different sizes sit in cells of the largest, centred."""
    if not rows or not rows[0] or any(len(r) != len(rows[0]) for r in rows):
        raise ValueError("a grid needs at least one row, every row as long as the first")
    if margin < 0:
        raise ValueError(f"the margin must be 0 or more pixels, got {margin}")
    tile_w = max(im.width for r in rows for im in r)
    tile_h = max(im.height for r in rows for im in r)
    font = font_for(tile_w, tile_h)
    columns = [_lines(text, font, tile_w - 2 * PAD) for text in column_labels]
    row_width = (tile_w * 3) // 4  # A1111 gives the row labels three quarters of a tile
    row_texts = [_lines(text, font, row_width - 2 * PAD) for text in row_labels]
    top = max((len(lines) for lines in columns), default=0) * _line_height(font)
    top = top + 2 * PAD if top else 0
    left = row_width if any(row_texts) else 0
    width = left + len(rows[0]) * tile_w + (len(rows[0]) - 1) * margin
    height = top + len(rows) * tile_h + (len(rows) - 1) * margin
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for c, lines in enumerate(columns[:len(rows[0])]):
        x = left + c * (tile_w + margin)
        _draw_lines(draw, lines, font, (x, 0, x + tile_w, top))
    for r, row in enumerate(rows):
        y = top + r * (tile_h + margin)
        if r < len(row_texts):
            _draw_lines(draw, row_texts[r], font, (0, y, left, y + tile_h))
        for c, image in enumerate(row):
            x = left + c * (tile_w + margin)
            grid.paste(image.convert("RGB"), (x + (tile_w - image.width) // 2, y + (tile_h - image.height) // 2))
    return grid


def error_tile(width: int, height: int, message: str) -> Image.Image:
    """A ``width`` x ``height`` tile that says an image failed: a grey tile crossed in red, with ``message``."""
    tile = Image.new("RGB", (width, height), (64, 64, 64))
    draw = ImageDraw.Draw(tile)
    draw.line((0, 0, width - 1, height - 1), fill=ERROR, width=2)
    draw.line((0, height - 1, width - 1, 0), fill=ERROR, width=2)
    font = ImageFont.load_default(max(8, min(width, height) // 8))
    lines = _lines(message, font, width - 2)
    _draw_lines(draw, lines[:max(1, height // _line_height(font))], font, (0, 0, width, height), fill=(255, 255, 255))
    return tile
