"""A1111's "parameters" text (infotext): writing it, reading it back, and turning it into option overrides.

The text is the prompt, an optional ``Negative prompt: ...`` line, and a last line of ``Key: value`` pairs::

    a cat
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 64x64, Model: name

A value holding ``,``, ``:``, ``"``, a line break, or white space at either end, or an empty value, is written
as a JSON string, so that ``parse_generation_parameters(create_infotext(p, n, params))`` gives every value back.
A1111 quotes only on ``,``, ``:`` and line breaks; both read each other's text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from modules.option_info import cast_text

__all__ = [
    "IMPLIED_DEFAULTS",
    "create_infotext",
    "infotext_to_overrides",
    "parse_generation_parameters",
    "quote",
    "unquote",
]

# Pieces of a "Key: value" pair (see ``_find_params``). A key is looked for only from the start of a run of
# key characters, and the possessive quantifiers never give back what they matched: both keep it linear.
_KEY = re.compile(r"(?<![\w \-/])[ \-/]*+(\w[\w \-/]++):")
_SPACES = re.compile(r"\s*+")
_QUOTED_BODY = re.compile(r'(?:[^\\"]++|\\.)*+')
_VALID_KEY = re.compile(r"\w[\w \-/]*[\w\-/]")
_IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")
_NEGATIVE_PREFIX = "Negative prompt:"
_RESERVED_KEYS = ("Prompt", "Negative prompt")

IMPLIED_DEFAULTS: dict[str, str] = {
    # CLIP_stop_at_last_layers defaults to 1; writers leave "Clip skip" out at 1 (A1111 does the same).
    "Clip skip": "1",
    # randn_source defaults to "CPU" in Serena. A1111's default, and so its implied value, is "GPU": a writer
    # that wants A1111 to read its text right writes "RNG" even when it is "CPU".
    "RNG": "CPU",
    # eta_noise_seed_delta defaults to 0 and A1111 writes "ENSD" only when it is not 0 (A1111 implies nothing,
    # so pasting its text kept whatever delta was set).
    "ENSD": "0",
    # The API's and the UI's default schedule type (A1111 implies the same).
    "Schedule type": "Automatic",
}
"""Values that a missing key stands for: writers leave a key out when it has its default value."""


def quote(value: Any) -> str:
    """``str(value)``, as a JSON string when it would not read back unchanged from a parameters line.

    Args:
        value (`Any`):
            The parameter value; anything but a ``str`` goes through ``str()`` first.

    Returns:
        `str`: the text to write after ``Key: ``.
    """
    text = str(value)
    if not text or text != text.strip() or any(c in text for c in ',:"\n'):
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text: str) -> str:
    """Undo ``quote``: a value in double quotes is read as a JSON string; anything else is returned as is.

    Args:
        text (`str`):
            The value as it stands in a parameters line.

    Returns:
        `str`: the value.
    """
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def create_infotext(prompt: str | None, negative_prompt: str | None, params: Mapping[str, Any]) -> str:
    """Write the parameters text of one image.

    Args:
        prompt (`str` or `None`):
            The prompt as the user wrote it; `None` is the empty prompt.
        negative_prompt (`str` or `None`):
            The negative prompt; the ``Negative prompt:`` line is left out when it is empty or `None`.
        params (`Mapping[str, Any]`):
            ``{key: value}`` in the order to write them (``Steps``, ``Sampler``, ...). Entries whose value is
            `None` are left out; other values are written with ``str()`` (quoted when needed, see ``quote``).
            Keys must match A1111's key pattern (a word character, then word characters, spaces, ``-`` or ``/``,
            not ending in a space, at least two characters) and may not be ``Prompt`` or ``Negative prompt``.

    Returns:
        `str`: the text, without a trailing line break. It reads back with ``parse_generation_parameters``
        when ``params`` has at least three entries that are not `None` (a last line with fewer ``Key: value``
        pairs is read as part of the prompt, as in A1111).
    """
    # 1. Check inputs
    for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"`{name}` must be a str or None, got {type(value).__name__} {value!r}")
    if not isinstance(params, Mapping):
        raise TypeError(f"`params` must be a mapping of key to value, got {type(params).__name__}")
    bad = [k for k in params if not isinstance(k, str) or not _VALID_KEY.fullmatch(k) or k in _RESERVED_KEYS]
    if bad:
        raise ValueError(
            f"`params` has keys that cannot be read back from infotext: {bad!r}. A key starts with a letter, digit "
            f"or '_', goes on with those, spaces, '-' or '/', does not end in a space, has at least two characters, "
            f"and is not {' or '.join(_RESERVED_KEYS)}.")

    # 2. Assemble the lines
    params_line = ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    negative_line = f"\n{_NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt or ''}{negative_line}\n{params_line}".strip()


def parse_generation_parameters(text: str, skip_fields: Iterable[str] = ()) -> dict[str, str]:
    """Read a parameters text (Serena's or A1111's) into ``{key: value}``.

    The last line holds the parameters when it has at least three ``Key: value`` pairs; otherwise it belongs
    to the prompt. Lines before it are the prompt, up to a line starting with ``Negative prompt:``; that line and
    the ones after it are the negative prompt. Each prompt line is stripped of surrounding white space.

    Args:
        text (`str`):
            The text, as stored in a PNG's ``parameters`` chunk or pasted by a user.
        skip_fields (`Iterable[str]`, *optional*, defaults to `()`):
            Keys to leave out of the result (A1111's "infotext_skip_pasting").

    Returns:
        `dict[str, str]`: ``Prompt``, ``Negative prompt`` and every parameter as a string, quoted values
        unquoted. A value ``WxH`` (``Size: 512x768``) also gives ``Size-1`` (``"512"``) and ``Size-2``
        (``"768"``), unless the text has that key itself. Keys missing from the text get the values of
        ``IMPLIED_DEFAULTS``.
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a str, got {type(text).__name__}")

    # 1. Split the parameters line from the prompt lines
    *lines, last_line = text.strip().split("\n")
    pairs = _find_params(last_line)
    if len(pairs) < 3:
        lines.append(last_line)
        pairs = []

    # 2. Prompt and negative prompt
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    target = prompt_lines
    for line in lines:
        line = line.strip()
        if target is prompt_lines and line.startswith(_NEGATIVE_PREFIX):
            target = negative_lines
            line = line[len(_NEGATIVE_PREFIX):].strip()
        target.append(line)

    # 3. Parameters
    result: dict[str, str] = {}
    for key, value in pairs:
        value = unquote(value)
        result[key] = value
        size = _IMAGE_SIZE.match(value)
        if size is not None:
            result.setdefault(f"{key}-1", size.group(1))
            result.setdefault(f"{key}-2", size.group(2))
    result["Prompt"] = "\n".join(prompt_lines)
    result["Negative prompt"] = "\n".join(negative_lines)

    # 4. Implied defaults, then skipped fields
    for key, value in IMPLIED_DEFAULTS.items():
        result.setdefault(key, value)
    for key in skip_fields:
        result.pop(key, None)
    return result


def _find_params(line: str) -> list[tuple[str, str]]:
    r"""The ``(key, value)`` pairs of a parameters line, value as written (quotes kept), in linear time.

    Gives exactly what A1111's ``re.findall`` of ``\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)``
    gives: a key is a word character, then word characters, spaces, ``-`` or ``/`` (two characters at least) up to
    a ``:``; a value is a JSON-style string followed by a comma or the end, else it runs to the next comma. That
    regex is quadratic (each position of a long run without a ``:`` is tried again, and holds the GIL while it
    does, freezing the server), so the scan is spelled out.
    """
    pairs: list[tuple[str, str]] = []
    pos, n = 0, len(line)
    while True:
        # 1. The key: the first run of word characters, spaces, "-" and "/" that holds a word character and ends
        # in ":". The regex tries every position; a run without its ":" fails at each of them, but a key found
        # inside such a run would end at the same character. Every search starts at 0 or just after a ",", so
        # the run boundaries it sees are the regex's too.
        found = _KEY.search(line, pos)
        if found is None:
            return pairs
        key, colon = found.group(1), found.end() - 1

        # 2. The value: a quoted string that ends the pair, else everything up to the next comma
        value_start = _SPACES.match(line, colon + 1).end()
        if line.startswith('"', value_start):
            close = _QUOTED_BODY.match(line, value_start + 1).end()
            after = line[close + 1:close + 2]
            if line.startswith('"', close) and (after in ("", ",") or (after == "\n" and close + 2 == n)):
                pairs.append((key, line[value_start:close + 1]))
                pos = close + 2
                continue
        comma = line.find(",", value_start)
        end = n if comma == -1 else comma
        pairs.append((key, line[value_start:end]))
        pos = end + 1


def infotext_to_overrides(params: Mapping[str, Any], options_templates: Mapping[str, Any]) -> dict[str, Any]:
    """The option values a parameters text asks for, keyed by option name.

    Every option whose ``OptionInfo.infotext`` label is in ``params`` gives one entry (``Clip skip`` →
    ``CLIP_stop_at_last_layers``, ``Model hash`` → ``sd_model_checkpoint``, ``VAE`` → ``sd_vae``, ``ENSD`` →
    ``eta_noise_seed_delta``, ``RNG`` → ``randn_source``). A string is converted to the option's type (``"2"``
    → ``2`` for an int option; ``true``/``false`` for a bool); any other value is kept. Whether the value is
    allowed (range, choices, a known checkpoint) is left to the options store, which checks every override.

    Args:
        params (`Mapping[str, Any]`):
            What ``parse_generation_parameters`` returned (or any ``{infotext label: value}``).
        options_templates (`Mapping[str, OptionInfo]`):
            The registered options, e.g. ``shared.opts.data_labels``.

    Returns:
        `dict[str, Any]`: ``{option name: value}``.

    Raises:
        `ValueError`: when a value cannot be converted; the message lists every such label, its option and
        value.
    """
    overrides: dict[str, Any] = {}
    errors: list[str] = []
    for key, info in options_templates.items():
        label = getattr(info, "infotext", None)
        if not label or label not in params:
            continue
        value = params[label]
        if not isinstance(value, str):
            overrides[key] = value
            continue
        try:
            overrides[key] = cast_text(info, value)
        except ValueError as e:
            errors.append(f"{label!r} (option {key!r}): {e}")
    if errors:
        raise ValueError("infotext values that do not fit their options: " + "; ".join(errors))
    return overrides
