"""Pasted generation parameters: filling the form, and the "Override settings" field.

A1111 behaviour, kept: parameters of a pasted infotext that belong to a form field (prompt, steps, size...) fill
that field; those that name a *setting* (``Clip skip: 2``, ``Model hash: ...``) and differ from the current value
become entries ``"Label: value"`` of a visible, removable multiselect. The entries left there when Generate is
clicked become ``p.override_settings`` of that generation only: the stored settings (and the settings page) never
change because of them.

Parsing goes through ``modules.infotext`` (``parse_generation_parameters``, ``infotext_to_overrides``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from modules import shared

log = logging.getLogger("serena.ui")

# (infotext key, form field) for every parameter that fills a field rather than a setting. "Size" arrives split
# into "Size-1" (width) and "Size-2" (height), as A1111's parser does.
FORM_FIELDS = (
    ("Prompt", "prompt"),
    ("Negative prompt", "negative_prompt"),
    ("Steps", "steps"),
    ("Sampler", "sampler"),
    ("Schedule type", "scheduler"),
    ("CFG scale", "cfg_scale"),
    ("Seed", "seed"),
    ("Size-1", "width"),
    ("Size-2", "height"),
    ("Batch size", "batch_size"),
    ("Denoising strength", "denoising_strength"),
)
INT_FIELDS = {"steps", "seed", "width", "height", "batch_size"}
FLOAT_FIELDS = {"cfg_scale", "denoising_strength"}


@dataclass
class Pasted:
    """What a pasted infotext turns into: field values, override entries, and entries that could not apply."""

    fields: dict = field(default_factory=dict)
    overrides: list = field(default_factory=list)
    rejected: list = field(default_factory=list)
    params: dict = field(default_factory=dict)


def looks_like_infotext(text: str) -> bool:
    """Whether ``text`` carries generation parameters (A1111: a last line with ``Steps:``)."""
    if not text or not text.strip():
        return False
    last = text.strip().splitlines()[-1]
    return "Steps:" in last or "Seed:" in last or "Sampler:" in last


def parse(text: str) -> dict:
    from modules import infotext

    return dict(infotext.parse_generation_parameters(text))


def _field_value(name: str, raw: Any):
    from modules.ui import common

    if name in INT_FIELDS:
        return int(float(raw))
    if name in FLOAT_FIELDS:
        return float(raw)
    if name == "sampler":
        found = common.resolve_sampler(str(raw))
        if found is None:
            raise ValueError(f"unknown sampler {raw!r}")
        return found
    if name == "scheduler":
        found = common.resolve_scheduler(str(raw))
        if found is None:
            raise ValueError(f"unknown schedule type {raw!r}")
        return found
    return str(raw)


def option_label(key: str) -> str:
    """The label an override entry shows for option ``key``: its infotext name (A1111), else its settings label."""
    info = shared.opts.data_labels.get(key)
    if info is None:
        return key
    return info.infotext or info.label or key


def _label_map() -> dict[str, str]:
    """Every label an entry may start with -> option key (infotext names first, then settings labels, keys)."""
    mapping: dict[str, str] = {}
    for key, info in shared.opts.data_labels.items():
        mapping.setdefault(key, key)
        if info.label:
            mapping.setdefault(info.label, key)
    for key, info in shared.opts.data_labels.items():
        if info.infotext:
            mapping[info.infotext] = key
    return mapping


def format_value(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def entry(key: str, value: Any) -> str:
    return f"{option_label(key)}: {format_value(value)}"


def _effective_for_compare(key: str):
    value = shared.opts.get(key)
    if key == "sd_model_checkpoint" and not value:
        from modules import sd_models

        try:
            return sd_models.effective_checkpoint().title
        except ValueError:
            return None
    return value


def _normalise(key: str, value: Any):
    """``value`` checked as an override of ``key``: ``(normalised, None)`` or ``(None, reason)``."""
    result = shared.opts.check({key: shared.opts.cast_value(key, value)}, for_override=True)
    if result.errors:
        return None, next(iter(result.errors.values()))
    return result.values[key], None


def from_infotext(text: str, mode: str = "txt2img") -> Pasted:
    """Turn a pasted infotext into field values and override entries (only settings that differ)."""
    from modules import infotext

    pasted = Pasted()
    params = parse(text)
    pasted.params = params
    for key, name in FORM_FIELDS:
        if key not in params or (params[key] in (None, "") and name not in ("prompt", "negative_prompt")):
            continue
        if name == "denoising_strength" and mode != "img2img":
            continue
        try:
            pasted.fields[name] = _field_value(name, params[key])
        except (TypeError, ValueError) as e:
            pasted.rejected.append(f"{key}: {e}")
    overrides: dict = {}
    for key, info in shared.opts.data_labels.items():
        # One option at a time, so that one value that does not fit rejects only its own entry.
        if not info.infotext or info.infotext not in params:
            continue
        try:
            overrides.update(infotext.infotext_to_overrides({info.infotext: params[info.infotext]}, {key: info}))
        except ValueError as e:
            pasted.rejected.append(f"{info.infotext}: {params[info.infotext]} ({e})")
    for key, value in overrides.items():
        normalised, reason = _normalise(key, value)
        if reason is not None:
            pasted.rejected.append(f"{option_label(key)}: {value} ({reason})")
            continue
        if normalised == _effective_for_compare(key):
            continue
        pasted.overrides.append(entry(key, value))
    return pasted


def overrides_from_entries(entries) -> dict:
    """``{option key: value}`` from the entries left in the field; ``ValueError`` for an unreadable entry.

    Values are cast from text to the option's type here; whether they fit is decided, all keys at once, when the
    generation enters them (``temporary_opts``), so the page shows the same error list the API gives.
    """
    mapping = _label_map()
    result: dict = {}
    for item in entries or []:
        label, sep, value = str(item).partition(":")
        label, value = label.strip(), value.strip()
        key = mapping.get(label)
        if not sep or key is None:
            raise ValueError(f"override entry {item!r} is not 'Setting: value' for a known setting")
        result[key] = shared.opts.cast_value(key, value)
    return result
