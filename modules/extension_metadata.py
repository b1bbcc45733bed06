"""An extension's ``metadata.ini``: its name, and the extensions it requires or runs before/after.

Standard library only, because ``launch.py`` reads extension names with it before the environment (and so
pluggy) exists: a name in ``disabled_extensions`` must keep an extension's ``install.py`` from running too.
"""

from __future__ import annotations

import configparser
import os
import re
from dataclasses import dataclass, field

__all__ = ["HookConstraints", "Metadata", "read_metadata", "extension_name"]


@dataclass
class HookConstraints:
    """``[hooks/<hook name>]`` of a ``metadata.ini``: extensions this one's implementations run before/after."""

    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)


@dataclass
class Metadata:
    """What ``metadata.ini`` says. Lists are already split; an entry ``a|b`` means the first of them present."""

    name: str | None = None
    requires: list[str] = field(default_factory=list)
    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    #: hook name -> constraints for that hook only
    hooks: dict[str, HookConstraints] = field(default_factory=dict)


class _ConfigParser(configparser.ConfigParser):
    """``ConfigParser`` with a linear-time pattern for ``key = value`` lines.

    The standard one, ``(?P<option>.*?)\\s*(?P<vi>=|:)\\s*(?P<value>.*)$``, tries the white space after every
    character again: a 40k-character line of spaces without ``=`` took 40 s. This one reads the same: the key is
    everything before the first ``=`` or ``:``, and ``configparser`` strips the white space at its end itself.
    """

    OPTCRE = re.compile(r"(?P<option>[^=:]*)(?P<vi>[=:])\s*(?P<value>.*)$")


def _split(value: str | None) -> list[str]:
    """A1111's list syntax: names separated by commas and/or whitespace."""
    return [part for part in re.split(r"[,\s]+", value or "") if part]


def read_metadata(path: str) -> tuple[Metadata, list[str]]:
    """Parse ``<path>/metadata.ini`` (a missing file is empty metadata). Returns ``(metadata, problems)``."""
    metadata, notes = Metadata(), []
    filename = os.path.join(path, "metadata.ini")
    if not os.path.isfile(filename):
        return metadata, notes
    parser = _ConfigParser(interpolation=None)
    try:
        with open(filename, encoding="utf-8") as f:
            parser.read_file(f)
    except (configparser.Error, UnicodeDecodeError, OSError) as e:
        return metadata, [f"metadata.ini is unreadable and was ignored: {e}"]
    for section in parser.sections():
        values = parser[section]
        lowered = section.casefold()
        if lowered == "extension":
            name = (values.get("name") or "").strip()
            metadata.name = name or None
            metadata.requires = _split(values.get("requires"))
            metadata.before = _split(values.get("before"))
            metadata.after = _split(values.get("after"))
        elif lowered.startswith("hooks/"):
            hook = section.split("/", 1)[1].strip()
            metadata.hooks[hook] = HookConstraints(_split(values.get("before")), _split(values.get("after")))
        else:
            notes.append(f"metadata.ini: section [{section}] is not used by Serena (only [Extension] and "
                         f"[hooks/<hook name>])")
    return metadata, notes


def extension_name(path: str) -> str:
    """``[Extension] Name`` of the extension folder ``path``, else the folder's name."""
    return read_metadata(path)[0].name or os.path.basename(os.path.normpath(path))
