"""How an option is declared (``OptionInfo``) and whether a value fits it.

``check_value`` is the one function that decides whether a value fits an option; ``set``, ``load``, the API and
the override seam all use it. ``same_value`` is the one comparison that decides whether a sent value is a change
(``True == 1`` in Python, but a boolean is never the same setting as a number). ``cast_text`` reads a value typed
as text (CLI ``--override``, pasted infotext).

Standard library only: the store (``modules.options``), the declarations (``modules.shared_options``) and
extensions all build on this.
"""

from __future__ import annotations

import json
import math
from typing import Any


class OptionError(ValueError):
    """A value that does not fit an option, or an option that may not be changed this way."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason



class OptionInfo:
    """How one option looks, what it accepts, and how it maps to infotext.

    The signature follows A1111's ``OptionInfo`` and adds ``do_not_save``, ``choices``, ``aliases``,
    ``validate`` (a callable that normalises a value or raises ``ValueError`` with the reason), ``type``
    (the expected Python type when the default cannot tell, e.g. a ``None`` default) and ``check_with``
    (``check_with(value, values)``: a check against the other options' values, e.g. a model's limits; ``values``
    maps every option to what would be in effect with the checked values, less those rejected with them).
    """

    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None, *, do_not_save=False, choices=None, aliases=(), validate=None, type=None,
                 check_with=None):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.refresh = refresh
        self.comment_before = comment_before
        self.comment_after = comment_after
        self.infotext = infotext
        self.restrict_api = restrict_api
        self.category_id = category_id
        self.do_not_save = do_not_save
        self.choices = choices
        self.aliases = tuple(aliases)
        self.validate = validate
        self.type = type
        self.check_with = check_with

    def needs_restart(self):
        self.comment_after += " (requires restart)"
        return self

    def info(self, text):
        self.comment_after += f" ({text})"
        return self

    def expected_type(self):
        if self.type is not None:
            return self.type
        return None if self.default is None else type(self.default)

    def fixed_choices(self):
        """The list of allowed values when it is fixed; ``None`` when any value of the type (or a validator) decides."""
        choices = self.choices
        if choices is None and isinstance(self.component_args, dict):
            choices = self.component_args.get("choices")
        if choices is None or callable(choices):
            return None
        return list(choices)

    def bounds(self):
        args = self.component_args if isinstance(self.component_args, dict) else {}
        return args.get("minimum"), args.get("maximum")


def options_section(section_identifier, options_dict: dict) -> dict:
    """Stamp ``section`` (and ``category_id``) on every option of a dict, as A1111's helper does."""
    for v in options_dict.values():
        if len(section_identifier) == 2:
            v.section = section_identifier
        else:
            v.section = section_identifier[0:2]
            v.category_id = section_identifier[2]
    return options_dict


def _type_name(t) -> str:
    return getattr(t, "__name__", str(t))


def same_value(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are the same setting value: ``==``, except that a boolean is only ever the same as a
    boolean (Python has ``True == 1`` and ``False == 0.0``), also inside lists and dicts. ``1`` and ``1.0`` are the
    same (``check_value`` accepts an integral float for an int option)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return a == b


def check_value(key: str, info: OptionInfo, value: Any) -> Any:
    """Return ``value`` normalised for option ``key``, or raise ``OptionError`` saying why it does not fit.

    Rules: ``None`` only where the default is ``None``; an int is accepted for a float; a float with an integral
    value for an int (JSON clients send ``2.0``); a bool is never a number and a number never a bool; a str is
    never a number; numbers respect the component's ``minimum``/``maximum``; fixed choices accept only their
    members; a ``validate`` callable has the last word (it may normalise, e.g. a checkpoint hash to its title).
    """
    expected = info.expected_type()
    if value is None:
        if info.default is None:
            return None
        raise OptionError(key, f"expected {_type_name(expected)}, got null")
    if expected is not None:
        if expected is bool:
            if not isinstance(value, bool):
                raise OptionError(key, f"expected a boolean (true/false), got {type(value).__name__} {value!r}")
        elif expected is int:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise OptionError(key, f"expected an integer, got {type(value).__name__} {value!r}")
            if isinstance(value, float):
                if not value.is_integer():
                    raise OptionError(key, f"expected an integer, got {value!r}")
                value = int(value)
        elif expected is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise OptionError(key, f"expected a number, got {type(value).__name__} {value!r}")
            value = float(value)
        elif expected in (list, tuple):
            if not isinstance(value, (list, tuple)):
                raise OptionError(key, f"expected a list, got {type(value).__name__} {value!r}")
            value = list(value)
        elif not isinstance(value, expected):
            raise OptionError(key, f"expected {_type_name(expected)}, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise OptionError(key, f"expected a finite number, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = info.bounds()
        if lo is not None and value < lo:
            raise OptionError(key, f"{value!r} is below the minimum {lo!r}")
        if hi is not None and value > hi:
            raise OptionError(key, f"{value!r} is above the maximum {hi!r}")
    choices = info.fixed_choices()
    if choices is not None:
        items = value if isinstance(value, list) else [value]
        bad = [v for v in items if v not in choices]
        if bad:
            raise OptionError(key, f"{bad[0]!r} is not one of {choices}")
    if info.validate is not None:
        try:
            value = info.validate(value)
        except ValueError as e:
            raise OptionError(key, str(e)) from None
    return value


def cast_text(info: OptionInfo, text: str):
    """A string (CLI ``--override``, pasted infotext) as the option's type, or ``ValueError`` saying why not."""
    expected = info.expected_type()
    if expected is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if expected is int or expected is float:
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {text!r}")
        if expected is float:
            return number
        if not number.is_integer():
            raise ValueError(f"expected an integer, got {text!r}")
        return int(number)
    if expected in (list, tuple, dict):
        try:
            value = json.loads(text)
        except ValueError:
            raise ValueError(f"expected JSON, got {text!r}") from None
        if not isinstance(value, (list, dict)):
            raise ValueError(f"expected a JSON list or object, got {text!r}")
        return value
    return text
