"""Where nbic keeps what it caches on the host: $XDG_CACHE_HOME/nbic, or
~/.cache/nbic without it (the rootfs cache itself lives in Docker volumes)."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "nbic"
