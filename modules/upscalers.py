"""Image upscalers by name: None, Lanczos and Nearest built in, plus those extensions list through a hook.

``GET /sdapi/v1/upscalers`` lists them, the extras endpoints and the Extras tab resolve ``upscaler_1``/``upscaler_2``
here (through ``request_preparation.prepare_extras``), and Hires fix and SD upscale call
``upscale(image, name, width, height)``. An extension adds upscalers by implementing ``on_list_upscalers`` and
returning ``Upscaler("My model", my_function, scale=4)`` objects; ``my_function(image, width, height)`` returns a
PIL image of that size.

The hook is asked each time the list is read, so what an extension returns is current without a refresh endpoint
(A1111 has none for upscalers either; it scans its model folders once at start-up).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from PIL import Image

from modules import plugins

log = logging.getLogger("serena.upscalers")

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

    def run(self, image: Image.Image, width: int, height: int) -> Image.Image:
        """``image`` at exactly ``width`` x ``height``. An upscaler that returns another size (a 4x model asked
        for 3x) is resized with Lanczos afterwards, as A1111's ``Upscaler.upscale`` does; "None" only resizes.

        Raises ``UpscalerFailed`` naming this upscaler when its function raises or returns no image.
        """
        result = image
        if self.upscale is not None:
            try:
                result = self.upscale(image, width, height)
            except Exception as e:  # noqa: BLE001 - an extension's failure becomes an error naming the upscaler
                log.exception("upscaler %r failed", self.name)
                raise UpscalerFailed(self.name, f"{type(e).__name__}: {e}") from e
            if not isinstance(result, Image.Image):
                raise UpscalerFailed(self.name, f"returned {type(result).__name__}, not a PIL image")
        if result.size != (width, height):
            result = result.resize((width, height), resample=Image.Resampling.LANCZOS)
        return result


class UpscalerFailed(RuntimeError):
    """An upscaler's function raised or returned no image; ``name`` is the upscaler's, ``field`` the request
    field that chose it (``upscaler_1``/``upscaler_2``) when a ``Plan`` ran it."""

    def __init__(self, name: str, reason: str, field: str | None = None):
        super().__init__(f"upscaler {name!r} failed: {reason}")
        self.name, self.reason, self.field = name, reason, field


def _pil(resample) -> UpscaleFn:
    def upscale(image: Image.Image, width: int, height: int) -> Image.Image:
        return image.resize((width, height), resample=resample)
    return upscale


BUILTIN = (
    Upscaler("None", None),
    Upscaler("Lanczos", _pil(Image.Resampling.LANCZOS)),
    Upscaler("Nearest", _pil(Image.Resampling.NEAREST)),
)


def _listed(item, taken: dict[str, str]) -> str | None:
    """Why ``item`` from ``on_list_upscalers`` cannot be listed, or ``None`` when it can."""
    if not isinstance(item, Upscaler):
        return f"{item!r} is not an Upscaler"
    if not isinstance(item.name, str) or not item.name.strip():
        return f"{item!r} has no name"
    if not callable(item.upscale):
        return f"{item.name!r} has no upscale function"
    if isinstance(item.scale, bool) or not isinstance(item.scale, (int, float)) or not 0 < item.scale < float("inf"):
        return f"{item.name!r} has scale {item.scale!r}, not a positive number"
    if any(v is not None and not isinstance(v, str) for v in (item.model_name, item.model_path, item.model_url)):
        return f"{item.name!r} has a model_name, model_path or model_url that is not a string"
    if item.name.lower() in taken:
        return f"{item.name!r} is already listed by {taken[item.name.lower()]}"
    return None


def all_upscalers(warnings: list | None = None) -> list[Upscaler]:
    """The built-in upscalers, then those of each ``on_list_upscalers`` implementation, in hook order.

    A name is unique regardless of case: an item whose name is already listed (a built-in one, or an earlier
    extension's), or that is no ``Upscaler`` with a name and a function, is skipped. Each skip and each failing
    implementation is logged and appended to ``warnings`` (an extras request's, shown in its ``html_info``).
    """
    found = list(BUILTIN)
    taken = {u.name.lower(): "Serena (built in)" for u in BUILTIN}
    host = plugins.host
    for impl in host.impls("on_list_upscalers"):
        extension = host.plugin_name(impl.plugin)
        failures: list = []
        for result in host.call_each("on_list_upscalers", {}, impls=[impl], failures=failures):
            for item in result if isinstance(result, (list, tuple)) else [result]:
                problem = _listed(item, taken)
                if problem is None:
                    found.append(item)
                    taken[item.name.lower()] = f"extension {extension!r}"
                    continue
                message = f"extension {extension!r} listed an upscaler that was skipped: {problem}"
                log.warning(message)
                if warnings is not None:
                    warnings.append(message)
        if warnings is not None:
            warnings.extend(f.message() for f in failures)
    return found


def resolve(name: str, warnings: list | None = None) -> Upscaler:
    """The upscaler called ``name`` (case-insensitive), or ``ValueError`` naming the available ones."""
    available = all_upscalers(warnings)
    found = next((u for u in available if isinstance(name, str) and u.name.lower() == name.lower()), None)
    if found is None:
        raise ValueError(f"no upscaler named {name!r}; available: {', '.join(u.name for u in available)}")
    return found


def upscale(image: Image.Image, name: str, width: int, height: int) -> Image.Image:
    """``image`` upscaled (or resized) to exactly ``width`` x ``height`` by the upscaler called ``name``.

    The one entry point for Hires fix, SD upscale and anything else that needs an image at a size: ``name`` as
    ``GET /upscalers`` lists it, matched regardless of case. "None" resizes with Lanczos (A1111's
    ``images.resize_image`` does the same for it). Raises ``ValueError`` naming the available upscalers for an
    unknown name, and ``UpscalerFailed`` naming the upscaler when it fails.
    """
    return resolve(name).run(image, width, height)


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

    @property
    def blends(self) -> bool:
        return self.active and self.upscaler_2.upscale is not None and self.upscaler_2_visibility > 0

    def scaled_size(self, image: Image.Image) -> tuple[int, int]:
        """The size before cropping (the largest image this plan allocates for ``image``)."""
        w, h = image.size
        factor = self.scale if self.resize_mode == 0 else max(self.width / w, self.height / h)
        return max(1, round(w * factor)), max(1, round(h * factor))

    def apply(self, image: Image.Image) -> Image.Image:
        if not self.active:
            return image
        width, height = self.scaled_size(image)
        result = self._run("upscaler_1", self.upscaler_1, image, width, height)
        if self.blends:
            second = self._run("upscaler_2", self.upscaler_2, image, width, height)
            result = Image.blend(result.convert("RGB"), second.convert("RGB"), self.upscaler_2_visibility)
        if self.resize_mode == 1 and self.crop:
            left, top = (width - self.width) // 2, (height - self.height) // 2
            result = result.crop((left, top, left + self.width, top + self.height))
        if "parameters" in image.info:  # keep the generation parameters of the original
            result.info["parameters"] = image.info["parameters"]
        return result

    @staticmethod
    def _run(field_name: str, upscaler: Upscaler, image, width: int, height: int) -> Image.Image:
        try:
            return upscaler.run(image, width, height)
        except UpscalerFailed as e:
            raise UpscalerFailed(e.name, e.reason, field_name) from e.__cause__

    def describe(self) -> str:
        """What was done, in A1111's "Postprocess ..." words, then any warnings."""
        lines = []
        if self.active:
            size = f"{self.scale:g}" if self.resize_mode == 0 else f"{self.width}x{self.height}"
            lines.append(f"Postprocess upscale by: {size}, Postprocess upscaler: {self.upscaler_1.name}")
            if self.blends:
                lines.append(f"Postprocess upscaler 2: {self.upscaler_2.name}, "
                             f"visibility {self.upscaler_2_visibility:g}")
        return "\n".join(lines + list(self.warnings))


def run_plan(plan: Plan, images: list[Image.Image]) -> list[Image.Image]:
    """Apply ``plan`` to every image, in order."""
    return [plan.apply(image) for image in images]
