"""The query index's record, index/index.json: its settings and every file with size and sha256.

Written last by actdb.index, so the index is complete exactly when it exists."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .layout import INDEX_DIR, INDEX_FILE


def index_path(store_path: str | Path) -> Path:
    return Path(store_path) / INDEX_DIR


def read_index_info(store_path: str | Path) -> dict[str, Any] | None:
    p = index_path(store_path) / INDEX_FILE
    if not p.exists():
        return None
    return json.loads(p.read_text(encoding="utf-8"))
