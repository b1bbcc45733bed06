"""``<data-dir>/cache.json``: what is slow to recompute and can be recomputed, in named sections.

As A1111's ``cache.json``, one file holds several sections (``hashes-sha256``: file hashes; ``serena-model-facts``:
checkpoint inspections), each a dict of entries. A write re-reads the file and replaces only its own entry, so a
writer never drops another section's (or another process's) entries; the file is replaced atomically, so a reader
never sees half of it. The file is only a cache: unreadable, it counts as empty; a read-only data folder only
costs recomputing next time. Deleting it is always safe.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading


class CacheFile:
    """The sections of one cache file, read once and kept in memory; ``put`` writes through."""

    def __init__(self, filename: str):
        self.filename = filename
        self._lock = threading.Lock()
        self._data: dict | None = None

    def _read(self) -> dict:
        try:
            with open(self.filename, encoding="utf8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {name: section for name, section in data.items() if isinstance(section, dict)}

    def get(self, section: str, key: str):
        """The entry ``key`` of ``section``, or ``None``."""
        with self._lock:
            if self._data is None:
                self._data = self._read()
            return self._data.get(section, {}).get(key)

    def put(self, section: str, key: str, entry):
        """Store ``entry`` (JSON-serialisable) as ``key`` of ``section``, keeping everything else in the file."""
        with self._lock:
            data = self._read()
            data.setdefault(section, {})[key] = entry
            self._data = data
            self._write(data)

    def _write(self, data: dict):
        directory = os.path.dirname(os.path.abspath(self.filename))
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".cache-", dir=directory)
            try:
                with os.fdopen(fd, "w", encoding="utf8") as f:
                    json.dump(data, f, indent=1)
                os.replace(tmp, self.filename)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError:
            pass  # a read-only data folder only costs recomputing next time
