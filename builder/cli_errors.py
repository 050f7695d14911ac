"""The ``pybuild`` command's last error boundary: whatever a command did not word itself
becomes one line on stderr and exit status 1, never a traceback.

- ``cas`` errors (``StorageFull``, ``StorageNotWritable``, ``StoreClosed``,
  ``StoreCorrupt``, ...) carry their own words: the path, the cause and the fix.
- An ``OSError`` or ``sqlite3.Error`` of a full, read-only or forbidden file system under
  the storage directory (or above it, while making it) becomes the same typed storage
  error (``cas.storage_error``), which names ``--storage``;
  elsewhere (an ``--output`` or ``--iidfile`` destination) it names the path and the cause.
- Anything else is a bug: one line naming it, and ``PYBUILD_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import errno
import os
import resource
import sqlite3
import sys
from pathlib import Path

from cas.errors import CasError, out_of_descriptors, storage_error
from cas.location import default_storage_dir

__all__ = ["describe", "storage_dir_of"]


def storage_dir_of(argv: list[str]) -> Path:
    """The storage directory a command line names (``--storage DIR``), else the default."""
    for i, arg in enumerate(argv):
        if arg == "--storage" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--storage="):
            return Path(arg.partition("=")[2])
    return default_storage_dir(check=False)  # describing another error: raise no new one


def _inside(path: Path, root: Path) -> bool:
    try:
        Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    except ValueError:
        return False
    return True


def describe(exc: BaseException, argv: list[str] | None = None) -> str | None:
    """One line for ``exc``; None when it is a bug that ``PYBUILD_DEBUG`` asks to see."""
    if isinstance(exc, CasError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
        text = _too_many_open_files(exc.errno)
    elif isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == \
            sqlite3.SQLITE_CANTOPEN and out_of_descriptors():
        text = _too_many_open_files(errno.EMFILE)  # SQLite's words for it: "unable to open"
    elif isinstance(exc, (OSError, sqlite3.Error)):
        storage = storage_dir_of(sys.argv[1:] if argv is None else argv)
        filename = getattr(exc, "filename", None)
        where = Path(os.fsdecode(filename)) if filename is not None else None
        typed = storage_error(exc, where or storage)
        # Under the storage directory, or on the way to it (making the default one in a
        # home that cannot be written, as a service account's): the storage's error.
        if typed is not None and where is not None and (
                _inside(where, storage) or _inside(storage, where)):
            text = str(typed)
        elif isinstance(exc, OSError) and exc.strerror:
            cause = exc.strerror.lower()
            if where is not None:
                text = f"{where}: {cause}"
                if typed is not None:
                    text += "; make room there (or make it writable), or write somewhere else"
            else:
                text = cause
                if typed is not None:  # nothing says where: the storage or a destination
                    text += (f" (in the storage directory {storage} or a destination); free "
                             "space there (or make it writable), or use another storage "
                             "directory (--storage DIR or PYBUILD_STORAGE)")
        else:
            text = f"storage database in {storage}: {exc}"
    elif os.environ.get("PYBUILD_DEBUG"):
        return None
    else:
        text = (f"internal error: {type(exc).__name__}: {exc} "
                "(run again with PYBUILD_DEBUG=1 to see where; please report it)")
    return " ".join(text.split())  # one line


def _too_many_open_files(code: int) -> str:
    if code == errno.ENFILE:
        return ("too many open files on this machine (the kernel's table, fs.file-max, is "
                "full); close programs that hold many, or raise it (sysctl -w fs.file-max=N), "
                "and run the command again")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    raise_to = 4096 if hard == resource.RLIM_INFINITY else max(min(4096, hard), soft)
    fix = (f"raise it (ulimit -n {raise_to}) and run the command again" if raise_to > soft
           else f"its hard limit is {hard} too: raise that (as root: /etc/security/limits.conf, "
                "or LimitNOFILE= for a service) and run the command again")
    return f"too many open files: this process may have {soft} open at once (ulimit -n); {fix}"

