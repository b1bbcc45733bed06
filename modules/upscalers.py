"""Image upscalers by name: the PIL ones built in, plus any an extension registers.

``GET /sdapi/v1/upscalers`` lists them and the extras endpoints resolve ``upscaler_1``/``upscaler_2`` here.
An extension adds one with ``register(Upscaler("My model", my_function, scale=4))``; ``my_function(image, width,
height)`` returns a PIL image of exactly that size.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from PIL import Image

UpscaleFn = Callable[[Image.Image, int, int], Image.Image]


@dataclass(frozen=True)
class Upscaler:
    """One upscaler. Field names follow A1111's ``UpscalerItem`` as ``GET /upscalers`` shows it."""

    name: str
    upscale: UpscaleFn | None  # None: leave the image as it is ("None")
    scale: float = 4  # shown by GET /upscalers only; A1111's UpscalerData default, which its "None" shows too
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None


def _pil(resample) -> UpscaleFn:
    def upscale(image: Image.Image, width: int, height: int) -> Image.Image:
        return image.resize((width, height), resample=resample)
    return upscale


_BUILTIN = (
    Upscaler("None", None),
    Upscaler("Lanczos", _pil(Image.Resampling.LANCZOS)),
    Upscaler("Nearest", _pil(Image.Resampling.NEAREST)),
)
_registry: dict[str, Upscaler] = {u.name: u for u in _BUILTIN}
_lock = threading.Lock()


def register(upscaler: Upscaler) -> None:
    """Add (or replace) an upscaler. The built-in names cannot be replaced."""
    if any(upscaler.name == u.name for u in _BUILTIN):
        raise ValueError(f"upscaler {upscaler.name!r} is built in and cannot be replaced")
    with _lock:
        _registry[upscaler.name] = upscaler


def unregister(name: str) -> None:
    if any(name == u.name for u in _BUILTIN):
        raise ValueError(f"upscaler {name!r} is built in and cannot be removed")
    with _lock:
        _registry.pop(name, None)


def all_upscalers() -> list[Upscaler]:
    with _lock:
        return list(_registry.values())


def resolve(name: str) -> Upscaler:
    """The upscaler called ``name`` (case-insensitive), or ``ValueError`` naming the available ones."""
    with _lock:
        found = _registry.get(name) or next(
            (u for u in _registry.values() if isinstance(name, str) and u.name.lower() == name.lower()), None)
        names = list(_registry)
    if found is None:
        raise ValueError(f"no upscaler named {name!r}; available: {', '.join(names)}")
    return found


@dataclass
class Plan:
    """What the extras endpoints do to each image: upscale, optionally blend a second upscaler, optionally crop.

    ``resize_mode`` 0 scales by ``scale``; 1 scales to cover ``width`` x ``height`` and, with ``crop``, cuts the
    centre to exactly that size. The "None" upscaler as ``upscaler_1`` leaves images as they are.
    """

    upscaler_1: Upscaler
    upscaler_2: Upscaler
    upscaler_2_visibility: float = 0.0
    resize_mode: int = 0
    scale: float = 2.0
    width: int = 512
    height: int = 512
    crop: bool = True
    warnings: list = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.upscaler_1.upscale is not None

    def scaled_size(self, image: Image.Image) -> tuple[int, int]:
        """The size before cropping (the largest image this plan allocates for ``image``)."""
        w, h = image.size
        factor = self.scale if self.resize_mode == 0 else max(self.width / w, self.height / h)
        return max(1, round(w * factor)), max(1, round(h * factor))

    def apply(self, image: Image.Image) -> Image.Image:
        if not self.active:
            return image
        width, height = self.scaled_size(image)
        result = self.upscaler_1.upscale(image, width, height)
        if self.upscaler_2.upscale is not None and self.upscaler_2_visibility > 0:
            second = self.upscaler_2.upscale(image, width, height)
            result = Image.blend(result.convert("RGB"), second.convert("RGB"), self.upscaler_2_visibility)
        if self.resize_mode == 1 and self.crop:
            left, top = (width - self.width) // 2, (height - self.height) // 2
            result = result.crop((left, top, left + self.width, top + self.height))
        if "parameters" in image.info:  # keep the generation parameters of the original
            result.info["parameters"] = image.info["parameters"]
        return result

    def describe(self) -> str:
        """What was done, in A1111's "Postprocess ..." words, then any warnings."""
        lines = []
        if self.active:
            size = f"{self.scale:g}" if self.resize_mode == 0 else f"{self.width}x{self.height}"
            lines.append(f"Postprocess upscale by: {size}, Postprocess upscaler: {self.upscaler_1.name}")
            if self.upscaler_2.upscale is not None and self.upscaler_2_visibility > 0:
                lines.append(f"Postprocess upscaler 2: {self.upscaler_2.name}, "
                             f"visibility {self.upscaler_2_visibility:g}")
        return "\n".join(lines + list(self.warnings))


def run_plan(plan: Plan, images: list[Image.Image]) -> list[Image.Image]:
    """Apply ``plan`` to every image, in order."""
    return [plan.apply(image) for image in images]
