"""Data Access API routes (`/data/foundation/export`): list a batch's files and download their bytes.

Only files of successful batches of the caller's (org, sandbox) are visible. Downloads stream from
disk and honour `Range` (the header, or aepp's `range` query parameter) with 206 and Content-Range.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from openprofile.catalog import service as catalog
from openprofile.core.errors import FieldError, NotFound, RangeNotSatisfiable, ValidationFailed
from openprofile.core.platform import Platform, current_tenant, get_platform
from openprofile.core.tenancy import Tenant

router = APIRouter(prefix="/data/foundation/export", tags=["data access"])
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 1024 * 1024
MAX_PAGE = 100


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/data/foundation/export"


def _paging(start: str | None, limit: str | None) -> tuple[int, int]:
    """`start` and `limit` are strings in the spec; both must hold whole numbers."""
    problems = []
    values = []
    for name, raw, default in (("start", start, 0), ("limit", limit, MAX_PAGE)):
        if raw is None or raw == "":
            values.append(default)
        elif raw.isdigit():
            values.append(int(raw))
        else:
            problems.append(FieldError(name, f"'{raw}' is not a whole number"))
    if not problems and not 1 <= values[1] <= MAX_PAGE:
        problems.append(FieldError("limit", f"must be between 1 and {MAX_PAGE}"))
    if problems:
        raise ValidationFailed("Invalid paging: " + ", ".join(f"{p.path} {p.message}" for p in problems),
                               fields=problems)
    return values[0], values[1]


@router.get("/batches/{batch_id}/files", summary="List a batch's dataset files")
def list_batch_files(batch_id: str, request: Request, start: str | None = Query(None),
                     limit: str | None = Query(None), tenant: Tenant = Depends(current_tenant),
                     platform: Platform = Depends(get_platform)) -> dict[str, Any]:
    first, size = _paging(start, limit)
    with platform.engine.connect() as conn:
        batch = catalog.get_batch(conn, tenant, batch_id)
        files = catalog.list_files(conn, tenant, batch_id) if batch.status == "success" else []
    base = _base(request)
    page = files[first:first + size]
    body: dict[str, Any] = {
        "data": [
            {
                "dataSetFileId": f.id,
                "dataSetViewId": f.dataset_id,
                "version": "1.0.0",
                "created": str(f.created_ms),
                "updated": str(f.created_ms),
                "isValid": True,
                "records": str(f.records),
                "size": str(f.size),
                "_links": {"self": {"href": f"{base}/files/{f.id}"}},
            }
            for f in page
        ],
        "_page": {"limit": size, "count": len(files)},
        "_links": {"page": {"href": f"{base}/batches/{batch_id}/files?start={first}&limit={size}",
                            "templated": True}},
    }
    if first + size < len(files):
        body["_links"]["next"] = {"href": f"{base}/batches/{batch_id}/files?start={first + size}&limit={size}"}
    return body


def _file_and_path(
    platform: Platform, tenant: Tenant, file_id: str, path: str | None
) -> tuple[catalog.BatchFile, Path]:
    with platform.engine.connect() as conn:
        found = catalog.get_file(conn, tenant, file_id)
    if path is not None and path != found.name:
        raise NotFound(f"File '{path}' is not part of dataset file '{file_id}'.",
                       fields=[FieldError("path", f"'{path}' not found; this dataset file holds '{found.name}'")])
    disk = platform.lake.resolve(found.path)
    if not disk.is_file():
        raise NotFound(f"The data of dataset file '{file_id}' is no longer in the lake.")
    return found, disk


def _content_type(name: str) -> str:
    return {"parquet": "application/parquet", "json": "application/json", "csv": "text/csv"}.get(
        name.rsplit(".", 1)[-1].lower(), "application/octet-stream")


def _parse_range(header: str, size: int) -> tuple[int, int]:
    match = _RANGE.match(header.strip())
    if match is None or match.groups() == ("", ""):
        raise RangeNotSatisfiable(f"Range '{header}' is not of the form bytes=START-END",
                                  headers={"Content-Range": f"bytes */{size}"},
                                  fields=[FieldError("Range", "use bytes=START-END")])
    first, last = match.groups()
    if first == "":
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise RangeNotSatisfiable(f"Range '{header}' is outside the file's {size} bytes",
                                  headers={"Content-Range": f"bytes */{size}"},
                                  fields=[FieldError("Range", f"file has {size} bytes")])
    return start, end


def _stream(path: Path, start: int, end: int) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        handle.seek(start)
        remaining = end - start + 1
        while remaining > 0:
            chunk = handle.read(min(CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk


@router.get("/files/{file_id}", summary="List a dataset file, or download it with ?path=")
def get_file(file_id: str, request: Request, path: str | None = Query(None), range: str | None = Query(None),
             start: str | None = Query(None), limit: str | None = Query(None),
             tenant: Tenant = Depends(current_tenant), platform: Platform = Depends(get_platform)) -> Response:
    if path is None:
        _paging(start, limit)
        found, disk = _file_and_path(platform, tenant, file_id, None)
        base = _base(request)
        listing = {
            "data": [{"name": found.name, "length": str(disk.stat().st_size),
                      "_links": {"self": {"href": f"{base}/files/{file_id}?path={found.name}"}}}],
            "_page": {"limit": MAX_PAGE, "count": 1},
        }
        return JSONResponse(listing)
    found, disk = _file_and_path(platform, tenant, file_id, path)
    size = disk.stat().st_size
    headers = {"Accept-Ranges": "bytes"}
    requested = request.headers.get("range") or range
    if requested:
        first, last = _parse_range(requested, size)
        headers.update({"Content-Range": f"bytes {first}-{last}/{size}", "Content-Length": str(last - first + 1)})
        return StreamingResponse(_stream(disk, first, last), status_code=206, media_type=_content_type(found.name),
                                 headers=headers)
    headers["Content-Length"] = str(size)
    return StreamingResponse(_stream(disk, 0, size - 1), media_type=_content_type(found.name), headers=headers)


@router.head("/files/{file_id}", summary="A dataset file's size and type")
def head_file(file_id: str, path: str | None = Query(None), tenant: Tenant = Depends(current_tenant),
              platform: Platform = Depends(get_platform)) -> Response:
    if path is None:
        raise ValidationFailed("HEAD needs ?path=<file name>", fields=[FieldError("path", "required")])
    found, disk = _file_and_path(platform, tenant, file_id, path)
    return Response(status_code=200, headers={"Accept-Ranges": "bytes", "Content-Length": str(disk.stat().st_size),
                                              "Content-Type": _content_type(found.name)})

