"""The options store: registered options, their stored values, and the override layers over them.

Three kinds of value exist for an option key:

* the *default*, from its ``OptionInfo``;
* the *stored* value, set on purpose (``opts.set``, ``opts.KEY = v``, the settings page, ``POST /options``) and
  written to ``config.json`` by ``save()``; only explicitly stored values are written;
* *override layers*, pushed per context by ``modules.runtime_utils.temporary_opts``. They are never stored.

Every read (``opts.KEY``, ``opts.get(KEY)``, ``opts.data[KEY]``) returns the *effective* value: the innermost
override layer of the current context that has the key, else the stored value, else the default.

Every value is checked by ``modules.option_info.check_value`` against its option's declaration. ``config.json`` is
written whole and atomically by ``modules.settings_file``; ``set_many(..., save=True)`` is all or nothing: a failed
write puts every value back, so memory always equals the file.
"""

from __future__ import annotations

import contextvars
import difflib
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from modules import settings_file
from modules.option_info import OptionError, OptionInfo, cast_text, check_value, same_value

log = logging.getLogger("serena.options")

_MISSING = object()


class SettingsFrozenError(OptionError):
    """Raised when settings are changed or saved while ``--freeze-settings`` is on."""

    def __init__(self, key: str = "*"):
        super().__init__(key, "settings are frozen by --freeze-settings")


class SettingsSaveError(OSError):
    """The settings file could not be written. The file is as it was, and so is memory where the caller used
    ``set_many(..., save=True)``. The message names the file (``filename``) and the OS error."""

    def __init__(self, filename: str, error: OSError):
        self.reason = f"could not write the settings file {filename}: {error.strerror or error}"
        super().__init__(error.errno, self.reason)
        self.filename = filename

    def __str__(self):
        return self.reason  # OSError's own form would repeat the file name


@dataclass(frozen=True)
class OverrideLayer:
    """One level of temporary values over the stored options, owned by one context."""

    values: Mapping[str, Any]
    owner: str = "?"
    depth: int = 1
    p: Any = field(default=None, compare=False)
    # ``OverrideState`` -> value: what extensions derived from this layer, gone with it
    state: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass
class CheckResult:
    """What ``Options.check`` made of a mapping of values."""

    values: dict = field(default_factory=dict)        # normalised, keyed by current option names
    errors: dict = field(default_factory=dict)        # key as given -> reason
    warnings: list = field(default_factory=list)      # e.g. deprecated aliases


class EffectiveData(MutableMapping):
    """``opts.data``: a mapping view of effective values (A1111 code reads and writes ``opts.data`` directly).

    Reading gives the effective value of a registered option (or of a stored key nobody registered); writing
    stores a value on purpose, validated like ``opts.set``; deleting unsets a stored value.
    """

    def __init__(self, opts: "Options"):
        self._opts = opts

    def __getitem__(self, key):
        value = self._opts._effective(key)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key, value):
        self._opts._store(key, value)

    def __delitem__(self, key):
        self._opts.unset(key)

    def __iter__(self) -> Iterator[str]:
        seen = dict.fromkeys(self._opts.data_labels)
        seen.update(dict.fromkeys(self._opts._stored))
        return iter(list(seen))

    def __len__(self):
        return len(set(self._opts.data_labels) | set(self._opts._stored))

    def __contains__(self, key):
        return key in self._opts.data_labels or key in self._opts._stored

    def __repr__(self):
        return f"EffectiveData({dict(self)!r})"


