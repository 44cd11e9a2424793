"""The suite's tiers (tests/README.md) for parametrized tests (a helper, not tests): some cases
in the fast tier, the others marked slow."""
from __future__ import annotations

from typing import Any, Iterable

import pytest


def slow_except(values: Iterable[Any], *fast: Any) -> list:
    """`values` for pytest.mark.parametrize, each of them but those in `fast` marked slow (a tuple
    is the values of several arguments, as parametrize takes them; the test ids stay the same)."""
    return [v if v in fast else pytest.param(*(v if isinstance(v, tuple) else (v,)), marks=pytest.mark.slow)
            for v in values]
