"""Scripts: the "Script" dropdown (API ``script_name``/``script_args``) and always-on scripts (``alwayson_scripts``).

An extension lists its scripts through the ``on_list_scripts`` hook. A ``Script`` declares its title, its tabs and
its arguments (``ScriptArg``: label, default, bounds, choices, type). Every front door selects and checks them
here, before it queues (``select`` by name and position, then ``ScriptRun.check`` against the built processing
object), so the API, the UI and the CLI refuse the same input with the same message.

Running (``run``, which replaces the plain ``process_images`` call): a selected script's ``run(p, *args)`` runs with
the request's overrides entered once around it; each generation it makes (``process_item``) gets its own overrides
nested inside, so per-item settings end with the item and never touch stored values. Always-on scripts get
``before_process``/``process``/``postprocess`` of every generation through the core's hooks (``core_hooks``).

Nothing here imports the model code at import time: the UI lists scripts without loading torch.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modules import jobs, plugins
from modules.runtime_utils import temporary_opts

log = logging.getLogger("serena.scripts")

TABS = ("txt2img", "img2img")
_TYPES = {"bool": bool, "int": int, "float": float, "str": str, "list": list, "note": str}


@dataclass(frozen=True)
class ScriptArg:
    """One argument of a script, in the order ``run`` receives it (A1111's ``ScriptArg`` shape for the API).

    ``type`` is ``"bool"``, ``"int"``, ``"float"``, ``"str"`` or ``"list"`` (of strings: A1111's multi-select
    dropdowns); left out, it is the type of ``value`` (the default). ``choices`` (strings) limit the value to one
    of them (for a list, each item); ``minimum``/``maximum`` bound a number; ``step`` is for the UI's slider.
    ``lines`` > 1 makes a ``str`` a multi-line text box in the UI.

    ``index=True`` (with ``choices``) is A1111's ``type="index"`` dropdown: ``run`` receives the position of the
    choice, the default is a position, and a client may send the position or the choice itself (any case).

    ``type="note"`` is A1111's ``gr.HTML`` argument: ``value`` is text the UI shows, and any value a request gives
    there is accepted (A1111 ignores it).
    """

    label: str
    value: Any = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None
    type: str | None = None
    lines: int = 1
    index: bool = False

    def __post_init__(self):
        kind = "int" if self.index else self.type or next((k for k, t in _TYPES.items() if type(self.value) is t),
                                                           None)
        if kind not in _TYPES:
            raise TypeError(f"ScriptArg {self.label!r}: type must be one of {sorted(_TYPES)} (or a default of one)")
        object.__setattr__(self, "type", kind)
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        if self.index and not self.choices:
            raise TypeError(f"ScriptArg {self.label!r}: index=True needs choices")
        self.check(self.value)  # a default outside its own schema is the script author's bug: say so at once

    def check(self, value):
        """``value`` as ``run`` receives it, or ``ValueError`` saying why it does not fit."""
        kind = self.type
        if self.index:
            return self._check_index(value)
        if kind == "note":
            return value
        if kind == "list":
            if value is None or value == "":  # what clients send for an unused A1111 dropdown
                value = []
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"expected a list of strings, got {value!r}")
            bad = [v for v in value if self.choices is not None and v not in self.choices]
            if bad:
                raise ValueError(f"{bad[0]!r} is not one of {list(self.choices)}")
            return list(value)
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {value!r}")
        elif kind == "str":
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {value!r}")
        else:  # a number: an int for a float is fine, a bool or a fraction for an int is not (as options)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"expected a finite number, got {value!r}")
            if kind == "int":
                if value != int(value):
                    raise ValueError(f"expected a whole number, got {value!r}")
                value = int(value)
            else:
                value = float(value)
            if self.minimum is not None and value < self.minimum:
                raise ValueError(f"{value!r} is below the minimum of {self.minimum}")
            if self.maximum is not None and value > self.maximum:
                raise ValueError(f"{value!r} is above the maximum of {self.maximum}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{value!r} is not one of {list(self.choices)}")
        return value

    def _check_index(self, value) -> int:
        if isinstance(value, str):
            wanted = value.strip().lower()
            found = next((i for i, c in enumerate(self.choices) if c.lower() == wanted), None)
            if found is None:
                raise ValueError(f"{value!r} is not one of {list(self.choices)}")
            return found
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise ValueError(f"expected the position of a choice (a whole number) or its name, got {value!r}")
        if not 0 <= value < len(self.choices):
            raise ValueError(f"{int(value)} is not a position in the {len(self.choices)} choices (0 to "
                             f"{len(self.choices) - 1})")
        return int(value)

    def api_info(self) -> dict:
        # A1111 lists an index dropdown's default by its choice, as its UI shows it.
        value = self.choices[self.value] if self.index else self.value
        return {"label": self.label, "value": value, "minimum": self.minimum, "maximum": self.maximum,
                "step": self.step, "choices": list(self.choices) if self.choices is not None else None}


class Script:
    """Subclass to make a script; list an instance from your ``on_list_scripts`` implementation.

    Class attributes: ``title`` (shown in the dropdown; API clients name it case-insensitively), ``tabs`` (of
    ``"txt2img"``, ``"img2img"``), ``args`` (``ScriptArg``s, in ``run``'s order), ``alwayson`` (``True``: runs
    on every generation with its arguments from ``alwayson_scripts``, never in the dropdown).

    A selectable script implements ``run(p, *args)`` and returns a ``Processed`` (``None``: the plain generation
    runs). An always-on script implements any of ``before_process(p, *args)`` (before the overrides apply),
    ``process(p, *args)`` (with them in effect, before sampling) and ``postprocess(p, processed, *args)``.
    ``check(p, *args)`` may refuse arguments that fit the schema but not each other or ``p``: raise
    ``ValueError(message)``, or ``ScriptArgError(index, message)`` to name one argument. It runs before queueing.
    """

    title: str = ""
    tabs: tuple[str, ...] = TABS
    args: tuple[ScriptArg, ...] = ()
    alwayson: bool = False

    @property
    def name(self) -> str:
        """The lower-case title: what ``GET /scripts`` lists and ``script_name`` is compared with."""
        return self.title.lower()

    def check(self, p, *args) -> None:
        """Refuse arguments before the request queues; nothing by default."""

    def run(self, p, *args):
        return None

    def before_process(self, p, *args) -> None:
        pass

    def process(self, p, *args) -> None:
        pass

    def postprocess(self, p, processed, *args) -> None:
        pass


class ScriptArgError(ValueError):
    """A script's ``check`` naming one argument by its index in ``args``."""

    def __init__(self, index: int, message: str):
        self.index = index
        super().__init__(message)


def available(tab: str | None = None, *, alwayson: bool | None = None) -> list[Script]:
    """The scripts every extension lists (``on_list_scripts``), in hook order, for ``tab`` and of the kind asked.

    A title listed twice (case-insensitively) for one tab keeps the first and logs the second: clients select by
    title within a tab. One title may name different scripts on different tabs (A1111's X/Y/Z plot offers other
    axes on img2img).
    """
    found: list[Script] = []
    seen: set[tuple[str, str]] = set()
    for listed in plugins.host.call("on_list_scripts"):
        for script in (listed if isinstance(listed, (list, tuple)) else [listed]):
            if not isinstance(script, Script) or not script.title:
                log.warning("on_list_scripts returned %r, not a Script with a title; ignored", script)
                continue
            keys = {(script.name, t) for t in script.tabs}
            if keys & seen:
                log.warning("a second script titled %r is ignored", script.title)
                continue
            seen |= keys
            found.append(script)
    return [s for s in found if (tab is None or tab in s.tabs) and (alwayson is None or s.alwayson == alwayson)]


def find(tab: str, title: str) -> Script | None:
    """The script of ``tab`` titled ``title`` (any case), or ``None``."""
    wanted = title.lower()
    return next((s for s in available(tab) if s.name == wanted), None)


@dataclass
class ScriptRun:
    """The scripts of one generation: the selected one (or ``None``) and every always-on one, each with its
    checked arguments."""

    script: Script | None = None
    args: tuple = ()
    alwayson: list[tuple[Script, tuple]] = field(default_factory=list)

    def check(self, p) -> dict[str, str]:
        """``{field: why}`` for what the scripts' own ``check`` refuses with ``p`` built; ``{}`` when fine."""
        errors = {}
        for script, args, where in [(self.script, self.args, "script_args")] + [
                (s, a, f"alwayson_scripts.{s.title}.args") for s, a in self.alwayson]:
            if script is None:
                continue
            try:
                script.check(p, *args)
            except ScriptArgError as e:
                errors[_arg_field(where, e.index, script)] = str(e)
            except ValueError as e:
                errors["script_name" if where == "script_args" else f"alwayson_scripts.{script.title}"] = str(e)
        return errors


def _arg_field(where: str, index: int, script: Script) -> str:
    label = script.args[index].label if 0 <= index < len(script.args) else "?"
    return f"{where}[{index}] ({label})"


def _check_args(script: Script, given, where: str, errors: dict) -> tuple:
    """Positional ``given`` over the script's defaults (fewer is fine: the rest are defaults; more is refused)."""
    if not isinstance(given, Sequence) or isinstance(given, (str, bytes)):
        errors[where] = f"must be a list of arguments, got {type(given).__name__}"
        return ()
    if len(given) > len(script.args):
        errors[where] = (f"{len(given)} arguments given; {script.title!r} takes {len(script.args)}: "
                         f"{', '.join(a.label for a in script.args) or 'none'}")
        return ()
    values = []
    for i, arg in enumerate(script.args):
        try:
            values.append(arg.check(given[i]) if i < len(given) else arg.value)
        except ValueError as e:
            errors[_arg_field(where, i, script)] = str(e)
    return tuple(values)


def select(tab: str, script_name: str | None, script_args: Sequence | None = None,
           alwayson_scripts: Mapping | None = None) -> tuple[ScriptRun, dict[str, str]]:
    """``(ScriptRun, {field: why})``: the scripts a request names, with every argument checked against its schema.

    ``script_name`` (any case; ``None``, ``""`` or ``"None"`` selects none) must be a selectable script of
    ``tab``; ``script_args`` are its arguments by position. ``alwayson_scripts`` is ``{title: {"args": [...]}}``
    (A1111's shape); an always-on script not named there runs with its defaults, as in A1111.
    """
    errors: dict[str, str] = {}
    run = ScriptRun()
    if script_name and script_name.lower() != "none":
        script = find(tab, script_name)
        if script is None or script.alwayson:
            names = [s.title for s in available(tab, alwayson=False)]
            errors["script_name"] = (f"no selectable {tab} script named {script_name!r}; this server has "
                                     f"{names or 'none'} (GET /sdapi/v1/scripts)")
        else:
            run.script, run.args = script, _check_args(script, script_args or [], "script_args", errors)
    elif script_args:
        errors["script_args"] = "given without `script_name`"
    given = {}
    for title, entry in (alwayson_scripts or {}).items():
        script = find(tab, str(title))
        if script is None or not script.alwayson:
            errors[f"alwayson_scripts.{title}"] = (
                f"no always-on {tab} script named {title!r}" if script is None else
                f"{script.title!r} is a selectable script: use `script_name` and `script_args`")
            continue
        args = entry.get("args", []) if isinstance(entry, Mapping) else entry
        given[script.name] = _check_args(script, args, f"alwayson_scripts.{title}.args", errors)
    for script in available(tab, alwayson=True):
        run.alwayson.append((script, given.get(script.name, tuple(a.value for a in script.args))))
    return run, errors


# -- running -------------------------------------------------------------------------------------------------------


def run(p):
    """The generation of ``p``: its selected script's ``run(p, *args)`` under the request's overrides, or (no script,
    or a script that returns ``None``) the plain ``process_images(p)``. The job callable of every front door."""
    from modules import processing

    selected = getattr(p, "scripts", None)
    script = selected.script if selected is not None else None
    if script is not None:
        with temporary_opts(p.override_settings, p=p, restore=p.override_settings_restore_afterwards,
                            owner=f"script {script.title}"):
            processed = script.run(p, *selected.args)
        if processed is not None:
            return processed
    return processing.process_images(p)


def copy_for_item(p, **fields):
    """A copy of ``p`` for one generation of a script, with ``fields`` (processing fields) changed: its own lists
    and dicts (styles, extra generation parameters, warnings), no overrides of its own, the same always-on scripts
    and no selected one. A shallow copy otherwise, as A1111's scripts make (``copy.copy(p)``)."""
    names = {f.name for f in dataclasses.fields(p)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise TypeError(f"not fields of {type(p).__name__}: {unknown}")
    item = copy.copy(p)
    item.override_settings, item.override_settings_restore_afterwards = {}, True
    item.styles, item.extra_generation_params, item.warnings = list(p.styles), dict(p.extra_generation_params), []
    if p.scripts is not None:
        item.scripts = ScriptRun(alwayson=list(p.scripts.alwayson))
    for name, value in fields.items():
        setattr(item, name, value)
    return item


def prepare_item(p, *, overrides: Mapping | None = None, **fields):
    """``copy_for_item(p, **fields)`` with ``overrides`` as its own, checked as a request is (sampler and schedule
    type made canonical, ``check_inputs``, every override key, and the API's limits for an API request): raises ``ValueError`` (``RequestFieldError``,
    ``OverrideError``) naming what is wrong. A script's ``check`` calls it to refuse a bad item before queueing."""
    from modules import request_preparation

    item = copy_for_item(p, **fields)
    item.override_settings = dict(overrides or {})
    # An API request's limits hold for every generation it makes, not only for the fields it sent.
    return request_preparation.check_processing(item, errors=request_preparation.check_limits(item) if p.is_api else {})


def process_item(p, *, overrides: Mapping | None = None, **fields):
    """One generation of a script: ``process_images`` of ``prepare_item(p, overrides=..., **fields)``, with
    ``overrides`` (``{option: value}``) in effect for that generation only, nested inside the request's own.

    This is the helper for every script that generates more than once (one line, one grid cell): call it inside
    ``run``, where the request's overrides are already in effect, and each item's settings end with the item.
    """
    from modules import processing

    return processing.process_images(prepare_item(p, overrides=overrides, **fields))


def combine(p, parts: Sequence, *, images_first: Sequence = ()):
    """One ``Processed`` of several generations, as a script returns it: ``images_first`` (a grid, say), then every
    part's images, seeds, prompts and infotexts in order; warnings of ``p`` and the parts, each once."""
    from modules import processing

    warnings = list(dict.fromkeys([*p.warnings, *(w for part in parts for w in part.warnings)]))
    last = parts[-1] if parts else None

    def joined(name):
        return [x for part in parts for x in getattr(part, name)]

    all_seeds = joined("all_seeds") or [p.seed]
    all_subseeds = joined("all_subseeds") or [p.subseed]
    return processing.Processed(
        p=p, images=[*images_first, *joined("images")], seed=all_seeds[0], all_seeds=all_seeds,
        subseed=all_subseeds[0], all_subseeds=all_subseeds, all_prompts=joined("all_prompts"),
        all_negative_prompts=joined("all_negative_prompts"), infotexts=joined("infotexts"),
        sd_model_name=last and last.sd_model_name, sd_model_hash=last and last.sd_model_hash,
        sd_vae_name=last and last.sd_vae_name, clip_skip=last.clip_skip if last else 1,
        job_timestamp=last.job_timestamp if last else "0", warnings=warnings, saved_paths=joined("saved_paths"))


def save_result(p, image, text: str, seed: int) -> str | None:
    """Save an image a script made itself (not by ``process_item``: a grid, an upscale joined from tiles) with its
    parameters ``text``, when ``p`` saves samples (the ``samples_save`` option; an API request's ``save_images``),
    as ``process_images`` saves its own. Its path, or ``None``; a failed save is a warning of ``p``. Set
    ``do_not_save_samples=True`` on the items whose images are only parts of it."""
    from modules import processing

    return processing.save_sample(p, image, text, seed, "the script's image")


def interrupted() -> bool:
    """Whether the user asked to stop the running job: a script that generates several times stops before the
    next item (the item running stops at its next step)."""
    return jobs.state.interrupted


def call_alwayson(method: str, p, *extra) -> None:
    """``method`` (``before_process``, ``process``, ``postprocess``) of every always-on script of ``p``, with its
    arguments. A failing script is logged and added to ``p``'s warnings by title, the others still run; with
    strict hooks the first failure is raised after all ran (as the hooks themselves)."""
    selected = getattr(p, "scripts", None)
    if selected is None:
        return
    first = None
    for script, args in selected.alwayson:
        try:
            getattr(script, method)(p, *extra, *args)
        except Exception as e:
            message = f"always-on script {script.title!r} failed in {method}: {type(e).__name__}: {e}"
            log.exception("%s", message)
            p.warnings.append(message)
            first = first or RuntimeError(message)
            first.__cause__ = first.__cause__ or e
    if first is not None and plugins.host.strict:
        raise first


def api_info() -> list[dict]:
    """``GET /sdapi/v1/script-info``: A1111 lists each script once per tab it is on."""
    return [{"name": s.name, "is_alwayson": s.alwayson, "is_img2img": tab == "img2img",
             "args": [a.api_info() for a in s.args]} for tab in TABS for s in available(tab)]
