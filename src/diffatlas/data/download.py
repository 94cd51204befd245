"""Checksummed downloads with urllib (only when a user asks with download=True)."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError


def md5_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex MD5 digest of a file (identifies a published data file; not used for security)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download_file(urls: Sequence[str], dest: str | Path, md5: str, timeout: float = 60.0) -> Path:
    """Fetch `dest` from the first of `urls` that works and whose MD5 equals `md5`.

    A file already at `dest` with the right checksum is kept. The download goes to
    `dest.part` and is renamed only after the checksum matched. Raises UserError naming
    the file, the URLs tried and the reasons when every mirror fails.
    """
    dest = Path(dest)
    if dest.is_file() and md5_file(dest) == md5:
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create directory {dest.parent} for {dest.name}: {e.strerror or e}") from None
    part = dest.with_name(dest.name + ".part")
    reasons = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
                while block := response.read(1 << 20):
                    out.write(block)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reasons.append(f"{url}: {getattr(e, 'reason', None) or e}")
            part.unlink(missing_ok=True)
            continue
        got = md5_file(part)
        if got != md5:
            reasons.append(f"{url}: MD5 {got} != expected {md5}")
            part.unlink(missing_ok=True)
            continue
        os.replace(part, dest)
        return dest
    raise UserError(
        f"could not download {dest.name} ({'; '.join(reasons)}); put the file in {dest.parent} by hand"
    )
