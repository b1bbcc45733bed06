"""The Settings tab and the quick settings row (checkpoint and VAE) at the top of the page.

Every registered option -- core and extensions' (registered in ``on_ui_settings`` or later, before the page is
built) -- gets a component from its ``OptionInfo`` (``component`` as a gradio class or its name, and
``component_args`` as a dict or a callable returning one), grouped by section, with a search box that hides what
does not match. Options of hidden sections (``section`` with no id) are not shown, as in A1111.

Apply sends every value edited on the page (compared with the page's baseline, what it last read from the
store, so a stale page never writes old values back) through ``opts.set_many``: all are validated first and
either all are stored or none is; then ``config.json`` is written atomically. The page lists what changed and,
when something was rejected, each key with its reason (the typed values stay, to be fixed). Loading the page and
opening the tab update every box the user has not edited. With ``--freeze-settings`` every component is
read-only and Apply is disabled.

Quick settings store and save the one value at once (validated the same way); a refresh button re-reads the
checkpoint and VAE folders.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from modules import jobs, settings_change, shared
from modules.option_info import OptionError, same_value
from modules.options import OptionsRejected, SettingsFrozenError, SettingsSaveError
from modules.ui import common

log = logging.getLogger("serena.ui")

QUICKSETTINGS = ("sd_model_checkpoint", "sd_vae")
FROZEN_NOTE = ("Settings are frozen (`--freeze-settings`): every value is shown read-only and nothing can be "
               "applied. Restart Serena without the flag to change them.")


def is_hidden(info) -> bool:
    section = info.section
    return section is None or section[0] is None or bool(info.do_not_save)


def component_args(info) -> dict:
    args = info.component_args
    if callable(args):
        try:
            args = args()
        except Exception as e:  # noqa: BLE001 - a broken extension option still gets a plain component
            log.warning("component_args of %r failed: %s", info.label, e)
            args = {}
    args = dict(args or {})
    if "choices" not in args and info.choices is not None:
        try:
            args["choices"] = list(info.choices() if callable(info.choices) else info.choices)
        except Exception as e:  # noqa: BLE001
            log.warning("choices of %r failed: %s", info.label, e)
    return args


def component_class(info):
    """The gradio class for an option: its declared ``component`` (class or name), else one inferred from the
    default's type (A1111's rule: bool → Checkbox, number → Number, other → Textbox)."""
    comp = info.component
    if isinstance(comp, str):
        comp = getattr(gr, comp, None)
    if comp is not None and isinstance(comp, type):
        return comp
    expected = info.expected_type()
    if expected is bool:
        return gr.Checkbox
    if expected in (int, float):
        return gr.Number
    if expected in (list, tuple) and info.fixed_choices() is not None:
        return gr.Dropdown
    return gr.Textbox


def _accepted(cls, kwargs: dict) -> dict:
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def display_value(key: str):
    """The value the page shows for ``key``: the effective one, and for an unset checkpoint the one in use."""
    value = shared.opts.get(key)
    if key == "sd_model_checkpoint" and not value:
        from modules import sd_models

        info = sd_models.default_checkpoint()
        return info.title if info is not None else None
    return value


def to_component_value(key: str, info, cls) -> Any:
    value = display_value(key)
    if cls is gr.Textbox and isinstance(value, (list, dict)):
        return json.dumps(value)
    if cls is gr.Textbox and value is None:
        return ""
    return value


def make_component(key: str, info, *, interactive: bool, elem_prefix: str = "setting_", label=None, **extra):
    """A gradio component for option ``key`` showing its current value."""
    cls = component_class(info)
    args = component_args(info)
    if cls is gr.Dropdown and info.expected_type() in (list, tuple):
        args.setdefault("multiselect", True)
    if cls is gr.Number and info.expected_type() is int:
        args.setdefault("precision", 0)
    if cls is gr.Slider and info.expected_type() is int:
        args.setdefault("precision", 0)
    comment = " ".join(c for c in (info.comment_before, info.comment_after) if c).strip()
    if cls is gr.Number:
        # Bounds are checked by the options store on Apply, so an out-of-range value is listed with its reason
        # together with every other rejected value (gradio would raise a pop-up for the first one only).
        lo, hi = args.pop("minimum", None), args.pop("maximum", None)
        if lo is not None or hi is not None:
            bounds = f"from {lo}" if hi is None else f"up to {hi}" if lo is None else f"{lo} to {hi}"
            comment = f"{comment} ({bounds})".strip()
    kwargs = dict(args)
    kwargs.update(label=label or info.label or key, value=to_component_value(key, info, cls),
                  elem_id=f"{elem_prefix}{key}", interactive=interactive)
    if comment:
        kwargs.setdefault("info", comment)
    if cls is gr.Dropdown and kwargs.get("value") is not None and "choices" in kwargs:
        values = kwargs["value"] if isinstance(kwargs["value"], list) else [kwargs["value"]]
        if any(v not in kwargs["choices"] for v in values):
            kwargs["allow_custom_value"] = True
    kwargs.update(extra)
    try:
        return cls(**_accepted(cls, kwargs))
    except Exception as e:  # noqa: BLE001 - an extension's odd arguments must not break the page
        log.warning("setting %s: %s(%s) failed (%s); showing a text box", key, cls.__name__, kwargs, e)
        return gr.Textbox(label=label or info.label or key, value=str(shared.opts.get(key)),
                          elem_id=f"{elem_prefix}{key}", interactive=interactive)


def from_component_value(key: str, info, value: Any) -> Any:
    """A component's value as the option's type (numbers from sliders, JSON typed into a text box...)."""
    expected = info.expected_type()
    if isinstance(value, str) and expected not in (str, None):
        return shared.opts.cast_value(key, value)
    if expected is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if expected is str and value is None and info.default is not None:
        return ""
    return value


@dataclass
class Section:
    id: str
    label: str
    keys: list = field(default_factory=list)
    container: Any = None


@dataclass
class SettingsPage:
    components: dict = field(default_factory=dict)   # key -> component, in page order
    sections: list = field(default_factory=list)
    search: Any = None
    apply: Any = None
    reload: Any = None
    result: Any = None
    apply_event: Any = None
    baseline: Any = None      # gr.State: what the page showed when it last read the store

    def refresh(self, *args):
        """Event handler: ``(*component values, baseline)`` → updates that follow the store (see
        ``current_updates``)."""
        *shown, baseline = args
        return current_updates(self, shown, baseline)

    def keys(self) -> list:
        return list(self.components)


def sections_in_order() -> list[Section]:
    sections: dict = {}
    for key, info in shared.opts.data_labels.items():
        if is_hidden(info):
            continue
        sid, label = info.section[0], info.section[1]
        sections.setdefault(sid, Section(sid, label)).keys.append(key)
    return list(sections.values())


def matches(query: str, key: str, info, section: Section) -> bool:
    q = (query or "").strip().lower()
    if not q:
        return True
    haystack = " ".join(str(x) for x in (key, info.label, section.label, info.comment_before, info.comment_after,
                                          info.infotext or "")).lower()
    return all(word in haystack for word in q.split())


def apply_values(keys: list, values: list, baseline: dict | None = None) -> tuple[dict, dict]:
    """Store the values the user changed (all or none) and save. Returns ``(changes, errors)``.

    A value counts as changed when it differs from ``baseline`` -- what the page showed when it last read the
    store -- and from the stored value. So a page opened before someone else (the API, another browser) changed
    a setting does not write the old value back on Apply. Without a baseline, the stored values are the baseline.
    ``changes`` maps key → ``(old, new)``; ``errors`` maps key → reason (then nothing was stored).
    """
    opts = shared.opts
    baseline = baseline or {}
    wanted: dict = {}
    old: dict = {}
    for key, value in zip(keys, values):
        info = opts.data_labels.get(key)
        if info is None:
            continue
        value = from_component_value(key, info, value)
        current = opts.get(key)
        if key in baseline and same_value(value, from_component_value(key, info, baseline[key])):
            continue  # not edited on this page
        if same_value(value, current) or same_value(value, display_value(key)):
            continue  # unchanged (an unset checkpoint shows the default one: showing it is not choosing it)
        wanted[key], old[key] = value, current
    if not wanted:
        return {}, {}
    try:
        settings_change.change_settings(wanted)  # all or nothing, saved, under the queue lock (as POST /options)
    except SettingsFrozenError as e:
        return {}, {k: e.reason for k in wanted}
    except OptionsRejected as e:
        return {}, dict(e.errors)
    except OptionError as e:
        return {}, {e.key: e.reason}
    except SettingsSaveError as e:
        return {}, {"config.json": f"{e}; nothing was changed"}
    return {k: (old[k], opts.get(k)) for k in wanted}, {}


def result_html(changes: dict, errors: dict) -> str:
    if not changes and not errors:
        return common.status_html("Nothing changed", "info")
    out = ""
    if changes:
        out += common.message_list_html(
            f"Saved {len(changes)} change{'s' if len(changes) != 1 else ''} to config.json",
            [f"{_label(k)}: {_short(a)} \u2192 {_short(b)}" for k, (a, b) in changes.items()], "ok")
    if errors:
        title = "Not applied (nothing was stored)" if not changes else "Problems"
        out += common.message_list_html(title, [f"{_label(k)} ({k}): {v}" for k, v in errors.items()], "error")
    return out


def _label(key: str) -> str:
    info = shared.opts.data_labels.get(key)
    return (info.label if info is not None and info.label else key)


def _short(value) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def stored_values(page: SettingsPage) -> dict:
    """What each component shows for the stored settings (the page's baseline)."""
    return {key: to_component_value(key, shared.opts.data_labels[key], type(comp))
            for key, comp in page.components.items()}


def _choices_update(comp, info):
    if isinstance(comp, (gr.Dropdown, gr.Radio)) and (callable(info.component_args) or callable(info.choices)):
        return component_args(info).get("choices")
    return None


def current_updates(page: SettingsPage, shown: list | None = None, baseline: dict | None = None) -> list:
    """Updates that show the stored settings again, then the new baseline.

    With the values the browser ``shown`` and the ``baseline`` it loaded, a component is updated only when the
    stored value differs from what it shows and the user has not edited it; otherwise it is left alone (no
    update races a user typing). Without them (Reload), every component is set, with fresh choices for lists
    that come from a function (checkpoints, VAEs).
    """
    stored = stored_values(page)
    out = []
    for i, (key, comp) in enumerate(page.components.items()):
        info = shared.opts.data_labels[key]
        value = stored[key]
        if shown is None:
            choices = _choices_update(comp, info)
            out.append(gr.update(value=value, choices=choices) if choices is not None else gr.update(value=value))
            continue
        here = shown[i]
        edited = baseline is not None and key in baseline and not same_value(here, baseline[key])
        out.append(gr.skip() if same_value(here, value) or edited else gr.update(value=value))
    return out + [stored]


def create_tab() -> SettingsPage:
    """Build the settings page inside the current ``gr.Tab``."""
    opts = shared.opts
    page = SettingsPage()
    interactive = not opts.frozen
    if opts.frozen:
        gr.Markdown(FROZEN_NOTE, elem_id="settings_frozen_note")
    with gr.Row(equal_height=True):
        page.search = gr.Textbox(label="Search settings", placeholder="Search by name, key or section",
                                 elem_id="settings_search", scale=4, show_label=False)
        page.apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit", scale=1,
                               interactive=interactive)
        page.reload = gr.Button("Reload", elem_id="settings_reload", scale=0, min_width=80)
    page.result = gr.HTML("", elem_id="settings_result")
    for section in sections_in_order():
        with gr.Accordion(section.label or section.id, open=True, elem_id=f"settings_section_{section.id}") as acc:
            section.container = acc
            for key in section.keys:
                page.components[key] = make_component(key, opts.data_labels[key], interactive=interactive)
        page.sections.append(section)
    keys = page.keys()
    comps = list(page.components.values())

    page.baseline = gr.State(stored_values(page))

    def apply(*args):
        *values, baseline = args
        changes, errors = apply_values(keys, values, baseline)
        if errors and not changes:
            # Nothing was stored: keep what the user typed so the refused values can be fixed.
            return [result_html(changes, errors)] + [gr.skip()] * len(comps) + [gr.skip()]
        return [result_html(changes, errors)] + current_updates(page)

    page.apply_event = page.apply.click(apply, inputs=comps + [page.baseline],
                                        outputs=[page.result] + comps + [page.baseline],
                                        api_visibility="undocumented", show_progress="hidden")
    page.reload.click(lambda: [common.status_html("Showing the stored values", "info")] + current_updates(page),
                      outputs=[page.result] + comps + [page.baseline], api_visibility="undocumented",
                      show_progress="hidden")

    def search(query):
        comp_updates, section_updates = [], []
        for section in page.sections:
            shown = 0
            for key in section.keys:
                ok = matches(query, key, opts.data_labels[key], section)
                shown += ok
                comp_updates.append(gr.update(visible=ok))
            section_updates.append(gr.update(visible=shown > 0))
        return comp_updates + section_updates

    ordered = [page.components[k] for s in page.sections for k in s.keys]
    page.search.change(search, inputs=[page.search], outputs=ordered + [s.container for s in page.sections],
                      queue=False, trigger_mode="always_last", api_visibility="undocumented", show_progress="hidden")
    return page


