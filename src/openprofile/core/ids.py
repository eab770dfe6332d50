"""Identifiers in the shapes AEP uses, so clients that pattern-match them keep working."""

from __future__ import annotations

import secrets
import uuid


def dataset_id() -> str:
    """24 hex digits, like `5c8c3c555033b814b69f947f`."""
    return secrets.token_hex(12)


def batch_id() -> str:
    """32 hex digits, like `da5cfb4de32c4b93a09f7e37fa53ad52`."""
    return secrets.token_hex(16)


def new_uuid() -> str:
    return str(uuid.uuid4())


def request_id() -> str:
    return secrets.token_urlsafe(24)
