"""actdb: an out-of-core activation database for neuron-level interpretability.

    import actdb
    store = actdb.open("runs/opt125m")        # read-only
    store.manifest, store.tokens(), store.masks(layer=3), store.neuron(3, 1024)
    actdb.ingest.run(actdb.IngestSettings(model=..., corpus=(...), out=...))

Importing actdb loads no torch: ingest imports it when it runs. Imported before torch, it sets how
long torch's OpenMP workers spin idle (devices.quiet_openmp; docs/ingest.md).
"""
from .devices import quiet_openmp

quiet_openmp()

from . import ingest  # noqa: F401  (light: the pipeline and torch load in ingest.run)
from ._version import __version__
from .errors import ActdbError, InputError, QueryMemory, QueryTimeout, StoreError
from .query.handle import Store, open  # noqa: A004
from .settings import IngestSettings

__all__ = ["ActdbError", "InputError", "QueryMemory", "QueryTimeout", "StoreError", "IngestSettings",
           "Store", "open", "ingest", "__version__"]