# -- quick settings ---------------------------------------------------------------------------------------------

def checkpoint_choices(titles: list[str]) -> list[tuple[str, str]]:
    """Dropdown entries ``(label, title)`` for checkpoint ``titles``; the label marks a file whose family Serena
    cannot run (told from its header once, ``sd_models.listed_family``), so it is seen before it is chosen."""
    from modules import sd_models

    listed = {c.title: c for c in sd_models.list_checkpoints()}
    choices = []
    for title in titles:
        family = sd_models.listed_family(listed[title]) if title in listed else None
        if family is None or family.runnable:
            choices.append((title, title))
        else:
            why = "cannot run yet" if family.kind == "checkpoint" else "not a checkpoint"
            choices.append((f"{title} ({family.label}: {why})", title))
    return choices


def quick_choices(key: str) -> list:
    """The dropdown entries of quick setting ``key``: values, or ``(label, value)`` pairs for the checkpoints."""
    info = shared.opts.data_labels[key]
    choices = list(component_args(info).get("choices") or [])
    return checkpoint_choices(choices) if key == "sd_model_checkpoint" else choices


def quick_value(key: str):
    return display_value(key)


def set_quick(key: str, value) -> tuple[Any, str]:
    """Store and save one quick setting. Returns ``(value now shown, status html or None when unchanged)``."""
    opts = shared.opts
    if opts.frozen:
        return quick_value(key), common.status_html(FROZEN_NOTE.replace("`", ""), "error")
    if value is None or same_value(value, opts.get(key)) or same_value(value, display_value(key)):
        return quick_value(key), None  # nothing to do (gradio may send the same choice twice): keep the message
    try:
        settings_change.change_settings({key: value})
    except OptionsRejected as e:
        return quick_value(key), common.status_html(f"{_label(key)} not changed: {e.errors[key]}", "error")
    except (OptionError, SettingsSaveError) as e:
        return quick_value(key), common.status_html(f"{_label(key)} not changed: {getattr(e, 'reason', e)}", "error")
    return quick_value(key), common.status_html(f"{_label(key)} set to {quick_value(key)} and saved", "ok")