class Options:
    """The options store. See the module docstring for stored, default and effective values."""

    _builtin_fields = frozenset({"data_labels", "data", "filename", "frozen", "_stored", "_invalid", "_layers",
                                 "_lock", "_aliases", "write_guard"})

    def __init__(self, data_labels: Mapping[str, OptionInfo], *, filename=None, frozen=False):
        object.__setattr__(self, "data_labels", dict(data_labels))
        object.__setattr__(self, "filename", filename)
        object.__setattr__(self, "frozen", frozen)
        object.__setattr__(self, "_stored", {})
        object.__setattr__(self, "_invalid", {})  # stored values of the wrong type: kept on disk, never used
        object.__setattr__(self, "_lock", threading.RLock())
        object.__setattr__(self, "_layers", contextvars.ContextVar(f"serena_opts_layers_{id(self)}", default=()))
        object.__setattr__(self, "_aliases", {})
        # ``write_guard(opts, key, action)``, action "set", "unset" or "register", runs before each of those and may
        # refuse it by raising ``OptionError`` (the extension loader installs one: extensions change only their
        # own options). ``load`` and ``restore_stored`` are not guarded.
        object.__setattr__(self, "write_guard", None)
        object.__setattr__(self, "data", EffectiveData(self))
        for key, info in self.data_labels.items():
            self._index_aliases(key, info)

    # -- reading ---------------------------------------------------------------------------------------------
    def _effective(self, key):
        for layer in reversed(self._layers.get()):
            if key in layer.values:
                return layer.values[key]
        if key in self._stored:
            return self._stored[key]
        info = self.data_labels.get(key)
        if info is not None:
            return info.default
        return _MISSING

    def __getattr__(self, item):
        if item.startswith("__"):
            raise AttributeError(item)
        value = self._effective(item)
        if value is _MISSING:
            raise AttributeError(f"no option named {item!r}")
        return value

    def get(self, key, default=_MISSING):
        """The effective value of ``key``; ``default`` (or ``KeyError``) when no such option exists."""
        value = self._effective(key)
        if value is _MISSING:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return value

    def get_default(self, key):
        info = self.data_labels.get(key)
        return None if info is None else info.default

    def stored(self) -> dict:
        """A copy of the explicitly stored values (what ``save`` writes, less kept-but-invalid entries)."""
        with self._lock:
            return dict(self._stored)

    def restore_stored(self, snapshot: Mapping[str, Any]) -> None:
        """Put back a ``stored()`` snapshot exactly, with no validation and no callbacks.

        For undoing changes nobody was allowed to make (an extension writing settings at import): the snapshot
        was valid when taken, and callbacks must not see the forbidden value come and go.
        """
        with self._lock:
            self._stored.clear()
            self._stored.update(snapshot)

    def is_stored(self, key) -> bool:
        return key in self._stored

    def canonical_key(self, key: str) -> str | None:
        """The current name of ``key`` (itself, or the option that declares it as an old name)."""
        if key in self.data_labels:
            return key
        return self._aliases.get(key)

    # -- validation ------------------------------------------------------------------------------------------
    def _index_aliases(self, key, info):
        for alias in info.aliases:
            self._aliases[alias] = key

    def check(self, values: Mapping[str, Any] | None, *, is_api=False, for_override=False) -> CheckResult:
        """Validate a whole mapping without changing anything; every bad key is reported, not just the first."""
        result = CheckResult()
        unknown = 0
        for key, value in (values or {}).items():
            name = self.canonical_key(key) if isinstance(key, str) else None
            if name is None:
                # Hints for the first few only: difflib against every option, for each of 100k keys, took minutes.
                unknown += 1
                close = difflib.get_close_matches(str(key), list(self.data_labels), n=3) if unknown <= 20 else []
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                result.errors[key] = f"unknown option{hint}"
                continue
            if name != key:
                result.warnings.append(f"option {key!r} is deprecated; use {name!r}")
                if name in values:
                    result.errors[key] = f"given together with its current name {name!r}"
                    continue
            info = self.data_labels[name]
            if info.do_not_save:
                result.errors[key] = "display-only option; it holds no value"
                continue
            if (is_api or for_override) and info.restrict_api:
                result.errors[key] = "restricted: this option cannot be changed through the API or overrides"
                continue
            if self.frozen:
                result.errors[key] = "settings are frozen by --freeze-settings"
                continue
            try:
                result.values[name] = check_value(key, info, value)
            except OptionError as e:
                result.errors[key] = e.reason
        self._check_together(result)
        return result

    def _check_together(self, result: CheckResult) -> None:
        """Run each checked option's ``check_with`` against what would be in effect with all the checked values."""
        names = [n for n in result.values if self.data_labels[n].check_with is not None]
        if not names:
            return
        rejected = {self.canonical_key(k) for k in result.errors if isinstance(k, str)}
        values = {k: self._effective(k) for k in self.data_labels if k not in rejected}
        values.update(result.values)
        for name in names:
            try:
                result.values[name] = self.data_labels[name].check_with(result.values[name], values)
            except ValueError as e:
                result.errors[name] = str(e)
                del result.values[name]

    # -- writing stored values -------------------------------------------------------------------------------
    def __setattr__(self, key, value):
        # As in A1111: option keys go to the store; any other name is a plain attribute.
        if key in self._builtin_fields or not (key in self.data_labels or key in self._stored):
            object.__setattr__(self, key, value)
            return
        self._store(key, value)

    def _guard(self, key, action):
        if self.write_guard is not None:
            self.write_guard(self, key, action)

    def _store(self, key, value):
        if self.frozen:
            raise SettingsFrozenError(key)
        self._guard(key, "set")
        info = self.data_labels.get(key)
        with self._lock:
            if info is not None:
                value = check_value(key, info, value)
            self._stored[key] = value
            self._invalid.pop(key, None)

    def set(self, key, value, is_api=False, run_callbacks=True) -> bool:
        """Store ``value`` for ``key`` on purpose. Returns whether the stored value changed.

        Raises ``KeyError`` for an unknown key, ``OptionError`` for a value that does not fit, a restricted
        option set through the API, or frozen settings. A failing ``onchange`` callback puts the old value
        back and its error is raised as an ``OptionError``.
        """
        name = self.canonical_key(key)
        if name is None:
            raise KeyError(key)
        if self.frozen:
            raise SettingsFrozenError(name)
        self._guard(name, "set")
        result = self.check({name: value}, is_api=is_api)
        if result.errors:
            raise OptionError(name, result.errors[name])
        value = result.values[name]
        info = self.data_labels[name]
        with self._lock:
            had = name in self._stored
            old = self._stored.get(name, info.default)
            if had and same_value(old, value):
                return False
            self._stored[name] = value
            self._invalid.pop(name, None)
        if run_callbacks and info.onchange is not None and not same_value(old, value):
            try:
                info.onchange()
            except Exception as e:
                with self._lock:
                    if had:
                        self._stored[name] = old
                    else:
                        self._stored.pop(name, None)
                raise OptionError(name, f"onchange callback failed: {e}") from e
        return not same_value(old, value) or not had

    def set_many(self, values: Mapping[str, Any], *, is_api=False, run_callbacks=True, save=False) -> dict:
        """Validate every value first, then store all of them or none; with ``save``, write the file too.
        Returns ``{key: changed}``.

        All or nothing: when an ``onchange`` callback fails (``OptionError``) or, with ``save``, the file cannot be
        written (``SettingsSaveError``), every value this call stored is put back before the error is raised, and
        the callbacks that saw a new value are called again -- so memory always equals what the file holds and
        what the caller was told. Every front door that saves (``POST /options``, the settings page, quick
        settings, the Extensions tab) goes through here.
        """
        result = self.check(values, is_api=is_api)
        if result.errors:
            raise OptionsRejected(result.errors)
        for k in result.values:  # a refused key refuses the whole mapping: nothing half-applied
            self._guard(k, "set")
        # Options checked against others (``check_with``) last: ``set`` checks each again, and by then the values
        # they were checked with together (a new checkpoint) are stored.
        order = sorted(result.values, key=lambda k: self.data_labels[k].check_with is not None)
        before: dict = {}
        changed: dict = {}
        try:
            for key in order:
                before[key] = (self._stored.get(key, _MISSING), self._invalid.get(key, _MISSING))
                changed[key] = self.set(key, result.values[key], is_api=is_api, run_callbacks=run_callbacks)
            if save:
                self.save()
        except BaseException:
            self._put_back(before, run_callbacks)
            raise
        return changed

    def _put_back(self, before: Mapping[str, tuple], run_callbacks: bool):
        """Restore the stored (and kept-but-invalid) entries ``set_many`` recorded; tell callbacks of undone keys."""
        undone = []
        with self._lock:
            for key, (stored, invalid) in before.items():
                default = self.data_labels[key].default
                if not same_value(self._stored.get(key, default), default if stored is _MISSING else stored):
                    undone.append(key)
                for store, value in ((self._stored, stored), (self._invalid, invalid)):
                    if value is _MISSING:
                        store.pop(key, None)
                    else:
                        store[key] = value
        for key in undone:
            onchange = self.data_labels[key].onchange
            if run_callbacks and onchange is not None:
                try:
                    onchange()
                except Exception:  # noqa: BLE001 - the value is back; the original error is the one to raise
                    log.exception("onchange callback of %s failed while its old value was put back", key)

    def unset(self, key):
        """Forget a stored value: the default applies again and ``config.json`` no longer has the key."""
        if self.frozen:
            raise SettingsFrozenError(key)
        self._guard(key, "unset")
        with self._lock:
            self._stored.pop(key, None)
            self._invalid.pop(key, None)

    def add_option(self, key, info: OptionInfo):
        """Register an option (core or extension). A value stored before registration is checked now."""
        self._guard(key, "register")
        with self._lock:
            self.data_labels[key] = info
            self._index_aliases(key, info)
            if key in self._stored:
                try:
                    self._stored[key] = check_value(key, info, self._stored[key])
                except OptionError as e:
                    self._report_invalid(key, self._stored.pop(key), e.reason)

    def remove_option(self, key) -> None:
        """Forget a registered option and its old names (an extension's test taking it out again); a stored value
        stays stored."""
        with self._lock:
            info = self.data_labels.pop(key, None)
            for alias in getattr(info, "aliases", ()):
                if self._aliases.get(alias) == key:
                    del self._aliases[alias]

    def attach(self, key, *, validate=None, choices=None, check_with=None):
        """Give the registered option ``key`` checks that need another layer's knowledge (see ``OptionInfo``).

        The options layer imports no model: the model layer attaches the checkpoint and VAE choices and checks at
        start-up (``modules.model_options``). The declaration itself gains them, so every store built from the
        same declarations checks alike. A value stored before is checked now, as by ``add_option``.
        """
        info = self.data_labels[key]
        for name, value in (("validate", validate), ("choices", choices), ("check_with", check_with)):
            if value is not None:
                setattr(info, name, value)
        self.add_option(key, info)

    def onchange(self, key, func, call=True):
        self.data_labels[key].onchange = func
        if call:
            func()

    def cast_value(self, key, value):
        """Turn a string into the option's type where it can; otherwise return it for ``check`` to reject."""
        info = self.data_labels.get(self.canonical_key(key) or key)
        if not isinstance(value, str) or info is None:
            return value
        try:
            return cast_text(info, value)
        except ValueError:
            return value

    # -- the file --------------------------------------------------------------------------------------------
    def save(self, filename=None):
        """Write the stored values atomically; overrides never reach the file.

        The file is always either the old or the new content (``settings_file.write``). Any OS failure raises
        ``SettingsSaveError`` naming the file, with the old file untouched and no temp file left.
        """
        if self.frozen:
            raise SettingsFrozenError()
        filename = filename or self.filename
        if not filename:
            raise ValueError("no settings file configured")
        filename = os.path.abspath(filename)
        with self._lock:  # held while writing: load's clean-up never sees this process's temp file half-written
            payload = dict(self._invalid)
            payload.update(self._stored)
            try:
                settings_file.write(filename, payload)
            except OSError as e:
                raise SettingsSaveError(filename, e) from e

    def load(self, filename=None):
        """Read stored values. A corrupt file is kept as a timestamped backup and defaults are used."""
        filename = filename or self.filename
        if not filename:
            raise ValueError("no settings file configured")
        with self._lock:  # this process's own saves run under it: none of its temp files is in flight
            settings_file.remove_stale_temp_files(os.path.dirname(os.path.abspath(filename)))
        stored = settings_file.read(filename)
        with self._lock:
            self._stored.clear()
            self._invalid.clear()
            for key, value in stored.items():
                name = self.canonical_key(key) or key
                info = self.data_labels.get(name)
                if info is None:
                    self._stored[key] = value  # unknown (e.g. a removed extension's option): kept on disk
                    continue
                try:
                    self._stored[name] = check_value(name, info, value)
                except OptionError as e:
                    self._report_invalid(key, value, e.reason)

    def _report_invalid(self, key, value, reason):
        self._invalid[key] = value
        log.warning("stored setting %s=%r ignored (%s); using the default %r", key, value, reason,
                    self.get_default(key))

    def dumpjson(self) -> str:
        d = {k: self._effective(k) for k in self.data_labels}
        d["_comments_before"] = {k: v.comment_before for k, v in self.data_labels.items() if v.comment_before}
        d["_comments_after"] = {k: v.comment_after for k, v in self.data_labels.items() if v.comment_after}
        return json.dumps(d, default=str)

    # -- override layers (driven by modules.runtime_utils) ---------------------------------------------------
    def push_layer(self, layer: OverrideLayer) -> contextvars.Token:
        return self._layers.set(self._layers.get() + (layer,))

    def pop_layer(self, token: contextvars.Token):
        self._layers.reset(token)

    def layers(self) -> tuple:
        """The override layers active in the current context, outermost first."""
        return self._layers.get()


class OptionsRejected(ValueError):
    """Several values rejected at once: ``errors`` maps each bad key to its reason."""

    def __init__(self, errors: Mapping[str, str]):
        self.errors = dict(errors)
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.errors.items()))

