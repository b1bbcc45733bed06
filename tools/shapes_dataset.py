"""Deterministic captioned shape images: the training data of Serena's embedded default models.

Each sample is one filled shape on a plain background, drawn 4x oversized and downsampled (anti-aliased edges),
with a caption in natural phrasing that names its colour and shape and usually its background, and sometimes its
size and position:

    "a red circle on a blue background"        "small green star in the top left, black background"
    "a white background with a purple square"  "a large triangle in orange on a gray background"

Everything is drawn from ``random.Random(seed)``: the same seed gives the same images and captions, on any machine.
Captions listed in ``exclude`` (the prompt-adherence benchmark's prompts) are never produced, so the benchmark
does not test prompts seen verbatim in training.

Two shape sets ship: ``SHAPES`` (circle, square, triangle, star; the default model) and ``ALT_SHAPES`` (diamond,
cross, hexagon, heart; the alt model). ``render_shape_mask`` is also the benchmark's geometric template, so
classification and data share one definition of each shape.

Usage (a preview sheet and captions): ``venv/bin/python tools/shapes_dataset.py --count 64 --out /tmp/shapes``
"""

from __future__ import annotations

import argparse
import math
import os
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SUPERSAMPLE = 4

#: Named colours (sRGB). Foreground colours are the ones a prompt may ask for; backgrounds add gray.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 140, 10),
    "yellow": (245, 225, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 225),
    "purple": (130, 40, 180),
    "pink": (250, 130, 200),
    "white": (248, 248, 248),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}
FOREGROUNDS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "white", "black")
BACKGROUNDS = ("white", "black", "gray", "blue", "red", "green", "yellow", "purple")
#: The alt model's palette: the same names minus black and yellow as foregrounds, all backgrounds pastel-free.
ALT_FOREGROUNDS = ("red", "orange", "green", "blue", "purple", "pink", "white", "yellow")
ALT_BACKGROUNDS = ("black", "gray", "blue", "white")

SHAPES = ("circle", "square", "triangle", "star")
ALT_SHAPES = ("diamond", "cross", "hexagon", "heart")
ALL_SHAPES = SHAPES + ALT_SHAPES

#: Diameter ranges in output pixels.
SIZES = {"small": (16, 22), "medium": (26, 34), "large": (38, 46)}
#: 3x3 grid of positions; the centre of the cell, in fractions of the image.
POSITIONS = {
    "top left": (0.25, 0.25), "top": (0.5, 0.25), "top right": (0.75, 0.25),
    "left": (0.25, 0.5), "center": (0.5, 0.5), "right": (0.75, 0.5),
    "bottom left": (0.25, 0.75), "bottom": (0.5, 0.75), "bottom right": (0.75, 0.75),
}
_POSITION_PHRASES = {
    "top left": ("in the top left", "in the top left corner", "at the top left"),
    "top": ("at the top", "near the top"),
    "top right": ("in the top right", "in the top right corner", "at the top right"),
    "left": ("on the left", "at the left"),
    "center": ("in the center", "in the middle"),
    "right": ("on the right", "at the right"),
    "bottom left": ("in the bottom left", "in the bottom left corner", "at the bottom left"),
    "bottom": ("at the bottom", "near the bottom"),
    "bottom right": ("in the bottom right", "in the bottom right corner", "at the bottom right"),
}
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "medium": ("medium",), "large": ("large", "big")}
MIN_CONTRAST = 110  # RGB distance between foreground and background


@dataclass(frozen=True)
class Sample:
    caption: str
    colour: str
    shape: str
    background: str
    size: str
    position: str
    diameter: float
    centre: tuple[float, float]


def rgb(colour) -> tuple[int, int, int]:
    """A colour name (``PALETTE``) or an RGB tuple, as an RGB tuple."""
    if isinstance(colour, str):
        return PALETTE[colour]
    return tuple(colour)


def contrast(a, b) -> float:
    return math.dist(rgb(a), rgb(b))


def _star_points(cx, cy, r, points=5, inner=0.45):
    out = []
    for i in range(points * 2):
        rad = r if i % 2 == 0 else r * inner
        ang = -math.pi / 2 + i * math.pi / points
        out.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
    return out


