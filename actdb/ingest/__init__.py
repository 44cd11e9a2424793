"""Ingest: corpus readers, model loading, adapters, offload, the fire rules and their hooks
(hooks.py), packing, magnitude capture, the forward loop (forward.py) and the pipeline that orders
the steps (pipeline.py). torch is imported only when an ingest runs."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..settings import IngestSettings, RaySettings


def run(settings: "IngestSettings", ray: "RaySettings | None" = None):
    """Run `actdb ingest` from Python; see actdb.IngestSettings for the options, and
    actdb.settings.RaySettings for `ray` (on a Ray cluster)."""
    from .pipeline import ingest

    return ingest(settings, ray)
