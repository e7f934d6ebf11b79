"""sha256 of a file: the one helper behind every recorded hash (export's
manifest, a snapshot's source checkpoint) and every check of one
(pinrank.repository.integrity)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
