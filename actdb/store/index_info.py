"""The query index's record, index/index.json: its settings and every file with size and sha256.

Written last by actdb.index, so the index is complete exactly when it exists."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .layout import INDEX_DIR, INDEX_FILE

# the index's format: readers refuse another one. 3: n-grams padded before the sequence start
# (SPEC §1.3), n-gram ids in base vocabulary + 1 (`vocab_base`), `ngram_pad` the PAD digit
INDEX_VERSION = 3


def stale_version(store_path: str | Path, info: dict[str, Any]) -> str | None:
    """Why an index.json of another format cannot be read (None when it can)."""
    config = info.get("config")
    got = config.get("version") if isinstance(config, dict) else None
    if got == INDEX_VERSION:
        return None
    return (f"stale index: version: built by index version {got!r}, this actdb reads {INDEX_VERSION} "
            f"(rebuild it with `actdb index {store_path} --force`)")


def index_path(store_path: str | Path) -> Path:
    return Path(store_path) / INDEX_DIR


def read_index_info(store_path: str | Path) -> dict[str, Any] | None:
    p = index_path(store_path) / INDEX_FILE
    if not p.exists():
        return None
    return json.loads(p.read_text(encoding="utf-8"))
