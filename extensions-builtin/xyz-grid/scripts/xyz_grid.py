"""X/Y/Z plot: one generation per combination of up to three axes' values, drawn as a labelled grid (A1111's
``scripts/xyz_grid.py``, with its argument order and axis indices).

Each axis is a field of the generation (seed, steps, sampler, the prompt...) set on the cell's copy of ``p``, or
a setting (checkpoint, VAE, clip skip, any registered option) applied as that cell's nested override, so its
infotext records it and stored settings never change. Everything is parsed and checked before the request queues:
a bad value is a ``ScriptArgError`` naming the argument. Unlike A1111, a failing cell is marked in the grid and
named in the warnings while the other cells complete.

Written against ``modules.extensions_api`` only.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import math
import os
import random
import re
from dataclasses import dataclass, field

from modules.extensions_api import (Script, ScriptArg, ScriptArgError, combine_processed, create_infotext, draw_grid,
                                    error_tile, hookimpl, interrupted, opts, prepare_item, process_item)

log = logging.getLogger("serena.xyz_grid")

TITLE = "X/Y/Z plot"
SEED_MAX = 4294967294  # A1111's random.randrange bound for a fixed seed
MAX_VALUES = 1000  # one axis: a range beyond this is a typo, and would be built before any limit could refuse it
MAX_MEGAPIXELS = 200  # the grid's cells together: A1111's default img_max_size_mp


@dataclass(frozen=True)
class Axis:
    """One axis type. ``kind``: ``nothing``, ``field`` (``target`` is a processing field), ``override``
    (``target`` is an option key), ``prompt_sr``, ``prompt_order``, ``styles``, ``size`` or ``unsupported``.
    ``cost`` orders the loops (the costliest changes least often); ``choices``: its values come from the values
    dropdown unless ``csv_mode``; ``shown``: how a value is labelled in the legend."""

    label: str
    kind: str
    type: type = str
    target: str = ""
    cost: float = 0.0
    tab: str | None = None
    choices: bool = False
    shown: str = "labelled"  # labelled ("Steps: 20"), value, joined, basename, nothing
    why: str = ""
    names: tuple = field(default=(), compare=False)


def _field(label, type_, name, **kw):
    return Axis(label, "field", type_, name, **kw)


def _override(label, type_, key, **kw):
    return Axis(label, "override", type_, key, cost=COSTS.get(key, 0.0), **kw)


# A1111 changes the model for these; VAE and the rest are cheaper, still worth keeping outermost.
COSTS = {"sd_model_checkpoint": 1.0, "fp8_storage": 0.9, "sd_vae": 0.7, "uni_pc_order": 0.5}

# A1111 1.10's list, in its order: an entry with a tab is on that tab only, so the indices differ per tab (as they
# do in A1111). An axis whose field or option Serena does not have keeps its place and is refused when chosen.
FIXED = (
    Axis("Nothing", "nothing", shown="nothing"),
    _field("Seed", int, "seed"),
    _field("Var. seed", int, "subseed"),
    _field("Var. strength", float, "subseed_strength"),
    _field("Steps", int, "steps"),
    _field("Hires steps", int, "hr_second_pass_steps", tab="txt2img"),
    _field("CFG Scale", float, "cfg_scale"),
    _field("Image CFG Scale", float, "image_cfg_scale", tab="img2img"),
    Axis("Prompt S/R", "prompt_sr", shown="value"),
    Axis("Prompt order", "prompt_order", shown="joined"),
    _field("Sampler", str, "sampler_name", tab="txt2img", choices=True, shown="value"),
    _field("Hires sampler", str, "hr_sampler_name", tab="txt2img", choices=True),
    _field("Sampler", str, "sampler_name", tab="img2img", choices=True, shown="value"),
    _override("Checkpoint name", str, "sd_model_checkpoint", choices=True, shown="basename"),
    _field("Negative Guidance minimum sigma", float, "s_min_uncond"),
    _field("Sigma Churn", float, "s_churn"),
    _field("Sigma min", float, "s_tmin"),
    _field("Sigma max", float, "s_tmax"),
    _field("Sigma noise", float, "s_noise"),
    _field("Schedule type", str, "scheduler", choices=True),
    _override("Schedule min sigma", float, "sigma_min"),
    _override("Schedule max sigma", float, "sigma_max"),
    _override("Schedule rho", float, "rho"),
    _override("Beta schedule alpha", float, "beta_dist_alpha"),
    _override("Beta schedule beta", float, "beta_dist_beta"),
    _field("Eta", float, "eta"),
    _override("Clip skip", int, "CLIP_stop_at_last_layers"),
    _field("Denoising", float, "denoising_strength"),
    _field("Initial noise multiplier", float, "initial_noise_multiplier"),
    _override("Extra noise", float, "img2img_extra_noise"),
    _field("Hires upscaler", str, "hr_upscaler", tab="txt2img", choices=True),
    _override("Cond. Image Mask Weight", float, "inpainting_mask_weight", tab="img2img"),  # an option in Serena
    _override("VAE", str, "sd_vae", choices=True),
    Axis("Styles", "styles", choices=True),
    _override("UniPC Order", int, "uni_pc_order"),
    Axis("Face restore", "unsupported", why="Serena has no face restoration"),
    _override("Token merging ratio", float, "token_merging_ratio"),
    _override("Token merging ratio high-res", float, "token_merging_ratio_hr"),
    _override("Always discard next-to-last sigma", bool, "always_discard_next_to_last_sigma", choices=True),
    _override("SGM noise multiplier", bool, "sgm_noise_multiplier", choices=True),
    _field("Refiner checkpoint", str, "refiner_checkpoint", cost=1.0, choices=True, shown="basename"),
    _field("Refiner switch at", float, "refiner_switch_at"),
    _override("RNG source", str, "randn_source", choices=True),
    _override("FP8 mode", str, "fp8_storage", choices=True),
    Axis("Size", "size"),
)
SCALARS = (bool, int, float, str)


def option_axes(taken: set[str]) -> list[Axis]:
    """Every registered option an override may set, in registration order (the core's first, then each
    extension's), named by its label, or ``label (key)`` where a label is already taken."""
    axes = []
    for key, info in opts.data_labels.items():
        kind = info.expected_type()
        hidden = isinstance(info.section, tuple) and info.section and info.section[0] is None
        if info.restrict_api or info.do_not_save or hidden or kind not in SCALARS:
            continue
        label = info.label or key
        shown = label if label.lower() not in taken else f"{label} ({key})"
        taken.add(shown.lower())
        axes.append(_override(shown, kind, key, choices=kind is bool or info.fixed_choices() is not None,
                              names=tuple(n for n in (label, key, info.infotext) if n)))
    return axes


_axes_cache: dict = {}


def axes_for(tab: str) -> list[Axis]:
    """The axis types of ``tab``, by index: A1111's fixed list, then the option axes."""
    key = (tab, tuple(opts.data_labels))
    if key not in _axes_cache:
        fixed = [a for a in FIXED if a.tab in (None, tab)]
        if len(_axes_cache) > 8:  # options come and go in tests: keep only the recent lists
            _axes_cache.clear()
        _axes_cache[key] = fixed + option_axes({a.label.lower() for a in fixed})
    return _axes_cache[key]


def find_axis(axes: list[Axis], name: str) -> int | None:
    """The index of the axis named ``name`` (any case): a fixed axis by label, then an option axis by its shown
    name, label, key or infotext name."""
    wanted = name.strip().lower()
    for i, axis in enumerate(axes):
        if axis.label.lower() == wanted or any(n.lower() == wanted for n in axis.names):
            return i
    return None


# -- values -------------------------------------------------------------------------------------------------------

_INT = r"([+-]?\s*\d+)"
_FLOAT = r"([+-]?\s*\d+(?:\.\d*)?|[+-]?\s*\.\d+)"
RANGE = re.compile(rf"\s*{_INT}\s*-\s*{_INT}(?:\s*\(\s*([+-]?\s*\d+)\s*\))?\s*")
COUNT = re.compile(rf"\s*{_INT}\s*-\s*{_INT}\s*\[\s*(\d+)\s*]\s*")
RANGE_FLOAT = re.compile(rf"\s*{_FLOAT}\s*-\s*{_FLOAT}(?:\s*\(\s*{_FLOAT}\s*\))?\s*")
COUNT_FLOAT = re.compile(rf"\s*{_FLOAT}\s*-\s*{_FLOAT}\s*\[\s*(\d+)\s*]\s*")


def split_values(text: str) -> list[str]:
    """A comma list, CSV-quoted where a value holds a comma (``"a, b", c``), each value stripped."""
    rows = csv.reader(io.StringIO(text), skipinitialspace=True)
    return [value.strip() for row in rows for value in row]


def to_csv(values) -> str:
    """``values`` as one CSV line: what ``split_values`` reads back."""
    out = io.StringIO()
    csv.writer(out).writerow(values)
    return out.getvalue().strip()


def _number(text: str) -> float:
    return float(text.replace(" ", ""))


def _checked_count(count: int) -> int:
    if count > MAX_VALUES:
        raise ValueError(f"{count} values; an axis takes at most {MAX_VALUES}")
    return count


def int_values(text: str) -> list[int]:
    """One item of an int axis: ``5``, ``1-5``, ``1-10 (+2)`` (step), ``10-1 (-3)``, ``1-10 [4]`` (count)."""
    if m := RANGE.fullmatch(text):
        start, end = int(_number(m[1])), int(_number(m[2]))
        step = int(_number(m[3])) if m[3] else 1
        if step == 0:
            raise ValueError(f"{text!r}: a step of 0 never ends")
        values = range(start, end + (1 if step > 0 else -1), step)
        _checked_count(len(values))
        return list(values)
    if m := COUNT.fullmatch(text):
        start, end, count = int(_number(m[1])), int(_number(m[2])), _checked_count(int(m[3]))
        return [int(v) for v in _linspace(start, end, count)]  # truncated, as A1111's int(numpy.linspace)
    try:
        return [int(text)]
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number, a range (1-5, 1-10 (+2)) or a count (1-10 [5])") from None


def float_values(text: str) -> list[float]:
    """One item of a float axis: ``0.5``, ``1-2 (+0.25)`` (step, the end included when it is reached),
    ``1-2 [5]`` (count)."""
    if m := RANGE_FLOAT.fullmatch(text):
        start, end = _number(m[1]), _number(m[2])
        step = _number(m[3]) if m[3] else 1.0
        if step == 0:
            raise ValueError(f"{text!r}: a step of 0 never ends")
        span = (end - start) / step
        count = _checked_count(math.floor(span + 1e-9) + 1) if span > -1e-9 else 0
        return [round(start + i * step, 8) for i in range(count)]
    if m := COUNT_FLOAT.fullmatch(text):
        start, end, count = _number(m[1]), _number(m[2]), _checked_count(int(m[3]))
        return [round(v, 8) for v in _linspace(start, end, count)]
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number, a range (1-2 (+0.5)) or a count (1-2 [5])") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return [value]


def _linspace(start: float, end: float, count: int) -> list[float]:
    if count == 1:
        return [float(start)]
    return [start + (end - start) * i / (count - 1) for i in range(count)]


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(f"{text!r} is not true or false")
    return text.lower() == "true"


def parse_values(axis: Axis, items: list[str]) -> list:
    """The values of ``axis`` from its items (already split): numbers and ranges expanded, permutations for
    Prompt order; ``ValueError`` saying which item is wrong."""
    if axis.kind == "nothing":
        return [None]
    if axis.kind == "prompt_order":
        if len(items) > 6:  # 7! = 5040 cells
            raise ValueError(f"{len(items)} prompt parts make {math.factorial(len(items))} orders; at most 6")
        return list(itertools.permutations(items))
    if axis.type is int or axis.type is float:
        expand = int_values if axis.type is int else float_values
        values = [v for item in items if item.strip() for v in expand(item)]
    elif axis.type is bool:
        values = [_bool(item) for item in items if item.strip()]
    elif axis.target == "sd_vae":
        values = [{"auto": "Automatic", "automatic": "Automatic", "none": "None"}.get(i.lower(), i) for i in items]
    else:
        values = list(items)
    _checked_count(len(values))
    return values


def label_for(axis: Axis, value) -> str:
    if isinstance(value, float):
        value = round(value, 8)
    if axis.shown == "nothing":
        return ""
    if axis.shown == "value":
        return str(value)
    if axis.shown == "joined":
        return ", ".join(value)
    if axis.shown == "basename":
        return os.path.basename(str(value))
    return f"{axis.label}: {value}"


# -- cells --------------------------------------------------------------------------------------------------------


def reorder_prompt(prompt: str, tokens) -> str:
    """``prompt`` with ``tokens`` put where they stand, in the given order (A1111's Prompt order); unchanged when
    one is missing (another axis replaced it), where A1111 would cut the prompt at the wrong place."""
    if any(t not in prompt for t in tokens):
        return prompt
    places = sorted((prompt.find(t), t) for t in tokens)
    parts, rest = [], prompt
    for _, token in places:
        n = rest.find(token)
        parts.append(rest[:n])
        rest = rest[n + len(token):]
    return "".join(part + tokens[i] for i, part in enumerate(parts)) + rest


@dataclass
class AxisPlan:
    axis: Axis
    values: list
    source: str  # the values as the infotext records them
    index: int  # the argument index of the values (for errors)


def apply(plan: AxisPlan, value, p, fields: dict, overrides: dict) -> None:
    """Put one axis value into a cell's ``fields`` (processing fields) or ``overrides`` (settings)."""
    axis, kind = plan.axis, plan.axis.kind
    if kind == "field":
        fields[axis.target] = value
    elif kind == "override":
        overrides[axis.target] = value
    elif kind == "prompt_sr":
        search = plan.values[0]
        for name in ("prompt", "negative_prompt"):
            fields[name] = fields.get(name, getattr(p, name)).replace(search, value)
    elif kind == "prompt_order":
        fields["prompt"] = reorder_prompt(fields.get("prompt", p.prompt), value)
    elif kind == "styles":
        fields["styles"] = fields.get("styles", list(p.styles)) + [s.strip() for s in value.split(",") if s.strip()]
    elif kind == "size":
        width, _, height = value.partition("x")
        fields["width"], fields["height"] = int(width.strip()), int(height.strip())


def check_axis(p, plan: AxisPlan) -> None:
    """Refuse what no cell could run: a search string not in the prompt, a bad size, a value the generation
    refuses (unknown sampler or checkpoint, an option value out of range...)."""
    axis = plan.axis
    if axis.kind == "nothing":
        return
    if not plan.values or (axis.kind == "prompt_order" and not plan.values[0]):
        raise ScriptArgError(plan.index, f"no values for {axis.label}")
    if axis.kind == "prompt_sr" and plan.values[0] not in p.prompt and plan.values[0] not in p.negative_prompt:
        raise ScriptArgError(plan.index, f"Prompt S/R did not find {plan.values[0]!r} in the prompt or the negative "
                                         f"prompt")
    if axis.kind == "prompt_order":
        missing = [t for t in plan.values[0] if t not in p.prompt]
        if missing:
            raise ScriptArgError(plan.index, f"Prompt order did not find {missing[0]!r} in the prompt")
    for value in plan.values:
        fields, overrides = {}, {}
        try:
            if axis.kind == "size" and not re.fullmatch(r"\s*\d+\s*x\s*\d+\s*", value):
                raise ValueError("a size is WIDTHxHEIGHT, e.g. 512x768")
            apply(plan, value, p, fields, overrides)
            if axis.target == "hr_sampler_name":  # checked only when Hires fix runs: check it as a sampler
                fields["sampler_name"] = value
            prepare_item(p, overrides=overrides, **fields)
        except ValueError as e:
            raise ScriptArgError(plan.index, f"{axis.label} {value!r}: {e}") from None


@dataclass
class Grid:
    """What ``run`` needs, parsed and checked: the three axes with their values, and the flags."""

    axes: list[AxisPlan]
    flags: dict

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(len(a.values) for a in self.axes)

    def cells(self):
        """``(ix, iy, iz)`` in the order to run them: the costliest axis outermost, so it changes least often
        (A1111's rule; ties keep Z outermost, then Y), its repeated values together."""
        x, y, z = (a.axis.cost for a in self.axes)
        first, second = 2, 1
        if x > y and x > z:
            first, second = 0, (1 if y > z else 2)
        elif y > x and y > z:
            first, second = 1, (0 if x > z else 2)
        elif z > x and z > y:
            first, second = 2, (0 if x > y else 1)
        order = (first, second, 3 - first - second)
        ranges = [range(self.shape[i]) for i in order]
        outer = self.axes[first]
        if outer.axis.cost:  # a value that comes back (checkpoint A, B, A) runs with its first: one switch each
            values = outer.values
            ranges[0] = sorted(ranges[0], key=lambda i: values.index(values[i]))
        for combo in itertools.product(*ranges):
            cell = [0, 0, 0]
            for axis, i in zip(order, combo):
                cell[axis] = i
            yield tuple(cell)

    def settings(self, p, cell) -> tuple[dict, dict]:
        """``(fields, overrides)`` of one cell: the axes' values applied X, Y, Z, then the varied seed."""
        fields, overrides = {}, {}
        for plan, i in zip(self.axes, cell):
            apply(plan, plan.values[i], p, fields, overrides)
        nx, ny, _ = self.shape
        vary = self.flags
        offset = (cell[0] if vary["x"] else 0) + (cell[1] * (nx if vary["x"] else 1) if vary["y"] else 0) + (
            cell[2] * (nx if vary["x"] else 1) * (ny if vary["y"] else 1) if vary["z"] else 0)
        if offset:
            fields["seed"] = fields.get("seed", p.seed) + offset
        return fields, overrides

    def describe(self, cell) -> str:
        named = [f"{'XYZ'[n]}={label_for(plan.axis, plan.values[i]) or plan.values[i]}"
                 for n, (plan, i) in enumerate(zip(self.axes, cell)) if plan.axis.kind != "nothing"]
        return ", ".join(named) or "the only cell"


# -- the script ---------------------------------------------------------------------------------------------------

ARG_NAMES = ("x_type", "x_values", "x_values_dropdown", "y_type", "y_values", "y_values_dropdown", "z_type",
             "z_values", "z_values_dropdown", "draw_legend", "include_lone_images", "include_sub_grids",
             "no_fixed_seeds", "vary_seeds_x", "vary_seeds_y", "vary_seeds_z", "margin_size", "csv_mode")


class XYZPlot(Script):
    title = TITLE

    def __init__(self, tab: str):
        self.tab = tab
        self.tabs = (tab,)
        self._args = (None, ())

    @property
    def axes(self) -> list[Axis]:
        return axes_for(self.tab)

    @property
    def args(self) -> tuple:
        axes = self.axes
        if self._args[0] is not axes:  # the option axes follow the registered options
            labels = [a.label for a in axes]
            made = []
            for name, default in (("X", 1), ("Y", 0), ("Z", 0)):
                made += [ScriptArg(f"{name} type", default, choices=labels, index=True),
                         ScriptArg(f"{name} values", ""), ScriptArg(f"{name} values", [], type="list")]
            made += [ScriptArg("Draw legend", True), ScriptArg("Include Sub Images", False),
                     ScriptArg("Include Sub Grids", False), ScriptArg("Keep -1 for seeds", False),
                     ScriptArg("Vary seeds for X", False), ScriptArg("Vary seeds for Y", False),
                     ScriptArg("Vary seeds for Z", False),
                     ScriptArg("Grid margins (px)", 0, minimum=0, maximum=500, step=2),
                     ScriptArg("Use text inputs instead of dropdowns", False)]
            self._args = (axes, tuple(made))
        return self._args[1]

    def plan(self, p, args) -> Grid:
        """The grid ``args`` ask for, every axis and value checked against ``p``; ``ScriptArgError`` naming the
        first bad argument."""
        a = dict(zip(ARG_NAMES, args))
        axes, plans = self.axes, []
        for n, name in enumerate("xyz"):
            axis = axes[a[f"{name}_type"]]
            if axis.kind == "unsupported" or (axis.kind == "field" and not hasattr(p, axis.target)):
                raise ScriptArgError(3 * n, f"axis {axis.label!r} is A1111's, but " + (
                    axis.why or f"Serena's {self.tab} has no `{axis.target}` field"))
            if axis.kind == "override" and axis.target not in opts.data_labels:
                raise ScriptArgError(3 * n, f"axis {axis.label!r} is A1111's, but Serena has no option "
                                            f"`{axis.target}`")
            dropdown = a[f"{name}_values_dropdown"]
            from_dropdown = axis.choices and not a["csv_mode"] and bool(dropdown)
            index = 3 * n + (2 if from_dropdown else 1)
            items = list(dropdown) if from_dropdown else split_values(a[f"{name}_values"])
            try:
                values = parse_values(axis, items)
            except ValueError as e:
                raise ScriptArgError(index, f"{axis.label}: {e}") from None
            plans.append(AxisPlan(axis, values, to_csv(items) if from_dropdown else a[f"{name}_values"], index))
        for plan in plans:
            check_axis(p, plan)
        grid = Grid(plans, {"x": a["vary_seeds_x"], "y": a["vary_seeds_y"], "z": a["vary_seeds_z"], **a})
        self._check_cells(p, grid)
        return grid

    @staticmethod
    def _check_cells(p, grid: Grid) -> None:
        count = math.prod(grid.shape)
        if count * p.width * p.height > MAX_MEGAPIXELS * 1_000_000:
            raise ScriptArgError(1, f"the grid would be {count} cells of {p.width}x{p.height}, above "
                                    f"{MAX_MEGAPIXELS} megapixels")
        images = count * p.batch_size * p.n_iter
        if p.is_api and images > opts.api_max_images:
            raise ScriptArgError(1, f"the grid makes {images} images ({'x'.join(map(str, grid.shape))} cells), above "
                                    f"this server's limit of {opts.api_max_images} for one request (option "
                                    f"api_max_images)")
        if sum(plan.axis.kind != "nothing" for plan in grid.axes) < 2:
            return  # one axis: every cell was checked with its value
        for cell in grid.cells():  # values that fit alone may not fit together (a clip skip for a checkpoint)
            fields, overrides = grid.settings(p, cell)
            try:
                prepare_item(p, overrides=overrides, **fields)
            except ValueError as e:
                raise ScriptArgError(1, f"cell {grid.describe(cell)}: {e}") from None

    def check(self, p, *args):
        self.plan(p, args)

    def run(self, p, *args):
        grid = self.plan(p, args)
        if not grid.flags["no_fixed_seeds"]:
            fix_seeds(p, grid)
        results: dict = {}
        for cell in grid.cells():
            if interrupted():
                break
            fields, overrides = grid.settings(p, cell)
            try:
                results[cell] = process_item(p, overrides=overrides, **fields)
            except Exception as e:  # one cell's failure is that cell's: the others still run
                message = f"{TITLE}: cell {grid.describe(cell)} failed: {type(e).__name__}: {e}"
                log.exception("%s", message)
                p.warnings.append(message)
                results[cell] = message
        return assemble(p, grid, results)


def fix_seeds(p, grid: Grid) -> None:
    """A random seed chosen once for the whole grid, so every cell shares it (A1111's ``fix_seed``), and the
    same for -1 among a Seed or Var. seed axis's values."""
    for name in ("seed", "subseed"):
        if getattr(p, name) in (None, -1, ""):
            setattr(p, name, random.randrange(SEED_MAX))
    for plan in grid.axes:
        if plan.axis.target in ("seed", "subseed") and plan.axis.kind == "field":
            plan.values = [random.randrange(SEED_MAX) if v == -1 else v for v in plan.values]


def _grid_params(plans, names: str, fixed_seeds: bool) -> dict:
    params = {}
    for name, plan in zip(names, plans):
        if plan.axis.kind == "nothing":
            continue
        params[f"{name} Type"] = plan.axis.label
        params[f"{name} Values"] = plan.source
        if fixed_seeds and plan.axis.kind == "field" and plan.axis.target in ("seed", "subseed"):
            params[f"Fixed {name} Values"] = ", ".join(str(v) for v in plan.values)
    return params


def _made(result) -> bool:
    """Whether a cell's result (a ``Processed``, a failure's message, or ``None``: not run) has an image."""
    return result is not None and not isinstance(result, str) and bool(result.images)


def assemble(p, grid: Grid, results: dict):
    """The ``Processed`` of the grid: the main grid first, then the sub-grids (``include_sub_grids``), then each
    cell's first image (``include_lone_images``), in A1111's order (X fastest, then Y, then Z); each image with
    its infotext (a grid's is its first cell's, plus the axes)."""
    nx, ny, nz = grid.shape
    done = [r for r in results.values() if _made(r)]
    size = done[0].images[0].size if done else (p.width, p.height)
    order = [(ix, iy, iz) for iz in range(nz) for iy in range(ny) for ix in range(nx)]

    def tile(cell):
        result = results.get(cell)
        if _made(result):
            return result.images[0]
        if isinstance(result, str):
            return error_tile(*size, result.split(" failed: ", 1)[-1])
        return error_tile(*size, "not run (interrupted)")

    def text_of(cell):
        result = results.get(cell)
        return result.infotexts[0] if _made(result) and result.infotexts else ""

    def first_text(cells):
        return next((text_of(c) for c in cells if text_of(c)), "")

    def with_params(text, params):
        line = create_infotext(None, None, {"Script": TITLE, **params})
        return f"{text}, {line}" if text else line

    legend, fixed = grid.flags["draw_legend"], not grid.flags["no_fixed_seeds"]
    xs, ys, zs = ([label_for(plan.axis, v) for v in plan.values] for plan in grid.axes)
    sub_grids, sub_texts = [], []
    for iz in range(nz):
        rows = [[tile((ix, iy, iz)) for ix in range(nx)] for iy in range(ny)]
        sub_grids.append(draw_grid(rows, xs if legend else (), ys if legend else (),
                                   margin=grid.flags["margin_size"]))
        sub_texts.append(with_params(first_text([c for c in order if c[2] == iz]),
                                     _grid_params(grid.axes[:2], "XY", fixed)))
    main = sub_grids[0] if nz == 1 else draw_grid([sub_grids], zs if legend else ())
    images = [main] + (sub_grids if grid.flags["include_sub_grids"] else [])
    texts = [with_params(first_text(order), _grid_params(grid.axes, "XYZ", fixed))]
    texts += sub_texts if grid.flags["include_sub_grids"] else []
    parts = [results[c] for c in order if c in results and not isinstance(results[c], str)]
    processed = combine_processed(p, parts)
    if grid.flags["include_lone_images"]:
        images += [tile(c) for c in order]
        texts += [text_of(c) for c in order]
    processed.images, processed.infotexts = images, texts
    return processed


SCRIPTS = [XYZPlot("txt2img"), XYZPlot("img2img")]


@hookimpl
def on_list_scripts():
    return SCRIPTS
