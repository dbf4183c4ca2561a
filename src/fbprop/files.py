"""Atomic file writes: a file at its final path is either the old one or the complete new one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import BinaryIO


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call write(file) on a new temporary file beside `path`, fsync it, then rename it onto `path`.

    A process killed at any point leaves `path` as it was, and the temporary file is removed on
    any exception (Ctrl-C included). The file gets the mode open() would give (0o666 less umask).
    """
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    temp = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    # O_EXCL: never write through a file or link that is already there
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException as e:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.filename is None:       # e.g. ENOSPC from write or fsync: name the file
            raise OSError(e.errno, f"{path}: {e.strerror or e}") from None
        raise
