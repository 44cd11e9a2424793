"""The thresholds the store's index was built with, and how labels write them: every "95 %" or
"1-5 tokens" a card, page or figure shows comes from the index record (or from the parameters
a query was given), never from a literal."""
from __future__ import annotations

from typing import Any

from ..query.catalogue import recorded_thresholds
from ..settings import threshold_range
from .explorer import explorer


def thresholds(store) -> dict[str, Any]:
    """{name: value} of the thresholds the index of `store` (an actdb.Store or an Explorer) was
    built with: its index_info view, which the views default to."""
    ex = explorer(store)
    return ex.cached("thresholds", lambda: recorded_thresholds(ex.st()))


def share(value: float) -> str:
    """A share as a percentage: 0.95 -> '95 %'."""
    return f"{100 * float(value):g} %"


def label(threshold: str, value: Any) -> str:
    """Threshold `threshold`'s value as a label: a share as a percentage, a number as it reads."""
    if threshold_range(threshold) == "share":
        return share(value)
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def labels(values: dict[str, Any]) -> dict[str, str]:
    """label() of every threshold in `values`."""
    return {k: label(k, v) for k, v in values.items()}


def criteria(values: dict[str, Any]) -> dict[str, str]:
    """What each finding means at these thresholds, in words: coverage, token_detector,
    trigram_detector, positional, massive (each where `values` holds its thresholds)."""
    t = {k: label(k, v) for k, v in values.items()}
    out = {}
    if {"p_cov"} <= t.keys():
        out["coverage"] = f"coverage: the fewest n-grams covering {t['p_cov']} of a neuron's fires"
    for kind, unit, most in (("token_detector", "token", "tok_max_cov"), ("trigram_detector", "trigram", "tri_max_cov")):
        if {most, "p_cov", "p_token", "p_share"} <= t.keys():
            out[kind] = (f"{unit} detector: 1-{t[most]} {unit}s cover {t['p_cov']} of its fires, and the {unit}s with "
                         f"P(fires | {unit}) >= {t['p_token']} account for >= {t['p_share']} of them")
    if {"mi_min", "min_switches"} <= t.keys():
        out["positional"] = (f"positional: I(act; pos) > {t['mi_min']}; oscillatory: >= {t['min_switches']} "
                             "switches between low and high frequency")
    if {"abs_min", "ratio"} <= t.keys():
        out["massive"] = f"massive: |h| > {t['abs_min']} and >= {t['ratio']} x the sequence's median |h|"
    return out
