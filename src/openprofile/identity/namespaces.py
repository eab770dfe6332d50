"""Identity namespaces and XIDs.

A namespace code is compared case-insensitively (stored lower-cased), as AEP's own lookups show
`{"code": "ecid"}` for data ingested under `ECID`. An identity's XID is a stable hash of
(namespace, id): the same identity has the same XID in every process and after every rebuild, so
it can be the `entityId` of Profile Access answers. The profile store computes the same hash in SQL.
"""

from __future__ import annotations

import hashlib
import re

STANDARD_NAMESPACES = {"ecid", "email", "phone", "crmid", "idfa", "gaid", "aaid", "loyaltyid"}
_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


def valid_namespace(code: str) -> bool:
    """A namespace code is a letter then letters, digits, `_.-`, at most 64 characters."""
    return bool(_CODE.match(code))


def xid(namespace: str, identity: str) -> str:
    """The XID of an identity: md5 of `lower(namespace):id`, as 32 hex digits (SQL: `md5(lower(ns)||':'||id)`)."""
    return hashlib.md5(f"{namespace.lower()}:{identity}".encode()).hexdigest()


def looks_like_xid(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)