def shape_polygon(shape: str, cx: float, cy: float, r: float):
    """The outline of ``shape`` centred at (cx, cy) with half-extent r, as a polygon (None for circle/heart)."""
    if shape == "square":
        s = r * 0.92
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r * 0.9), (cx - r, cy + r * 0.9)]
    if shape == "star":
        return _star_points(cx, cy + r * 0.1, r * 1.08)
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.8, cy), (cx, cy + r), (cx - r * 0.8, cy)]
    if shape == "hexagon":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (math.pi / 3 * i for i in range(6))]
    if shape == "cross":
        a, b = r, r * 0.36
        return [(cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b), (cx + a, cy + b),
                (cx + b, cy + b), (cx + b, cy + a), (cx - b, cy + a), (cx - b, cy + b), (cx - a, cy + b),
                (cx - a, cy - b), (cx - b, cy - b)]
    return None


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "heart":
        lobe = r * 0.52
        draw.ellipse([cx - r, cy - r * 0.8, cx - r + 2 * lobe, cy - r * 0.8 + 2 * lobe], fill=fill)
        draw.ellipse([cx + r - 2 * lobe, cy - r * 0.8, cx + r, cy - r * 0.8 + 2 * lobe], fill=fill)
        draw.polygon([(cx - r * 0.98, cy - r * 0.2), (cx + r * 0.98, cy - r * 0.2), (cx, cy + r)], fill=fill)
    else:
        draw.polygon(shape_polygon(shape, cx, cy, r), fill=fill)


def render(shape: str, colour, background, centre, diameter, size: int = SIZE) -> tuple[Image.Image, np.ndarray]:
    """``(RGB image, float mask in [0,1])`` of one shape; ``colour``/``background`` are names or RGB tuples."""
    fg, bg = rgb(colour), rgb(background)
    big = size * SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    cx, cy = centre[0] * big, centre[1] * big
    draw_shape(ImageDraw.Draw(mask), shape, cx, cy, diameter * SUPERSAMPLE / 2, 255)
    mask = mask.resize((size, size), Image.BOX)
    image = Image.composite(Image.new("RGB", (size, size), fg), Image.new("RGB", (size, size), bg), mask)
    return image, np.asarray(mask, dtype=np.float32) / 255.0


def render_shape_mask(shape: str, box: tuple[int, int, int, int], size: int = SIZE) -> np.ndarray:
    """Boolean mask of ``shape`` drawn to fill the pixel box ``(x0, y0, x1, y1)`` (inclusive), for templates."""
    x0, y0, x1, y1 = box
    big = size * SUPERSAMPLE
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    # Draw at a reference size, find its own bounding box, then map it onto the requested box.
    ref = Image.new("L", (big, big), 0)
    draw_shape(ImageDraw.Draw(ref), shape, big / 2, big / 2, big * 0.4, 255)
    rx0, ry0, rx1, ry1 = ref.getbbox()
    crop = ref.crop((rx0, ry0, rx1, ry1))
    w = max(1, (x1 - x0 + 1) * SUPERSAMPLE)
    h = max(1, (y1 - y0 + 1) * SUPERSAMPLE)
    img.paste(crop.resize((w, h), Image.BILINEAR), (x0 * SUPERSAMPLE, y0 * SUPERSAMPLE))
    del draw
    return np.asarray(img.resize((size, size), Image.BOX), dtype=np.float32) / 255.0 > 0.5


