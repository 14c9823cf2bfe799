"""File hashes, and the atomic file write of :mod:`segdeploy.core.publish` under its older name
(torch-free, so the runtime can use them too)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from segdeploy.core.publish import write_file

#: :func:`segdeploy.core.publish.write_file`: build beside, rename into place.
atomic_write = write_file

__all__ = ["atomic_write", "file_sha256", "write_file"]


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes: ties an export to its checkpoint, a variant to its parent."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
