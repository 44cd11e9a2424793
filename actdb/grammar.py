"""The two small grammars users write on the command line and in parameters: fire rules
(`--fire-rule`, `--rule`, `-p rule`) and layer lists (`--layers` of ingest and index).

Ingest, the index, the store records and the query layer all parse through these functions,
so a rule or a layer list means the same everywhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InputError


@dataclass(frozen=True)
class FireRule:
    """One fire rule: name is its canonical text (sign, abs>0.1, top:0.999, ntop:0.995, glu:+-)."""
    name: str
    kind: str              # sign | abs | top | ntop | glu
    value: float | None    # T of abs>T, Q of top:Q and ntop:Q
    signs: str = ""        # SS of glu:SS, each + or -


RULE_PARAM = "rule"   # the parameter of every statement, saved query and figure that picks the fire rule
RULE_GRAMMAR = ("sign, abs>T (a number T >= 0), top:Q or ntop:Q (a number 0.5 <= Q < 1) or glu:SS "
                "(S + or -: the signs of act_fn(gate x) and up x)")
# the kinds with thresholds fixed by the first block, and what they are: one per recorded layer (the
# manifest records them), or one per neuron (a file per rule, store/neuron_thresholds.py)
LAYER_THRESHOLDS = ("abs", "top")
NEURON_THRESHOLDS = ("ntop",)
_MINUS = "-\u2212"   # glu:SS takes the typographic minus too


def parse_fire_rule(text: str) -> FireRule:
    """'sign', 'abs>T', 'top:Q', 'ntop:Q' or 'glu:SS'; the name is canonical (abs>.10 -> abs>0.1,
    glu:+\u2212 -> glu:+-)."""
    t = str(text).strip()
    if t == "sign":
        return FireRule("sign", "sign", None)
    if t.startswith("glu:"):
        ss = "".join("-" if c in _MINUS else c for c in t[4:])
        if len(ss) == 2 and set(ss) <= {"+", "-"}:
            return FireRule(f"glu:{ss}", "glu", None, ss)
    for kind, sep in (("abs", ">"), ("top", ":"), ("ntop", ":")):
        if t.startswith(kind + sep):
            try:
                v = float(t[len(kind) + 1:])
            except ValueError:
                break
            ok = math.isfinite(v) and (v >= 0 if kind == "abs" else 0.5 <= v < 1)
            if not ok:
                break
            return FireRule(f"{kind}{sep}{v!r}", kind, v)
    raise InputError(f"--fire-rule: expected {RULE_GRAMMAR}, got {text!r}")


def parse_layer_list(spec: str, n_layers: int, option: str = "--layers") -> tuple[int, ...]:
    """'all', or comma-separated layers and ranges like '0,2,5-7'. Negative numbers count from
    the end, as in Python: -1 is the last layer, '-3--1' the last three. Returns the distinct
    layers in order."""
    if spec.strip() == "all":
        return tuple(range(n_layers))
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        # a '-' after the first character separates a range ('-1' alone is a layer)
        cut = part.find("-", 1)
        try:
            ends = [int(part[:cut]), int(part[cut + 1:])] if cut > 0 else [int(part)]
        except ValueError:
            raise InputError(f"{option}: expected 'all' or a list like 0,2,5-7, got {spec!r}") from None
        if len(ends) == 2:
            a, b = (x + n_layers if x < 0 else x for x in ends)
            if a > b:
                raise InputError(f"{option}: expected a range low-high, got {part!r}")
            out.extend(range(a, b + 1))
        else:
            out.extend(ends)
    for l in out:
        if not -n_layers <= l < n_layers:
            raise InputError(f"{option}: layer {l} out of range: the model has layers 0..{n_layers - 1}")
    layers = sorted({l + n_layers if l < 0 else l for l in out})
    if not layers:
        raise InputError(f"{option}: expected at least one layer, got {spec!r}")
    return tuple(layers)