def create_quicksettings() -> tuple[dict, Any, Any]:
    """The row at the top of the page: ``({key: dropdown}, refresh button, status html)``."""
    opts = shared.opts
    comps = {}
    with gr.Row(elem_id="quicksettings", equal_height=True):
        for key in QUICKSETTINGS:
            info = opts.data_labels[key]
            choices = quick_choices(key)
            value = quick_value(key)
            comps[key] = gr.Dropdown(label=info.label, choices=choices, value=value, elem_id=f"quick_{key}",
                                     interactive=not opts.frozen,
                                     allow_custom_value=value not in [c[1] if isinstance(c, tuple) else c
                                                                      for c in choices],
                                     scale=3 if key == "sd_model_checkpoint" else 2, min_width=200)
        refresh = gr.Button(common.REFRESH_SYMBOL, elem_id="quick_refresh", size="sm", scale=0, min_width=48)
        status = gr.HTML(elem_id="quicksettings_status",
                         value=common.status_html("Settings are frozen (--freeze-settings)", "warn")
                         if opts.frozen else "")
    return comps, refresh, status


def _quick_handler(key: str, has_mirror: bool):
    def changed(value):
        shown, message = set_quick(key, value)
        out = [shown, gr.skip() if message is None else message]
        if has_mirror:
            out.append(display_value(key))
        return out
    return changed


