"""Pasted generation parameters: filling the form, and the "Override settings" field.

A1111 behaviour, kept: parameters of a pasted infotext that belong to a form field (prompt, steps, size...) fill
that field; those that name a *setting* (``Clip skip: 2``, ``VAE: ...``) and differ from the current value
become entries ``"Label: value"`` of a visible, removable multiselect. The checkpoint (``Model hash``) is not
pasted, as in A1111 by default: pasting never switches models. The entries left there when Generate is
clicked become ``p.override_settings`` of that generation only: the stored settings (and the settings page) never
change because of them.

Which parameters fill which field, and which settings become entries, is decided by the preparation the API shares
(``request_preparation.paste_infotext``); this module only turns that into form values and entries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from modules import img2img_inputs, request_preparation, shared

# The form component each pasted processing field fills; the form has no variation seed fields. The inpainting
# fields exist in the img2img form only.
_COMPONENTS = {"prompt": "prompt", "negative_prompt": "negative_prompt", "steps": "steps", "sampler_name": "sampler",
               "scheduler": "scheduler", "cfg_scale": "cfg_scale", "seed": "seed", "width": "width",
               "height": "height", "batch_size": "batch_size", "denoising_strength": "denoising_strength",
               **{name: name for name in ("mask_blur", "inpainting_mask_invert", "inpainting_fill",
                                          "inpaint_full_res", "inpaint_full_res_padding")}}
# (infotext key, processing field, form component), in the shared paste order.
FORM_FIELDS = tuple((key, name, _COMPONENTS[name]) for key, name in request_preparation.PASTE_FIELDS
                    if name in _COMPONENTS)
INT_FIELDS = {"steps", "seed", "width", "height", "batch_size", "mask_blur", "inpaint_full_res_padding"}
FLOAT_FIELDS = {"cfg_scale", "denoising_strength"}
# Radio buttons showing A1111's labels: the pasted index (or bool) back to its label.
LABELS = {"inpainting_mask_invert": img2img_inputs.MASK_MODES, "inpainting_fill": img2img_inputs.MASKED_CONTENT,
          "inpaint_full_res": img2img_inputs.INPAINT_AREAS}
IMG2IMG_ONLY = {"denoising_strength", *LABELS, "mask_blur", "inpaint_full_res_padding"}


@dataclass
class Pasted:
    """What a pasted infotext turns into: field values, override entries, and entries that could not apply."""

    fields: dict = field(default_factory=dict)
    overrides: list = field(default_factory=list)
    rejected: list = field(default_factory=list)
    params: dict = field(default_factory=dict)
    styles: list | None = None  # the styles found in the prompts (``modules.styles.from_infotext``); None: leave them


def looks_like_infotext(text: str) -> bool:
    """Whether ``text`` carries generation parameters (A1111: a last line with ``Steps:``)."""
    if not text or not text.strip():
        return False
    last = text.strip().splitlines()[-1]
    return "Steps:" in last or "Seed:" in last or "Sampler:" in last


def _field_value(name: str, raw: Any):
    from modules.ui import common

    if name in INT_FIELDS:
        return int(float(raw))
    if name in FLOAT_FIELDS:
        return float(raw)
    if name in LABELS:
        if isinstance(raw, str):  # a label A1111 never writes (the known ones arrive as their index)
            raise ValueError(f"{raw!r} is not one of {list(LABELS[name])}")
        return LABELS[name][int(raw)]
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


def from_infotext(text: str, mode: str = "txt2img") -> Pasted:
    """Turn a pasted infotext into field values and override entries (only settings that differ)."""
    prepared = request_preparation.paste_infotext(text)
    pasted = Pasted(params=prepared.params, styles=prepared.fields.get("styles"))
    for key, name, component in FORM_FIELDS:
        if name not in prepared.fields or (component in IMG2IMG_ONLY and mode != "img2img"):
            continue
        try:
            pasted.fields[component] = _field_value(component, prepared.fields[name])
        except (TypeError, ValueError) as e:
            pasted.rejected.append(f"{key}: {e}")
    for key, reason in {**prepared.unreadable, **prepared.rejected}.items():
        label = shared.opts.data_labels[key].infotext
        pasted.rejected.append(f"{label}: {prepared.params[label]} ({reason})")
    pasted.overrides = [entry(key, value) for key, value in prepared.overrides.items()]
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
