"""What "fired" means, read where: the one home of the fire rules, for the ingest's forward loop
(forward.py) and the explorer's probe (serve/probe.py), which must agree bit for bit.

Sites, the points of a recorded layer that are hooked (module paths from the adapters):
  act    the activation module's output: act(fc_in x), for gated FFNs act_fn(gate_proj x)
  h      the output projection's input, the value it reads: act(fc_in x), or act_fn(gate x) * up x
  up     gated FFNs: the up projection's output, up x
  resid  the block's output, the residual stream (magnitude capture only)

Readings, values derived from a site once per layer and batch for every rule that reads them, on
the batch's valid (non-padding) token rows:
  act > 0  bool                                   (sign)
  |h|      float32, exact from the model's dtype  (abs>T, top:Q, ntop:Q)
  signs    int8, 3 sign(act_fn(gate x)) + sign(up x), derived at h with act and up kept  (glu:SS)

Fire tests, one class per rule kind (KINDS), each its mask [tokens, d_ffn] from its reading:
  sign    act > 0 (the papers' rule; for gated FFNs the gate branch, never gate * up)
  abs>T   |h| > T
  top:Q   |h| > the layer's Q-quantile of |h| over the first block of tokens (thresholds.py)
  ntop:Q  |h| > the neuron's own Q-quantile of |h| over the first block of tokens (thresholds.py)
  glu:SS  gated FFNs: act_fn(gate x) and up x of the signs SS (each strictly: 0 is neither sign)

A new rule kind is one FireTest subclass added to KINDS, and its text in the grammar of
grammar.parse_fire_rule. The class names the Reading it needs and says how its mask follows from
it (and, if its thresholds come from the first block, how they are fixed). A reading of two points
of the layer, as glu:SS's signs of act_fn(gate x) and up x are, is derived at the later one and names
the earlier in `also`; a point not hooked yet is a Site naming an adapter field. A reading may also
give its bits packed straight from the site's value (`pack`: the sign rule's act > 0 in one compiled
pass); a test whose mask is its reading (`mask_is_reading`) then hands those on (`on_packed`). The hooks, the
forward loop, the ingest state, the manifest's records and the probe take it from there. Thresholds
are one number per layer (the manifest records them) or d_ffn per layer (grammar.NEURON_THRESHOLDS;
`recorded` gives them as an array [layers, d_ffn]): those are too many for the manifest, so each such
rule's go to a file of its own, committed with block 0 (store/neuron_thresholds.py). A kind that needs something of the model says so in `check`.

The magnitude capture (capture.py) reads its inputs here too: `ffn` the activation output, `resid`
the block output.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Iterable

import numpy as np
import torch

from ..errors import InputError
from ..store.layout import NEURON_THRESHOLDS_FILE, RULES_DIR, rule_slug
from .adapters import Adapter, get_module
from .capture import HOLD_BYTES, layer_stats, magnitude_stats
from .models import LoadedModel
from .packing import pack_positive
from .thresholds import NeuronCandidates, TopCandidates, floor32

if TYPE_CHECKING:   # a parsed --fire-rule; only its name, kind and value are read here
    from ..grammar import FireRule


class StopForward(Exception):
    """Raised after the last recorded layer: the rest of the network is not needed."""


@dataclass(frozen=True)
class Site:
    """A hooked point of a recorded layer."""
    name: str
    module: str | None   # the Adapter field naming the module inside a block; None: the block itself
    value: str           # "output": the module's output (a forward hook); "input": its first input (a pre-hook)

    def module_in(self, block: torch.nn.Module, adapter: Adapter) -> torch.nn.Module:
        return block if self.module is None else get_module(block, getattr(adapter, self.module))


ACT = Site("act", "act", "output")
H = Site("h", "fc_out", "input")
RESID = Site("resid", None, "output")
UP = Site("up", "fc_up", "output")

# the capture kinds (store.layout.CAPTURE_KINDS) and the site each reads
CAPTURE_SITES = {"ffn": ACT, "resid": RESID}

Rows = Callable[[torch.Tensor], torch.Tensor]   # [batch, seq, d] or [batch*seq, d] -> [n valid, d]
Thresholds = list[float] | np.ndarray   # a rule's: per layer, or per neuron float32 [layers, d_ffn]


@dataclass(frozen=True, eq=False)
class Reading:
    """A value the fire tests of a layer read, derived at `site` once per layer and batch:
    derive(x, rows, *earlier) -> [n, d_ffn], x the site's value, rows() its valid token rows,
    earlier the values of the sites in `also` (hooked before `site` in the same layer). pack(x), for
    a bool reading of no `also`: the bits of derive(x, all rows) packed as packing.pack_rows packs
    them, [d_ffn, n/8] uint8, or None where it cannot (then derive and pack)."""
    name: str
    site: Site
    derive: Callable[..., torch.Tensor]
    also: tuple[Site, ...] = ()
    pack: Callable[[torch.Tensor], torch.Tensor | None] | None = None


# each picks the valid rows where the copy it makes is smaller: after the compare (bool), before the float32 abs
POSITIVE = Reading("act > 0", ACT, lambda x, rows: rows(x > 0), pack=pack_positive)     # [n, d_ffn] bool
MAGNITUDE = Reading("|h|", H, lambda x, rows: rows(x.detach()).float().abs())            # [n, d_ffn] float32
# derived at h, after both act_fn(gate x) and up x whatever order a family computes them in
GLU_SIGNS = Reading("signs", H, lambda h, rows, act, up: (torch.sign(rows(act)) * 3 + torch.sign(rows(up)))
                    .to(torch.int8), also=(ACT, UP))                                     # [n, d_ffn] int8


class FireTest:
    """One fire rule over the recorded layers: `fired` gives layer i's mask of a batch's rows from
    the rule's reading. first_rows: tokens of the first block (a calibrated rule's thresholds
    come from it); thresholds: the thresholds recorded before, if any (per layer, or per neuron
    float32 [layers, d_ffn])."""
    kind: ClassVar[str]
    reading: ClassVar[Reading]
    calibrated: ClassVar[bool] = False   # thresholds fixed by the first block, then recorded (ingest state)
    mask_is_reading: ClassVar[bool] = False   # fired(i, v, row0) is v: the reading's packed bits are the mask's

    def __init__(self, rule: FireRule, n_layers: int, d_ffn: int, first_rows: int,
                 thresholds: Thresholds | None = None) -> None:
        self.rule, self.name = rule, rule.name

    @classmethod
    def check(cls, rule: FireRule, adapter: Adapter) -> None:
        """Refuse, in one line, a model this kind cannot read (before any work)."""

    @property
    def fixed(self) -> bool:
        """Whether every layer's threshold is known (a calibrated rule's, after the first block)."""
        return True

    def fired(self, i: int, value: torch.Tensor, row0: int) -> torch.Tensor:
        """value: the reading [n, d_ffn] of token rows row0..row0+n of layer i -> fired [n, d_ffn] bool."""
        raise NotImplementedError

    def patch_first_block(self, masks: np.ndarray) -> None:
        """masks: block 0, [layers, d_ffn, nbytes] uint8: set the bits `fired` could not yet know."""

    def thresholds(self) -> tuple[float, ...]:
        """Per recorded layer, as the manifest records them; () for a rule without."""
        return ()

    def recorded(self) -> Thresholds:
        """The fixed thresholds as the ingest hands them on (ingest state, Ray workers, fire_tests)."""
        return list(self.thresholds())

    def definition(self, adapter: Adapter, first_rows: int, sign_text: str) -> str:
        """The rule in words, for the manifest."""
        raise NotImplementedError


def _set_bits(mask: np.ndarray, rows: np.ndarray, neurons: np.ndarray) -> None:
    """mask: one layer's block, [d_ffn, nbytes] uint8: set the bits of (row, neuron)."""
    np.bitwise_or.at(mask, (neurons, rows // 8), (1 << (rows % 8)).astype(np.uint8))


class Sign(FireTest):
    kind = "sign"
    reading = POSITIVE
    mask_is_reading = True

    def fired(self, i: int, value: torch.Tensor, row0: int) -> torch.Tensor:
        return value

    def definition(self, adapter: Adapter, first_rows: int, sign_text: str) -> str:
        return sign_text


def _h_words(adapter: Adapter) -> str:
    return (f"h = {adapter.fc_out} input = act_fn(gate_proj x) * up_proj x" if adapter.gated
            else f"h = {adapter.fc_out} input = act({adapter.fc_in} x)")


class _AboveThreshold(FireTest):
    """|h| above a per-layer threshold t: compared in float32 against floor32(t), which is exact
    (thresholds.py)."""
    reading = MAGNITUDE

    def __init__(self, rule: FireRule, n_layers: int, d_ffn: int, first_rows: int,
                 thresholds: list[float] | None = None) -> None:
        super().__init__(rule, n_layers, d_ffn, first_rows, thresholds)
        self.values: list[float | None] = list(thresholds) if thresholds else [None] * n_layers
        self.cuts = [None if t is None else floor32(t) for t in self.values]

    @property
    def fixed(self) -> bool:
        return all(v is not None for v in self.values)

    def fired(self, i: int, value: torch.Tensor, row0: int) -> torch.Tensor:
        return value > self.cuts[i]

    def thresholds(self) -> tuple[float, ...]:
        return tuple(self.values)


class AbsAbove(_AboveThreshold):
    kind = "abs"

    def __init__(self, rule: FireRule, n_layers: int, d_ffn: int, first_rows: int,
                 thresholds: list[float] | None = None) -> None:
        super().__init__(rule, n_layers, d_ffn, first_rows, [float(rule.value)] * n_layers)

    def definition(self, adapter: Adapter, first_rows: int, sign_text: str) -> str:
        return f"|h| > {self.rule.value!r}, {_h_words(adapter)}"


class _Calibrated(FireTest):
    """Thresholds fixed by the first block (thresholds.py's candidates, `calib`, one per layer): each
    layer's when the block's last row has passed; until then the block's rows read False and
    patch_first_block sets their bits. A subclass says when a layer's threshold is known, what its
    cut is on a device, and how the candidates fix it."""
    calibrated = True
    calib: list | None

    def known(self, i: int) -> bool:
        raise NotImplementedError

    def cut(self, i: int, device: torch.device) -> float | torch.Tensor:
        raise NotImplementedError

    def fix(self, i: int, candidates) -> None:
        raise NotImplementedError

    def fired(self, i: int, value: torch.Tensor, row0: int) -> torch.Tensor:
        if self.known(i):
            return value > self.cut(i, value.device)
        c = self.calib[i]
        k = min(value.shape[0], c.rows - row0)
        c.push(value[:k], row0)
        out = torch.zeros(value.shape, dtype=torch.bool, device=value.device)
        if c.complete:
            self.fix(i, c)
            if k < value.shape[0]:
                out[k:] = value[k:] > self.cut(i, value.device)
        return out

    def patch_first_block(self, masks: np.ndarray) -> None:
        if self.calib is None:
            return
        for i, c in enumerate(self.calib):
            _set_bits(masks[i], *c.above(self.cut(i, c.vals.device)))
        self.calib = None   # done: free the candidates


class TopQuantile(_Calibrated, _AboveThreshold):
    """Without recorded thresholds, each layer's is fixed by the first block (the layer's quantile)."""
    kind = "top"

    def __init__(self, rule: FireRule, n_layers: int, d_ffn: int, first_rows: int,
                 thresholds: list[float] | None = None) -> None:
        super().__init__(rule, n_layers, d_ffn, first_rows, thresholds)
        self.calib = None if thresholds else [TopCandidates(first_rows, d_ffn, rule.value) for _ in range(n_layers)]

    def known(self, i: int) -> bool:
        return self.cuts[i] is not None

    def cut(self, i: int, device: torch.device) -> float:
        return self.cuts[i]

    def fix(self, i: int, candidates: TopCandidates) -> None:
        self.values[i] = candidates.threshold()
        self.cuts[i] = floor32(self.values[i])

    def definition(self, adapter: Adapter, first_rows: int, sign_text: str) -> str:
        return (f"|h| > the layer's {self.rule.value!r}-quantile of |h| over the first {first_rows:,} tokens "
                f"x all neurons (numpy's linear method; thresholds per layer), {_h_words(adapter)}")


class NeuronTopQuantile(_Calibrated):
    """|h| above the neuron's own threshold, float32 [d_ffn] per layer (exact as they are), fixed by
    the first block as top:Q's are (the neuron's quantile)."""
    kind = "ntop"
    reading = MAGNITUDE

    def __init__(self, rule: FireRule, n_layers: int, d_ffn: int, first_rows: int,
                 thresholds: Thresholds | None = None) -> None:
        super().__init__(rule, n_layers, d_ffn, first_rows, thresholds)
        given = None if thresholds is None else np.asarray(thresholds, dtype=np.float32).reshape(n_layers, d_ffn)
        self.values: list[np.ndarray | None] = list(given) if given is not None else [None] * n_layers
        self.cuts: list[torch.Tensor | None] = [None] * n_layers   # values[i] on the reading's device
        self.calib = None if given is not None else [NeuronCandidates(first_rows, d_ffn, rule.value)
                                                     for _ in range(n_layers)]

    @property
    def fixed(self) -> bool:
        return all(v is not None for v in self.values)

    def known(self, i: int) -> bool:
        return self.values[i] is not None

    def cut(self, i: int, device: torch.device) -> torch.Tensor:
        if self.cuts[i] is None or self.cuts[i].device != device:
            self.cuts[i] = torch.tensor(self.values[i], device=device)          # [d_ffn] float32
        return self.cuts[i]

    def fix(self, i: int, candidates: NeuronCandidates) -> None:
        self.values[i] = candidates.thresholds()

    def recorded(self) -> np.ndarray:
        return np.stack(self.values)                                            # [layers, d_ffn] float32

    def definition(self, adapter: Adapter, first_rows: int, sign_text: str) -> str:
        return (f"|h| > the neuron's own {self.rule.value!r}-quantile of |h| over the first {first_rows:,} tokens "
                f"(numpy's linear method; thresholds per neuron in {RULES_DIR}/{rule_slug(self.name)}/"
                f"{NEURON_THRESHOLDS_FILE}, the neuron_thresholds view), {_h_words(adapter)}")


class GluSigns(FireTest):
    """One of the four sign cases of a gated FFN, whose output projection reads act_fn(gate x) * up x."""
    kind = "glu"
    reading = GLU_SIGNS

    def __init__(self, rule: FireRule, n_layers: int, d_ffn: int, first_rows: int,
                 thresholds: Thresholds | None = None) -> None:
        super().__init__(rule, n_layers, d_ffn, first_rows, thresholds)
        gate, up = (1 if s == "+" else -1 for s in rule.signs)
        self.code = 3 * gate + up   # the reading where both signs are these

    @classmethod
    def check(cls, rule: FireRule, adapter: Adapter) -> None:
        if not adapter.gated:
            raise InputError(f"--fire-rule {rule.name}: expected a model with a gated FFN (act_fn(gate x) * up x), "
                             f"got the {adapter.family} family, whose FFN is not gated")

    def fired(self, i: int, value: torch.Tensor, row0: int) -> torch.Tensor:
        return value == self.code

    def definition(self, adapter: Adapter, first_rows: int, sign_text: str) -> str:
        gate, up = (">" if s == "+" else "<" for s in self.rule.signs)
        return (f"act_fn(gate_proj x) {gate} 0 and up_proj x {up} 0 (a sign case of the gated FFN, "
                f"h = {adapter.fc_out} input = act_fn(gate_proj x) * up_proj x)")


KINDS: dict[str, type[FireTest]] = {cls.kind: cls for cls in (Sign, AbsAbove, TopQuantile, NeuronTopQuantile,
                                                               GluSigns)}


def check_rules(rules: Iterable[FireRule], adapter: Adapter) -> None:
    """Refuse, in one line and before any work, a rule the model cannot be read under (glu:SS of a
    model whose FFN is not gated)."""
    for r in rules:
        KINDS[r.kind].check(r, adapter)


def fire_tests(rules: Iterable[FireRule], n_layers: int, d_ffn: int, first_rows: int,
               thresholds: dict[str, Thresholds]) -> list[FireTest]:
    """The rules' tests, in order; a calibrated rule without recorded `thresholds` is fixed by the
    first block (`first_rows` tokens) of the forward it runs in."""
    return [KINDS[r.kind](r, n_layers, d_ffn, first_rows, thresholds.get(r.name)) for r in rules]


def unfixed_rules(rules: Iterable[FireRule], thresholds: dict[str, object]) -> list[str]:
    """The calibrated rules whose thresholds are not recorded yet (block 0 fixes them)."""
    return [r.name for r in rules if KINDS[r.kind].calibrated and r.name not in thresholds]


def calibrated_thresholds(tests: Iterable[FireTest]) -> dict[str, Thresholds]:
    """The fixed thresholds of the calibrated rules (per layer, or per neuron [layers, d_ffn])."""
    return {t.name: t.recorded() for t in tests if t.calibrated and t.fixed}


class LayerHooks:
    """Hooks on the recorded `layers` of a loaded model (models.LoadedModel) for one forward at a
    time (`forward`): each fire test's mask of each layer goes to on_fired(rule name, i, fired
    [n, d_ffn] bool) as soon as it is known, so no layer's bool mask outlives its hook; or, given
    on_packed, packed (packing.pack_rows) to on_packed(rule name, i, packed [d_ffn, n/8] uint8) where
    the rule's reading packs itself (Reading.pack) over all the batch's rows (none padding); with
    `capture` kinds, each layer's magnitude stats of the batch are in stats[kind][i] after it.
    The forward stops after the last recorded layer. A context manager: the hooks are removed
    on leaving it.

    On CPU the capture's values are held (up to capture.HOLD_BYTES) and their statistics computed
    together, after the forward or when that much is held: one pass over the threads, not one per
    layer. A held value must not change after its hook: the forward runs under no_grad, whose
    version counters show an in-place write, and such a write is an error, never a wrong statistic."""

    def __init__(self, lm: LoadedModel, layers: Iterable[int], tests: list[FireTest],
                 on_fired: Callable[[str, int, torch.Tensor], None], capture: Iterable[str] = (),
                 capture_topk: int = 0, on_packed: Callable[[str, int, torch.Tensor], None] | None = None) -> None:
        self.lm, self.layers = lm, tuple(layers)
        self.on_fired, self.on_packed, self.capture_topk = on_fired, on_packed, capture_topk
        self.stats: dict[str, list[dict[str, torch.Tensor] | None]] = {
            kind: [None] * len(self.layers) for kind in capture}
        # the batch's rows (set by forward)
        self.valid: torch.Tensor | None = None    # [batch*seq] bool
        self.lengths: list[int] = []
        self.row0 = 0
        self._rows: Rows = self._all_rows
        # capture kinds -> (i, value, its version) held for one statistics pass (_stats_of_held)
        self._held: dict[str, list[tuple[int, torch.Tensor, int]]] = {kind: [] for kind in capture}
        self._held_bytes = 0
        # site -> what its hook does: [(reading, its tests)], capture kinds; and the sites kept for a later one
        readings: dict[Reading, list[FireTest]] = {}
        for t in tests:
            readings.setdefault(t.reading, []).append(t)
        self._plan: dict[Site, tuple[list[tuple[Reading, list[FireTest]]], list[str]]] = {}
        for reading, ts in readings.items():
            self._plan.setdefault(reading.site, ([], []))[0].append((reading, ts))
        for kind in capture:
            self._plan.setdefault(CAPTURE_SITES[kind], ([], []))[1].append(kind)
        keep = {s for r in readings for s in r.also}
        for s in keep:
            self._plan.setdefault(s, ([], []))
        self._kept: list[dict[Site, torch.Tensor]] = [{} for _ in self.layers]
        self._handles: list = []
        try:
            for i, l in enumerate(self.layers):
                block = lm.layers[l]
                for site, (rs, kinds) in self._plan.items():
                    hook = self._hook(i, site, rs, kinds, site in keep)
                    module = site.module_in(block, lm.adapter)
                    self._handles.append(module.register_forward_hook(hook) if site.value == "output"
                                         else module.register_forward_pre_hook(hook))
            self._handles.append(lm.layers[max(self.layers)].register_forward_hook(_stop))
        except BaseException:
            self.remove()
            raise

    def _all_rows(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, x.shape[-1])                             # [batch*seq, d]

    def _valid_rows(self, x: torch.Tensor) -> torch.Tensor:
        # [batch, seq, d], or [batch*seq, d] where the model flattens (OPT) -> [n, d], n valid tokens
        return x.reshape(-1, x.shape[-1])[self.valid]

    def _hook(self, i: int, site: Site, readings: list[tuple[Reading, list[FireTest]]], kinds: list[str],
              keep: bool) -> Callable:
        kept = self._kept[i]

        def hook(module, args, output=None):
            x = args[0] if output is None else (output[0] if isinstance(output, tuple) else output)
            if keep:
                kept[site] = x
            for reading, tests in readings:
                packed = self._packed(reading, tests, x)
                if packed is not None:
                    for t in tests:
                        self.on_packed(t.name, i, packed)
                    continue
                v = reading.derive(x, self._rows, *(kept.pop(s) for s in reading.also))
                for t in tests:
                    self.on_fired(t.name, i, t.fired(i, v, self.row0))
            for kind in kinds:
                if x.device.type == "cpu" and not torch.is_inference(x):
                    self._held[kind].append((i, x, x._version))
                    self._held_bytes += x.nbytes
                    if self._held_bytes >= HOLD_BYTES:
                        self._stats_of_held()
                else:
                    self.stats[kind][i] = magnitude_stats(x, self.valid, self.lengths, self.capture_topk)
        return hook

    def _packed(self, reading: Reading, tests: list[FireTest], x: torch.Tensor) -> torch.Tensor | None:
        """The reading's bits packed straight from x, where its tests' masks are the reading and the
        batch has no padding (its rows are all rows: bound methods compare equal, never identical); else None."""
        if (self.on_packed is None or reading.pack is None or reading.also or self._rows != self._all_rows
                or not all(t.mask_is_reading for t in tests)):
            return None
        return reading.pack(x)

    def _stats_of_held(self) -> None:
        """The held values' statistics, one layer_stats pass per kind; then nothing is held."""
        for kind, held in self._held.items():
            for i, x, version in held:
                if x._version != version:
                    raise InputError(f"{self.lm.adapter.family}: layer {self.layers[i]}'s {kind} values were "
                                     "changed in place after their hook; the capture cannot read this model")
            if held:
                got = layer_stats([x for _, x, _ in held], self.valid, self.lengths, self.capture_topk)
                for (i, _, _), st in zip(held, got):
                    self.stats[kind][i] = st
        self._drop_held()

    def _drop_held(self) -> None:
        for held in self._held.values():
            held.clear()
        self._held_bytes = 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, lengths: np.ndarray,
                row0: int = 0) -> None:
        """One forward of a right-padded batch, input_ids and attention_mask [batch, seq] on the
        model's device; lengths: the sequences' token counts (host); row0: the store row of the
        batch's first token (a calibrating rule's first block is rows 0..first_rows)."""
        padded = bool((lengths != input_ids.shape[1]).any())
        self.valid = attention_mask.bool().reshape(-1)                # [batch*seq]
        self.lengths = lengths.tolist()
        self.row0 = row0
        self._rows = self._valid_rows if padded else self._all_rows
        self._drop_held()   # a forward that raised may have left some
        # no_grad, not inference_mode, where values are held: inference tensors keep no version counter
        with torch.no_grad() if self._held else torch.inference_mode():
            try:
                self.lm.base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            except StopForward:
                pass
        self._stats_of_held()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._drop_held()

    def __enter__(self) -> "LayerHooks":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _stop(module, args, output) -> None:
    raise StopForward