def caption_for(rng: random.Random, colour: str, shape: str, background: str, size: str, position: str,
                say_size: bool, say_position: bool, say_background: bool) -> str:
    sz = rng.choice(_SIZE_WORDS[size]) + " " if say_size else ""
    pos = rng.choice(_POSITION_PHRASES[position]) if say_position else ""
    art = "an" if (sz or colour)[0] in "aeiou" else "a"
    thing = f"{sz}{colour} {shape}"
    templates = [
        "{a} {thing}{pos} on a {bg} background",
        "{thing}{pos} on a {bg} background",
        "{thing}{pos}, {bg} background",
        "{a} {thing}{pos} on {bg}",
        "a drawing of {a} {thing}{pos} on a {bg} background",
        "a {bg} background with {a} {thing}{pos}",
        "{a} {sz}{shape} in {colour}{pos} on a {bg} background",
    ] if say_background else [
        "{a} {thing}{pos}",
        "{thing}{pos}",
        "a picture of {a} {thing}{pos}",
    ]
    template = rng.choice(templates)
    if "{sz}{shape}" in template:
        art = "an" if (sz or shape)[0] in "aeiou" else "a"
    text = template.format(a=art, thing=thing, pos=(" " + pos) if pos else "", bg=background, sz=sz,
                           shape=shape, colour=colour)
    return " ".join(text.split())


def sample(rng: random.Random, shapes=SHAPES, foregrounds=FOREGROUNDS, backgrounds=BACKGROUNDS,
           exclude: frozenset[str] = frozenset()) -> Sample:
    """One random sample description (no pixels): attributes, caption, geometry."""
    while True:
        shape = rng.choice(shapes)
        colour = rng.choice(foregrounds)
        background = rng.choice([b for b in backgrounds if b != colour and contrast(b, colour) >= MIN_CONTRAST])
        size = rng.choices(list(SIZES), weights=(1, 1.3, 1.3))[0]
        diameter = rng.uniform(*SIZES[size])
        position = rng.choice(list(POSITIONS))
        px, py = POSITIONS[position]
        half = diameter / 2 / SIZE + 1.5 / SIZE
        jitter = 0.07
        cx = min(max(px + rng.uniform(-jitter, jitter), half), 1 - half)
        cy = min(max(py + rng.uniform(-jitter, jitter), half), 1 - half)
        say_size = rng.random() < 0.4
        say_position = rng.random() < 0.35
        say_background = rng.random() < 0.85
        caption = caption_for(rng, colour, shape, background, size, position, say_size, say_position, say_background)
        if caption not in exclude:
            return Sample(caption, colour, shape, background, size, position, diameter, (cx, cy))


def jitter_colour(rng: random.Random, name: str, amount: int = 12) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, c + rng.randint(-amount, amount)))) for c in rgb(name))


def generate(n: int, seed: int, *, shapes=SHAPES, foregrounds=FOREGROUNDS, backgrounds=BACKGROUNDS,
             exclude=frozenset(), empty_fraction: float = 0.0):
    """``(images uint8 [n,64,64,3], masks float32 [n,64,64], captions list[str], samples list[Sample])``.

    ``empty_fraction`` of the captions are replaced by "" (for classifier-free guidance), decided by the same rng.
    """
    rng = random.Random(seed)
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    masks = np.empty((n, SIZE, SIZE), dtype=np.float32)
    captions, samples = [], []
    for i in range(n):
        s = sample(rng, shapes, foregrounds, backgrounds, frozenset(exclude))
        image, mask = render(s.shape, jitter_colour(rng, s.colour), jitter_colour(rng, s.background, 6),
                             s.centre, s.diameter)
        images[i] = np.asarray(image)
        masks[i] = mask
        captions.append("" if rng.random() < empty_fraction else s.caption)
        samples.append(s)
    return images, masks, captions, samples


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write a preview sheet of the shapes data set.")
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alt", action="store_true", help="the alt model's shapes and palette")
    parser.add_argument("--out", default="/tmp/shapes-preview")
    args = parser.parse_args(argv)
    kw = dict(shapes=ALT_SHAPES, foregrounds=ALT_FOREGROUNDS, backgrounds=ALT_BACKGROUNDS) if args.alt else {}
    images, _, captions, _ = generate(args.count, args.seed, **kw)
    os.makedirs(args.out, exist_ok=True)
    cols = 8
    rows = (len(images) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * SIZE, rows * SIZE))
    for i, arr in enumerate(images):
        sheet.paste(Image.fromarray(arr), ((i % cols) * SIZE, (i // cols) * SIZE))
    sheet.save(os.path.join(args.out, "sheet.png"))
    with open(os.path.join(args.out, "captions.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(captions) + "\n")
    print(f"wrote {args.out}/sheet.png and captions.txt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
