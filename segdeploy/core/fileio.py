"""Atomic file writes, shared by every stage (torch-free, so the runtime can use it too)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from segdeploy.core.errors import SegdeployError


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` only when it succeeded.

    The temporary file lives in the destination folder so that the final rename is atomic; a crash
    or Ctrl-C leaves either the old file or none, never a half-written one.
    """
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as err:
        raise SegdeployError(f"cannot write to folder {folder} ({err.strerror})") from None
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
