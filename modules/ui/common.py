"""Small pieces shared by the tabs: symbols, sampler lists, seed helpers, HTML snippets.

Nothing here builds a whole tab. Modules that the UI reads lazily (samplers, processing) are imported inside
functions so that importing ``modules.ui`` stays cheap and never fails because a generation module is broken.
"""

from __future__ import annotations

import html

RANDOM_SYMBOL = "\U0001f3b2"      # 🎲 random seed
REUSE_SYMBOL = "\u267b\ufe0f"     # ♻️ reuse the seed of the last generation
REFRESH_SYMBOL = "\U0001f504"     # 🔄 refresh a list
PASTE_SYMBOL = "\u2199\ufe0f"     # ↙️ read generation parameters from the prompt box


def sampler_names() -> list[str]:
    from modules import sd_samplers

    return [s["name"] if isinstance(s, dict) else getattr(s, "name", str(s)) for s in sd_samplers.samplers_for_api()]


def scheduler_labels() -> list[str]:
    from modules import sd_samplers

    labels = []
    for s in sd_samplers.schedulers_for_api():
        if isinstance(s, dict):
            labels.append(s.get("label") or s.get("name"))
        else:
            labels.append(getattr(s, "label", None) or getattr(s, "name", str(s)))
    return labels


def resolve_choice(value, choices: list[str]) -> str | None:
    """``value`` as one of ``choices`` (exact, then case-insensitive); ``None`` when it is not there."""
    if value in choices:
        return value
    lowered = str(value).strip().lower()
    for c in choices:
        if c.lower() == lowered:
            return c
    return None


def resolve_sampler(name: str) -> str | None:
    """The UI's sampler name for ``name`` (an A1111 name or alias), or ``None`` when unknown."""
    from modules import sd_samplers

    names = sampler_names()
    found = resolve_choice(name, names)
    if found:
        return found
    try:
        resolved = sd_samplers.resolve_sampler(name)
    except (ValueError, KeyError, LookupError):
        return None
    resolved_name = resolved if isinstance(resolved, str) else getattr(resolved, "name", None)
    return resolve_choice(resolved_name, names) if resolved_name else None


def resolve_scheduler(name: str) -> str | None:
    return resolve_choice(name, scheduler_labels())


def seed_from_generation(gen_info: dict | None, index: int | None) -> int:
    """The seed of image ``index`` of the last generation (♻️); -1 when there is none."""
    if not gen_info:
        return -1
    seeds = gen_info.get("all_seeds") or []
    if index is not None and 0 <= index < len(seeds):
        return int(seeds[index])
    seed = gen_info.get("seed")
    return int(seed) if seed is not None else -1


def esc(value) -> str:
    return html.escape(str(value))


def status_html(text: str, kind: str = "info") -> str:
    """A one-line status message; ``kind`` is info, ok, warn or error (colour only, the text says it too)."""
    colours = {"info": "#555", "ok": "#1a7f37", "warn": "#9a6700", "error": "#cf222e"}
    return (f'<div class="serena-status serena-status-{kind}" style="color:{colours.get(kind, "#555")};'
            f'padding:2px 0">{esc(text)}</div>')


def message_list_html(title: str, items, kind: str = "info") -> str:
    """A titled bullet list, escaped; empty string for no items."""
    items = list(items)
    if not items:
        return ""
    colours = {"info": "#555", "ok": "#1a7f37", "warn": "#9a6700", "error": "#cf222e"}
    lis = "".join(f"<li>{esc(i)}</li>" for i in items)
    return (f'<div class="serena-{kind}" style="color:{colours.get(kind, "#555")}"><b>{esc(title)}</b>'
            f'<ul style="margin:2px 0 4px 18px">{lis}</ul></div>')
