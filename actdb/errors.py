"""actdb's own errors: anything the user can fix, reported as one line by the CLI."""


class ActdbError(Exception):
    """Base class: bad input, bad store, bad settings. The message is the whole story."""


class InputError(ActdbError):
    """A corpus file, model or option the user gave cannot be used."""


class StoreError(ActdbError):
    """A store is missing, incomplete, corrupt or of an unknown format."""


class NotFound(InputError):
    """A layer, neuron, token, document, store, figure or saved query that does not exist
    (the explorer answers 404 naming it)."""
