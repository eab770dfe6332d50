"""The running platform: settings, metadata store, lake and job queue, opened once per process.

Routes reach it through `get_platform`; the tenant of a request through `current_tenant`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Depends, Request
from sqlalchemy.engine import Engine

from openprofile.core.db import open_database
from openprofile.core.lake import Lake
from openprofile.core.queue import Handler, JobQueue
from openprofile.core.settings import AuthMode, Settings
from openprofile.core.tenancy import Tenant, resolve_tenant, signing_key


@dataclass
class Platform:
    settings: Settings
    engine: Engine
    lake: Lake
    queue: JobQueue
    signing_key: str
    handlers: dict[str, Handler] = field(default_factory=dict)

    @classmethod
    def open(cls, settings: Settings) -> Platform:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = open_database(settings.resolved_database_url)
        lake = Lake(settings.lake_dir, settings.staging_dir, settings.uploads_dir)
        for path in (lake.root, lake.staging, lake.uploads):
            path.mkdir(parents=True, exist_ok=True)
        return cls(
            settings=settings,
            engine=engine,
            lake=lake,
            queue=JobQueue(engine, lease_seconds=settings.lease_seconds),
            signing_key=signing_key(engine),
        )

    def close(self) -> None:
        self.engine.dispose()


def get_platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


def current_tenant(request: Request, platform: Platform = Depends(get_platform)) -> Tenant:
    """The gateway: authenticate the request and resolve its (org, sandbox)."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    with platform.engine.begin() as conn:
        return resolve_tenant(
            conn, headers, key=platform.signing_key, permissive=platform.settings.auth == AuthMode.permissive
        )
