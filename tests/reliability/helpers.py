"""Shared by the reliability tests: tampering helpers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from dacdr.package import MANIFEST, _manifest_checksum, sha256_file


def copy_package(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def reseal(pkg: Path, **fields: Any) -> dict[str, Any]:
    """Re-sign a package's manifest after tampering (as a careful attacker would): every listed file's sha256 is
    recomputed, `fields` are set, and the checksum is recomputed over all fields."""
    manifest = json.loads((pkg / MANIFEST).read_text())
    manifest.update(fields)
    manifest["files"] = {n: sha256_file(pkg / n) if (pkg / n).is_file() else d
                         for n, d in manifest["files"].items()}
    manifest["checksum"] = _manifest_checksum(manifest)
    (pkg / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest
