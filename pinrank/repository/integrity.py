"""Check a model repository's artifacts against the sha256 sums that
`pinrank export` records in each version's manifest.json (stdlib only).

A ranker file that changed after export (disk corruption, a partial copy, a
hand edit, a swapped file) is refused before the server loads it, instead of
serving different weights than the ones that passed the parity gate.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pinrank.backend.hashing import sha256_of

MANIFEST = "manifest.json"


class IntegrityError(ValueError):
    """An artifact does not match its manifest; the message names the file."""


def verify_version(version_dir: str | Path) -> list[str]:
    """Names of the files in `version_dir` whose sha256 matched its manifest.

    Directories without a manifest (the ensemble's empty version, hand-made
    repositories) verify nothing. The manifest is shared by every model of a
    publish, so hashes are checked where their files live: a directory that
    holds one of the ranker files must hold all of them.
    """
    root = Path(version_dir)
    path = root / MANIFEST
    if not path.is_file():
        return []
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise IntegrityError(f"{path}: expected a JSON object")
    sums = manifest.get("artifact_sha256") or {}
    if not isinstance(sums, dict):
        raise IntegrityError(f"{path}: artifact_sha256 must map file names to sha256 hex digests")
    for name in sums:
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
            raise IntegrityError(f"{path}: artifact name {name!r} is not a plain file name")
    present = sorted(name for name in sums if (root / name).is_file())
    if present:
        missing = [n for n in manifest.get("ranker_files", []) if n in sums and not (root / n).is_file()]
        if missing:
            raise IntegrityError(f"{root}: {', '.join(missing)} listed in {MANIFEST} but missing")
    for name in present:
        got = sha256_of(root / name)
        if got != str(sums[name]).lower():
            raise IntegrityError(
                f"{root / name}: sha256 {got[:16]}... does not match {MANIFEST} ({str(sums[name])[:16]}...): "
                "the file changed after export; re-export or restore it"
            )
    return present


def verify_repository(repository: str | Path) -> dict[str, list[str]]:
    """{"model/version": verified file names} over every numbered version of
    every model; raises IntegrityError at the first mismatch."""
    repo = Path(repository)
    verified: dict[str, list[str]] = {}
    for model in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = [v for v in model.iterdir() if v.is_dir() and v.name.isdigit()]
        for version in sorted(versions, key=lambda v: int(v.name)):
            names = verify_version(version)
            if names:
                verified[f"{model.name}/{version.name}"] = names
    return verified


def main(argv: list[str] | None = None) -> int:
    """python -m pinrank.repository.integrity REPOSITORY...: exit 1 on a mismatch
    (for CI or an image build, where `pinrank serve` does not run)."""

    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m pinrank.repository.integrity REPOSITORY...", file=sys.stderr)
        return 2
    for repo in paths:
        try:
            verified = verify_repository(repo)
        except (IntegrityError, OSError) as exc:
            print(f"integrity: {exc}", file=sys.stderr)
            return 1
        files = sum(len(v) for v in verified.values())
        print(f"{repo}: {files} artifact(s) in {len(verified)} version(s) match their manifests")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
