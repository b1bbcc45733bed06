"""word-filter: remove unwanted words from prompts. The example extension of ``docs/extensions/writing.md``.

* ``on_ui_settings`` registers the option ``word_filter_words`` (comma-separated words; empty = off).
* ``on_opts_override_enter`` keeps the compiled pattern in step with a per-generation override of that option:
  built once when the override takes effect, kept on that override (an ``OverrideState``), gone when it ends.
* ``on_process`` removes the words from the prompt and records them in the generation parameters.
"""

from __future__ import annotations

import re

from modules.extensions_api import OptionInfo, OverrideState, hookimpl, opts

OPTION = "word_filter_words"

# -- start derived-state --
# The pattern of each active override of OPTION, kept on that override: nested overrides, threads and async
# tasks each see their own, and it is gone when the override ends.
_pattern: OverrideState[re.Pattern | None] = OverrideState("word-filter pattern")
_stored: dict = {}  # the stored value's pattern, rebuilt when the stored value changes


def compile_words(text: str) -> re.Pattern | None:
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words:
        return None
    return re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


def current_pattern() -> re.Pattern | None:
    """The pattern for the effective value: the innermost override of OPTION, else the stored value."""
    try:
        return _pattern.get()
    except LookupError:  # no active override of OPTION
        pass
    text = opts.get(OPTION, "")
    if text not in _stored:
        _stored.clear()
        _stored[text] = compile_words(text)
    return _stored[text]


@hookimpl
def on_opts_override_enter(overrides):
    if OPTION in overrides:
        _pattern.set(compile_words(overrides[OPTION]))
# -- end derived-state --


# -- start options --
@hookimpl
def on_ui_settings():
    opts.add_option(OPTION, OptionInfo("", "Words to remove from prompts (comma-separated)",
                                       section=("word-filter", "Word filter")))
# -- end options --


# -- start process --
@hookimpl
def on_process(p):
    pattern = current_pattern()
    if pattern is None:
        return
    removed = sorted({m.group(0).lower() for m in pattern.finditer(p.prompt)})
    parts = [pattern.sub("", part).strip() for part in p.prompt.split(",")]
    p.prompt = ", ".join(part for part in parts if part)
    if removed:
        p.extra_generation_params["Filtered words"] = " ".join(removed)
# -- end process --
