"""The storage layer's failures, in its own terms, so the web layer never needs to know SQLAlchemy's.

`StorageUnavailable` means the database (or its connection) is out of reach for the moment:
nothing was changed, and the same request can succeed a little later. The web layer
answers it with a 503 and a sentence. Any other database error is a bug and stays what it is.
"""


class StorageUnavailable(RuntimeError):
    """The database cannot be reached right now; nothing was changed."""
