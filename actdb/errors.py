"""actdb's own errors: anything the user can fix, reported as one line by the CLI.

Every class is an ActdbError (the CLI prints its message alone) and also the built-in error it is
a kind of, so Python callers catch it as they would any other: `except ValueError` for a bad
option, `except TimeoutError` for a query cut off, `except LookupError` for an explorer page that
names nothing.
"""


class ActdbError(Exception):
    """Base class: bad input, bad store, bad settings. The message is the whole story."""


class InputError(ActdbError, ValueError):
    """A corpus file, model, option or query the user gave cannot be used."""


class StoreError(ActdbError, RuntimeError):
    """A store is missing, incomplete, corrupt or of an unknown format.

    Not an OSError: the operating system did its part (the bytes were read; they are not what
    actdb recorded), and the `except OSError` around ingest and the index build would report a
    store error as a failed write."""


class CheckTimeout(StoreError, TimeoutError):
    """The store's file checks ran past their deadline; `checked` files were verified (and are
    remembered by the guard that checked them). A query turns it into a QueryTimeout."""

    def __init__(self, checked: int) -> None:
        super().__init__(f"the file checks ran past their deadline ({checked} files checked)")
        self.checked = checked


class QueryTimeout(InputError, TimeoutError):
    """A statement ran past its time limit and was interrupted (the user's to narrow or allow)."""


class QueryMemory(InputError, MemoryError):
    """A statement needed more memory than its connection may use (connect's memory_mb)."""


class NotFound(ActdbError, LookupError):
    """A layer, neuron, token, document, store, figure or saved query that does not exist: the
    explorer's 404 naming it."""