def wire_quicksettings(comps: dict, refresh, status, page: SettingsPage | None):
    """Connect the quick settings; a change also shows up on the settings page's component for the same key."""
    from modules import sd_models

    mirrors = {k: page.components[k] for k in comps if page is not None and k in page.components}
    for key, comp in comps.items():
        outputs = [comp, status] + ([mirrors[key]] if key in mirrors else [])
        comp.input(_quick_handler(key, key in mirrors), inputs=[comp], outputs=outputs,
                   api_visibility="undocumented", show_progress="hidden")

    keys = list(comps)
    mirror_keys = list(mirrors)

    def do_refresh():
        with jobs.queue_lock:
            sd_models.refresh_checkpoints()
        out = [gr.update(choices=quick_choices(k), value=quick_value(k)) for k in keys]
        out += [gr.update(choices=quick_choices(k)) for k in mirror_keys]  # the settings page's lists too
        n = len(sd_models.list_checkpoints())
        return out + [common.status_html(f"Found {n} checkpoint{'s' if n != 1 else ''} and "
                                         f"{len(quick_choices('sd_vae')) - 2} VAE file(s)", "info")]

    refresh.click(do_refresh, outputs=[comps[k] for k in keys] + [mirrors[k] for k in mirror_keys] + [status],
                  api_visibility="undocumented", show_progress="hidden")
