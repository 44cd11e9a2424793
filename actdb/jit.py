"""A stage's compiled (numba) kernels: the module, or None when numba is missing or the stage's
switch is 0 (ACTDB_INGEST_JIT, ACTDB_INDEX_JIT), which keeps the numpy and torch paths: the
references the kernels are tested against, with the same results."""
from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType


@functools.cache
def compiled(module: str, switch: str) -> ModuleType | None:
    """The kernels module `module` (imported once), or None (see above). Tests that flip the
    switch call compiled.cache_clear()."""
    if os.environ.get(switch, "1") == "0":
        return None
    try:
        return importlib.import_module(module)
    except ImportError:   # numba missing or not built for this Python
        return None
