"""Segment memberships as Parquet under the profile directory, one current file per merge policy.

`{profile_dir}/{org}/{sandbox}/segments/{policy}/memberships-<uuid>.parquet` holds every
(`_group`, `segment_id`, `status`, `last_qualification`) of that merge policy's profiles
(`_group VARCHAR, segment_id VARCHAR, status VARCHAR, last_qualification TIMESTAMPTZ`). The file named by
`CURRENT` beside it is the current membership: a run writes a new file (`write`), then `publish` moves the
pointer by an atomic rename and removes the older files. Statuses follow aep-semantics.md §3.2:
`realized` on entering, `existing` while staying in, `exited` on leaving; `last_qualification` is when
the profile entered or left; `exited` rows older than 30 days are purged by the next run. Files are sorted
by `_group` in small row groups, so a lookup reads one profile's memberships without a scan.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

import duckdb

from openprofile.core.platform import Platform
from openprofile.core.tenancy import Tenant
from openprofile.engine import profiles as plans
from openprofile.engine.profile_store import LOOKUP_ROW_GROUP

POINTER = "CURRENT"
DIRECTORY = "segments"  # under the tenant's profile store directory; kept by `openprofile rebuild`


def policy_dir(platform: Platform, tenant: Tenant, policy_id: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", policy_id)
    return platform.settings.profile_dir / tenant.org_id / tenant.sandbox_name / DIRECTORY / safe


def current_memberships(platform: Platform, tenant: Tenant, policy_id: str) -> Path | None:
    """The current membership Parquet file of a merge policy, or None if no segment job has published one."""
    pointer = policy_dir(platform, tenant, policy_id) / POINTER
    try:
        name = pointer.read_text().strip()
    except FileNotFoundError:
        return None
    path = pointer.parent / name
    return path if name and path.exists() else None


def write(conn: duckdb.DuckDBPyConnection, platform: Platform, tenant: Tenant, policy_id: str, select: str) -> Path:
    """Write the rows of `select` as a new (unpublished) membership file of the policy."""
    directory = policy_dir(platform, tenant, policy_id)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"memberships-{uuid.uuid4().hex}.parquet"
    escaped = str(target).replace("'", "''")
    conn.execute(f"COPY (SELECT * FROM ({select}) ORDER BY _group, segment_id) TO '{escaped}' "
                 f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {LOOKUP_ROW_GROUP})")
    return target


def of_profile(path: Path, group: str) -> dict[str, dict[str, Any]]:
    """One profile's memberships in a membership file (sorted by `_group`: a point read of one small row
    group), as `segmentMembership.ups` shows them: segment id → {status, lastQualificationTime}."""
    table = plans.sorted_rows(path, "_group", [group.encode()], ["segment_id", "status", "last_qualification"])
    return {str(row["segment_id"]): {"status": row["status"], "lastQualificationTime": row["last_qualification"]}
            for row in table.to_pylist()}


def publish(path: Path) -> None:
    """Make `path` the current membership of its policy (atomic rename of the pointer), then remove the others."""
    pointer_tmp = path.parent / f"{POINTER}.{uuid.uuid4().hex}.tmp"
    pointer_tmp.write_text(path.name)
    os.replace(pointer_tmp, path.parent / POINTER)
    for old in path.parent.glob("memberships-*.parquet"):
        if old.name != path.name:
            old.unlink(missing_ok=True)


def discard(path: Path) -> None:
    """Remove a written file that was not published (the job was cancelled or failed)."""
    path.unlink(missing_ok=True)
