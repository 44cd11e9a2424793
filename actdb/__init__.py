"""actdb: an out-of-core activation database for neuron-level interpretability.

    import actdb
    store = actdb.open("runs/opt125m")        # read-only
    store.manifest, store.tokens(), store.masks(layer=3), store.neuron(3, 1024)
"""
__version__ = "0.1.0"

from .errors import ActdbError, InputError, StoreError  # noqa: E402
from .settings import IngestSettings  # noqa: E402
from .store import Store, open  # noqa: E402,A004


def ingest(settings: IngestSettings):
    """Run `actdb ingest` from Python; see IngestSettings for the options."""
    from .pipeline import ingest as _ingest

    return _ingest(settings)


__all__ = ["ActdbError", "InputError", "StoreError", "IngestSettings", "Store", "open", "ingest", "__version__"]
