"""Finding extensions, reading their ``metadata.ini``, and the one rule for which of them are enabled.

Standard library only: ``launch.py`` runs this before the environment (and so pluggy or torch) exists, to pick the
``install.py`` files to run, and the loader (``modules.extensions``) runs the same ``find`` to pick what to import —
so a disabled extension's installer never runs and the two can never disagree.

Where extensions come from, in discovery order: ``extensions-builtin/<folder>/`` (group ``"builtin"``),
``<data-dir>/extensions/<folder>/`` (``"user"``), then installed packages with an entry point in the group
``serena`` (``"package"``), by entry-point name. An extension's *name* is ``[Extension] Name`` from its
``metadata.ini``, else its folder name (an entry point's name for packages); names are matched
case-insensitively everywhere, and the first extension found with a name wins (later ones are ``skipped``).
"""

from __future__ import annotations

import configparser
import importlib.metadata
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

log = logging.getLogger("serena.extensions")

__all__ = ["HookConstraints", "Metadata", "Extension", "Enablement", "read_metadata", "discover", "find",
           "check_requires", "by_key", "pick", "why_absent", "BUILTIN", "USER", "PACKAGE", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "serena"
BUILTIN, USER, PACKAGE = "builtin", "user", "package"


# ---------------------------------------------------------------------------------------------------------------
# metadata.ini
# ---------------------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------------------
# Extensions
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Extension:
    """One extension found on disk or as an entry point, loaded or not."""

    name: str
    path: str                     # the folder; for a package, the loaded module's file ("" until loaded)
    group: str                    # "builtin", "user" or "package"
    folder: str = ""              # folder name, or the entry point's name
    metadata: Metadata = field(default_factory=Metadata)
    enabled: bool = True          # False when disabled by settings or flags: its modules are never imported
    loaded: bool = False
    problems: list[str] = field(default_factory=list)
    plugins: list[str] = field(default_factory=list)   # plugin names registered with the host, in order
    modules: list[str] = field(default_factory=list)   # ``sys.modules`` names imported for it
    source: str = ""              # where it came from, in words
    traceback: str | None = field(default=None, repr=False)
    _logged: set = field(default_factory=set, repr=False, compare=False)  # problems already logged
    entry_point: Any = field(default=None, repr=False, compare=False)
    #: "disabled", "skipped" (duplicate name), "requires", "failed" or None; see ``status``
    reason: str | None = None
    #: why it is disabled, in words (flags or settings); ``None`` when enabled
    disabled_reason: str | None = None

    @property
    def key(self) -> str:
        return self.name.casefold()

    @property
    def host_group(self) -> str:
        """The plugin host's group (``plugins.BUILTIN_GROUP`` / ``USER_GROUP``): packages order with user ones."""
        return BUILTIN if self.group == BUILTIN else USER

    @property
    def usable(self) -> bool:
        """Enabled, not a duplicate, not failed and not blocked by its ``Requires``: it is (or may be) loaded."""
        return self.enabled and self.reason is None

    @property
    def status(self) -> str:
        """``loaded``, ``disabled``, ``skipped`` (a duplicate name), ``requires`` (a requirement is missing) or
        ``failed`` (import or registration failed)."""
        if self.loaded:
            return "loaded"
        return self.reason or ("disabled" if not self.enabled else "failed")

    def note(self, message: str) -> None:
        if message not in self.problems:
            self.problems.append(message)

    def as_dict(self) -> dict:
        """A JSON-ready description (for the API and the UI)."""
        return {
            "name": self.name, "folder": self.folder, "path": self.path, "group": self.group, "source": self.source,
            "enabled": self.enabled, "disabled_reason": self.disabled_reason, "loaded": self.loaded,
            "status": self.status, "problems": list(self.problems),
            "plugins": list(self.plugins),
            "metadata": {"name": self.metadata.name, "requires": list(self.metadata.requires),
                         "before": list(self.metadata.before), "after": list(self.metadata.after),
                         "hooks": {h: {"before": list(c.before), "after": list(c.after)}
                                   for h, c in self.metadata.hooks.items()}},
        }


def _folders(directory: str | None) -> list[str]:
    if not directory or not os.path.isdir(directory):
        return []
    return sorted(entry for entry in os.listdir(directory)
                  if not entry.startswith((".", "__")) and os.path.isdir(os.path.join(directory, entry)))


def _entry_points(entry_points) -> list:
    if entry_points is True:
        try:
            return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        except Exception as e:  # a broken installed distribution must not stop start-up
            log.error("could not read entry points of group %r: %s", ENTRY_POINT_GROUP, e)
            return []
    if not entry_points:
        return []
    return list(entry_points)


def discover(builtin_dir: str | None, user_dir: str | None, entry_points=True) -> list[Extension]:
    """Find every extension, in discovery order; the first of two with the same name wins (the other is kept,
    marked ``skipped``, with a problem)."""
    found: list[Extension] = []
    for group, directory in ((BUILTIN, builtin_dir), (USER, user_dir)):
        for folder in _folders(directory):
            path = os.path.abspath(os.path.join(directory, folder))
            metadata, notes = read_metadata(path)
            ext = Extension(name=metadata.name or folder, path=path, group=group, folder=folder,
                            metadata=metadata, source=path)
            ext.problems.extend(notes)
            found.append(ext)
    eps = sorted(_entry_points(entry_points), key=lambda ep: (ep.name.casefold(), ep.value))
    for ep in eps:
        dist = getattr(ep, "dist", None)
        dist_text = f" ({dist.name} {dist.version})" if dist is not None else ""
        found.append(Extension(name=ep.name, path="", group=PACKAGE, folder=ep.name, entry_point=ep,
                               source=f"entry point {ep.name} = {ep.value}{dist_text}"))
    seen: dict[str, Extension] = {}
    for ext in found:
        first = seen.get(ext.key)
        if first is None:
            seen[ext.key] = ext
            continue
        ext.reason = "skipped"
        ext.note(f"another extension named {first.name!r} was found first ({first.source}); this one is skipped")
    return found


# ---------------------------------------------------------------------------------------------------------------
# Enablement: flags and settings
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Enablement:
    """Which extensions are enabled. ``disabled`` names (``disabled_extensions``) match an extension's name or
    folder name, case-insensitively; ``disable_all`` turns every extension off, ``disable_extra`` every one that
    is not built-in."""

    disabled: frozenset[str] = frozenset()
    disable_all: bool = False
    disable_extra: bool = False

    @classmethod
    def of(cls, disabled: Iterable[str] | None = (), disable_all: bool = False,
           disable_extra: bool = False) -> "Enablement":
        return cls(frozenset(str(n).casefold() for n in (disabled or ())), bool(disable_all), bool(disable_extra))

    @classmethod
    def configured(cls, cmd_opts: Any, settings: Mapping[str, Any]) -> "Enablement":
        """From the flags (``--disable-all-extensions``, ``--disable-extra-extensions``) and the settings
        ``disabled_extensions`` and ``disable_all_extensions`` (``none``/``extra``/``all``): ``settings`` is the
        options store or, in ``launch.py``, ``config.json`` read as a dict."""
        mode = settings.get("disable_all_extensions", "none")
        return cls.of(settings.get("disabled_extensions") or (),
                      bool(getattr(cmd_opts, "disable_all_extensions", False)) or mode == "all",
                      bool(getattr(cmd_opts, "disable_extra_extensions", False)) or mode == "extra")

    def why_disabled(self, ext: Extension) -> str | None:
        if self.disable_all:
            return "all extensions are disabled (--disable-all-extensions, or disable_all_extensions = all)"
        if self.disable_extra and ext.group != BUILTIN:
            return ("only built-in extensions are enabled (--disable-extra-extensions, or disable_all_extensions = "
                    "extra)")
        if ext.key in self.disabled or ext.folder.casefold() in self.disabled:
            return "disabled in settings (disabled_extensions)"
        return None


def find(builtin_dir: str | None, user_dir: str | None, enablement: Enablement,
         entry_points=True) -> list[Extension]:
    """Every extension in discovery order, each marked enabled or not (``enablement``) and blocked or not by its
    ``Requires``. Nothing is imported (an entry point is only read)."""
    found = discover(builtin_dir, user_dir, entry_points)
    for ext in found:
        why = enablement.why_disabled(ext)
        if why is not None:
            ext.enabled = False
            ext.reason = ext.reason or "disabled"
            ext.disabled_reason = why
    check_requires(found)
    return found


# ---------------------------------------------------------------------------------------------------------------
# Requires
# ---------------------------------------------------------------------------------------------------------------

def by_key(found: Iterable[Extension]) -> dict[str, Extension]:
    """``Extension.key`` -> extension, without the skipped duplicates (what names refer to)."""
    return {e.key: e for e in found if e.reason != "skipped"}


def pick(alternatives: str, exts: Mapping[str, Extension], accept=lambda e: True) -> Extension | None:
    """``a|b``: the first alternative that exists in ``exts`` and is accepted."""
    for alt in alternatives.split("|"):
        ext = exts.get(alt.casefold())
        if ext is not None and accept(ext):
            return ext
    return None


def why_absent(alternatives: str, exts: Mapping[str, Extension]) -> str:
    reasons = []
    for alt in alternatives.split("|"):
        ext = exts.get(alt.casefold())
        if ext is None:
            reasons.append(f"{alt!r} is not installed")
        elif not ext.enabled:
            reasons.append(f"{ext.name!r} is disabled")
        elif ext.reason == "requires":
            reasons.append(f"{ext.name!r} cannot load (its own requirements are missing)")
        elif ext.loaded is False and ext.reason == "failed":
            reasons.append(f"{ext.name!r} failed to load")
        else:
            reasons.append(f"{ext.name!r} is not loaded")
    return "; ".join(reasons)


def check_requires(found: list[Extension]) -> list[Extension]:
    """The Requires rule, the one place it is applied: an extension is usable only while each ``Requires``
    entry names a usable extension. Marks (``reason = "requires"``, with a note) every usable extension that
    breaks it, until none does, and returns them — the loader calls it again after an extension fails, and
    unloads the loaded ones returned."""
    exts = by_key(found)
    blocked: list[Extension] = []
    changed = True
    while changed:
        changed = False
        for ext in found:
            if not ext.usable:
                continue
            for req in ext.metadata.requires:
                if pick(req, exts, lambda e: e.usable) is None:
                    ext.reason = "requires"
                    ext.note(f"not loaded: requires {req!r} ({why_absent(req, exts)})")
                    blocked.append(ext)
                    changed = True
                    break
    return blocked
