"""The ingest state, STORE/ingest-state.json: present while an ingest runs or was interrupted.
What a resumed ingest must match (identity) and how far the interrupted one got."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..files import atomic_write_text
from .layout import STATE_FILE
from .record import check_version, from_dict, parse_json, read_text, seal, unseal

# 2: the record carries its checksum (record.seal), `tokenized` the digests of the staging files;
# 1: identity, tokenized, blocks_done (files written before the version field read as 1).
STATE_VERSION = 2
TOKENIZED_COUNTS = ("n_tokens", "n_sequences", "n_docs", "n_parts")


@dataclass(frozen=True)
class IngestState:
    identity: dict[str, Any]                 # settings, weights and corpus a resume must match
    tokenized: dict[str, Any] | None = None  # phase 1's counts once its tables are written
    blocks_done: int = 0                     # mask blocks committed, in order
    # per calibrated rule, its thresholds, fixed by the first block and committed with it: a resumed
    # ingest reads them back instead of recomputing them. top:Q: the per-layer numbers; ntop:Q: the
    # digest {bytes, sha256} of its per-neuron file (store/neuron_thresholds.py)
    thresholds: dict[str, Any] = field(default_factory=dict)
    format_version: int = STATE_VERSION

    def replace(self, **kw: Any) -> "IngestState":
        return dataclasses.replace(self, **kw)

    def to_json(self) -> str:
        return seal(json.loads(json.dumps(dataclasses.asdict(self))))

    @classmethod
    def from_json(cls, text: str, source: str) -> "IngestState":
        raw = parse_json(text, source, "an ingest state")
        if isinstance(raw, dict):
            raw = {"format_version": 1, **raw}
        check_version(raw, source, (STATE_VERSION,), STATE_VERSION,
                      old_hint=" (an ingest interrupted under an older actdb: start it again with --overwrite)")
        st = from_dict(cls, unseal(raw, source), source)
        st.validate(source)
        return st

    def validate(self, source: str) -> None:
        if self.blocks_done < 0:
            raise StoreError(f"{source}: blocks_done: expected an integer >= 0, got {self.blocks_done!r}")
        for rule, values in self.thresholds.items():
            numbers = isinstance(values, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       and v >= 0 for v in values)
            digest = (isinstance(values, dict) and set(values) == {"bytes", "sha256"}
                      and isinstance(values["bytes"], int) and isinstance(values["sha256"], str))
            if not (numbers or digest):
                raise StoreError(f"{source}: thresholds.{rule}: expected a list of numbers >= 0 or a file's digest "
                                 f"{{bytes, sha256}}, got {values!r}")
        if self.tokenized is not None:
            for k in TOKENIZED_COUNTS:
                v = self.tokenized.get(k)
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise StoreError(f"{source}: tokenized.{k}: expected an integer >= 0, got {v!r}")


def read_state(root: Path) -> IngestState | None:
    """The ingest state of `root`; None when there is none."""
    p = Path(root) / STATE_FILE
    text = read_text(p)
    if text is None:
        return None
    return IngestState.from_json(text, str(p))


def write_state(root: Path, state: IngestState) -> None:
    atomic_write_text(Path(root) / STATE_FILE, state.to_json())
