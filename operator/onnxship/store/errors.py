"""What can go wrong with an artifact store, as types the CLI and the operator can tell apart."""

from __future__ import annotations


class StoreError(Exception):
    """The artifact store failed or holds data that does not match its manifest."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (network, 5xx after retries): worth a retry."""


class StoreNotFound(StoreError):
    """The bucket or folder named by the store URI does not exist."""


class StoreAccessDenied(StoreError):
    """The credentials were refused for this bucket or prefix."""


class IntegrityError(StoreError):
    """A blob's bytes do not match the digest or size its manifest names."""
