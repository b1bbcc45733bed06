"""The settings file on disk: ``config.json`` read forgivingly and written whole, atomically.

A write goes to a temp file ``.config-<pid>-<random>.tmp`` in the same folder, is fsynced and renamed over the
file; the file keeps its permission bits, a new one gets 0666 less the umask. Temp files a killed save left behind
are removed before a read (``remove_stale_temp_files``). What the values mean is the store's business
(``modules.options``); this module only moves JSON objects to and from disk.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import secrets
import stat

log = logging.getLogger("serena.options")  # the operations docs name one logger for the settings and their file


def read(filename: str) -> dict:
    """The JSON object stored in ``filename`` (``{}`` when there is none). A corrupt file is kept as a timestamped
    backup (``<file>.corrupt-<stamp>``), logged, and read as ``{}``."""
    if not os.path.exists(filename):
        return {}
    try:
        with open(filename, encoding="utf8") as f:
            stored = json.load(f)
        if not isinstance(stored, dict):
            raise ValueError(f"expected a JSON object, found {type(stored).__name__}")
        return stored
    except (ValueError, UnicodeDecodeError) as e:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        backup = f"{filename}.corrupt-{stamp}"
        os.replace(filename, backup)
        log.error("settings file %s is unreadable (%s); moved it to %s and started from defaults",
                  filename, e, backup)
        return {}


_TEMP_PREFIX, _TEMP_SUFFIX = ".config-", ".tmp"


def write(filename: str, payload: dict) -> None:
    """Write ``payload`` as ``filename``'s whole content, atomically; raises ``OSError`` with the old file untouched
    and no temp file left."""
    directory = os.path.dirname(filename)
    os.makedirs(directory, exist_ok=True)
    try:
        mode = stat.S_IMODE(os.stat(filename).st_mode)
    except FileNotFoundError:
        mode = None
    while True:
        tmp = os.path.join(directory, f"{_TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}{_TEMP_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as to any new file
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "w", encoding="utf8") as f:
            if mode is not None:
                os.chmod(tmp, mode)
            json.dump(payload, f, indent=4, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filename)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # The rename itself survives a power cut only once the folder is synced; where a folder cannot be opened
    # (Windows) the rename is still atomic.
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def remove_stale_temp_files(directory: str) -> None:
    """Remove temp files that saves killed half-way (kill -9, power cut) left in ``directory``.

    A temp file is named for the process writing it. It is stale when that process is gone, or is this one (this
    process saves under the lock the caller holds, so none of its own is in flight; a reused pid after a restart
    is caught too). Another live process's file is left alone: a second server on the same data folder may be
    saving right now. Names without a pid (older versions) are stale.
    """
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith(_TEMP_PREFIX) and name.endswith(_TEMP_SUFFIX)):
            continue
        owner = name[len(_TEMP_PREFIX):-len(_TEMP_SUFFIX)].split("-", 1)[0]
        if owner.isdigit() and int(owner) != os.getpid() and _process_alive(int(owner)):
            continue
        path = os.path.join(directory, name)
        try:
            os.unlink(path)
            log.info("removed %s, left behind by an interrupted settings save", path)
        except OSError as e:
            log.warning("could not remove %s, left behind by an interrupted settings save: %s", path, e)


def _process_alive(pid: int) -> bool:
    if os.name != "posix":
        return False  # os.kill(pid, 0) would terminate it on Windows; there, stale files are simply removed
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True
