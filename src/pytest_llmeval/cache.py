"""The exact response cache: diskcache under ``.llmeval/cache``, safe to share between xdist workers.

Keys are hashes of everything that determines an answer (model, api base, every sampling parameter, the
full messages, the sample slot and the cache-format version) and never of credentials.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

# Bump when the stored value's shape or the key's recipe changes: old entries then simply miss.
CACHE_FORMAT = 1


def cache_key(**parts: Any) -> str:
    """A stable hash of the request parts (JSON with sorted keys)."""
    blob = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """A lazily opened diskcache.Cache (SQLite underneath: several processes may use it at once)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cache: Any = None

    def _open(self) -> Any:
        if self._cache is None:
            import diskcache

            self.directory.mkdir(parents=True, exist_ok=True)
            # A generous timeout: eight workers writing at once must wait, not fail.
            self._cache = diskcache.Cache(str(self.directory), timeout=60)
        return self._cache

    def get(self, key: str) -> dict[str, Any] | None:
        value = self._open().get(key)
        return value if isinstance(value, dict) else None

    def set(self, key: str, value: dict[str, Any]) -> None:
        self._open().set(key, value)

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None
